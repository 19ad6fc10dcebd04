"""The command line refuses every bad flag or config value with one ``error: ...`` message (the flag, the value, the
choices or a suggestion) and exit status 2, before anything is compiled or written; no traceback.

Most cases run the real entry point in-process (``flowgen.main.cli``: fresh absl flags per call); a few run it as a
subprocess, exactly as a user would (slow: each pays JAX's import).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowgen import main as cli_main

# ml_collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
TOY = "--config=configs/toy2d_rf.py:small"

# (arguments, what the message must contain). Each is a mistake a user made or could make.
BAD = [
    ([TOY, "--config.data.batch_size=-8"], ["data.batch_size=-8", "integer in [1"]),
    ([TOY, "--config.sample.solver=eulr"], ["sample.solver='eulr' is not one of", "euler", "heun"]),
    ([TOY, "--config.mesh.fsdp=3"], ["mesh.fsdp=3", "divide the number of devices"]),
    ([TOY, "--config.loss.label_dropout=1.5"], ["loss.label_dropout=1.5", "[0, 1)"]),
    ([TOY, "--config.optim.lrr=1"], ["--config.optim.lrr=1", "unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    ([TOY, "--config.model.kwargs.hiden=64"], ["did you mean 'model.kwargs.hidden'"]),
    ([TOY, "--config.train.num_steps=abc"], ["--config.train.num_steps=abc", "takes int"]),
    (["--config=configs/nope.py"], ["no config file 'configs/nope.py'", "configs/toy2d_rf.py", "configs/digits_rf.py"]),
    (["--config=configs/toy2d_rf.py:bogus"], ["unknown variant 'bogus'"]),
    ([TOY, "--config.data.name=cifar"], ["data.name='cifar'", "did you mean 'cifar10'", "circle", "8gaussians",
                                         "flowgen_digits"]),
    ([TOY, "--config.optim.grad_clip=-1"], ["optim.grad_clip=-1", "[0, inf)"]),
    ([TOY, "--config.model.sigma_data=-0.5"], ["model.sigma_data=-0.5", "(0, inf)"]),
    ([TOY, "--config.optim.lr=nan"], ["optim.lr=nan", "finite"]),
    ([TOY, "--config.optim.lr=inf"], ["optim.lr=inf", "finite"]),
    ([TOY, "--config.loss.target=eps"], ["'eps'"]),
    ([TOY, "--config.sample.grid=log"], ["sample.grid='log' is not one of", "logsnr"]),
    ([TOY, "--config.optim.schedule=linear"], ["optim.schedule='linear' is not one of", "cosine"]),
    ([TOY, "--config.ema.decays=(1.5,)"], ["1.5"]),
    ([TOY, "--config.sample.ema=ema_0.5"], ["sample.ema='ema_0.5' is not one of"]),
    ([TOY, "--config.model.num_classes=5"], ["model.num_classes=5 but dataset 'circle' has 8"]),
    ([TOY, "--mode=bogus"], ["--mode=bogus", "train", "sample", "prepare"]),
    ([TOY, "--restart", "--mode=sample"], ["--restart only applies to --mode=train"]),
    ([TOY, "positional"], ["unexpected arguments ['positional']"]),
    ([TOY, "--config.sample.guidance=2.0"], ["sample.guidance=2.0", "class-conditional"]),
    ([TOY, "--distributed", "--coordinator=127.0.0.1:1"], ["--distributed", "--coordinator", "not both"]),
    ([TOY, "--config.method.name=meanflw"], ["method.name='meanflw' is not one of", "flow_matching"]),
    ([TOY, "--config.source.name=moon"], ["unknown source 'moon'", "gaussian", "moons"]),
    ([TOY, "--config.source.name=moons", "--config.path.name=vp_linear"], ["source.name='moons'", "α(0) = 0"]),
    ([TOY, "--config.source.name=moons", "--config.loss.target=score"], ["score", "Gaussian source"]),
    ([TOY, "--config.loss.coupling=given"], ["loss.coupling='given'", "data.name='pairs'"]),
    ([TOY, "--config.data.name=pairs"], ["data.name='pairs' needs data.kwargs.file"]),
    ([TOY, "--config.method.name=pseudo_huber", "--config.loss.weighting=snr"], ["pseudo_huber", "uniform"]),
    ([TOY, "--config.model.kwargs.hidden=0"], ["model.kwargs", "hidden must be an integer >= 2; got 0"]),
    ([TOY, "--config.model.kwargs.depth=-1"], ["model.kwargs", "depth must be an integer >= 1; got -1"]),
    ([TOY, "--mode=sweep"], ["--mode=sweep takes a sweep config", "experiments/digits_nfe.py"]),
    (["--mode=sweep"], ["--mode=sweep takes a sweep config"]),
    ([TOY, "--config.optim.zzzzz=1"], ["unknown key 'optim.zzzzz'. Keys of optim: b1"]),
]


def run_cli(args, workdir, capsys, with_workdir=True):
    argv = ["flowgen", *args] + ([f"--workdir={workdir}"] if with_workdir else [])
    start = time.time()
    code = cli_main.cli(argv)
    out, err = capsys.readouterr()
    return code, out, err, time.time() - start


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a[1:] or a) for a, _ in BAD])
def test_bad_value_is_one_clean_message(args, expected, tmp_path, capsys):
    code, out, err, seconds = run_cli(args, tmp_path / "w", capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in out + err, err
    for text in expected:
        assert text in err, (text, err)
    assert len(err.splitlines()) <= 3, err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.json*")), "something was written"
    assert seconds < 20, f"refused after {seconds:.1f}s"


def test_missing_workdir_is_one_clean_message(tmp_path, capsys):
    code, _, err, _ = run_cli([TOY], None, capsys, with_workdir=False)
    assert code == 2 and err.startswith("error: --workdir is required") and "Traceback" not in err


def test_good_overrides_still_reach_the_config(tmp_path, capsys, monkeypatch):
    """The clean-error path does not get in the way of a good command (nothing to train: the run is stubbed)."""
    seen = {}

    def fake_train(config, workdir, restart=False):
        seen.update(lr=config.optim.lr, hidden=config.model.kwargs.hidden, workdir=workdir, restart=restart)

    import flowgen.train.loop as loop

    monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
    code, _, err, _ = run_cli([TOY, "--config.optim.lr=3e-4", "--config.model.kwargs.hidden=64"], tmp_path / "w",
                              capsys)
    assert code == 0, err
    assert seen == {"lr": 3e-4, "hidden": 64, "workdir": str(tmp_path / "w"), "restart": False}


def test_missing_image_dataset_fails_fast_with_the_prepare_command(tmp_path, capsys):
    """A real (not mocked) dataset that is not prepared: one message with the command that prepares it, within
    seconds (nothing compiled)."""
    args = ["--config=configs/cifar10_edm.py:small", "--config.data.mock=False",
            f"--config.data.data_dir={tmp_path / 'empty'}"]
    code, _, err, seconds = run_cli(args, tmp_path / "w", capsys)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert "'cifar10' is not prepared" in err
    assert "python -m flowgen.main --mode=prepare --config.data.name=cifar10" in err
    assert seconds < 20


def test_an_error_while_training_keeps_its_traceback(tmp_path, monkeypatch):
    """Only refusals are turned into messages: a genuine runtime error (here a ValueError from inside the run)
    propagates."""
    import flowgen.train.loop as loop

    def broken(config, workdir, restart=False):
        raise ValueError("a bug inside training")

    monkeypatch.setattr(loop, "train_and_evaluate", broken)
    with pytest.raises(ValueError, match="a bug inside training"):
        cli_main.cli(["flowgen", TOY, f"--workdir={tmp_path / 'w'}"])


def test_building_the_digits_says_what_it_writes_where(tmp_path, capfd, caplog):
    """Offline, TFDS's "Downloading and preparing dataset ..." was misleading, and the default folder was not named."""
    import logging

    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.INFO):
        code = cli_main.cli(["flowgen", "--mode=prepare", "--config.data.name=flowgen_digits",
                             f"--config.data.data_dir={data_dir}"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "Downloading" not in out + err and "downloaded" not in out + err, out + err
    building = [r.getMessage() for r in caplog.records if "building flowgen_digits" in r.getMessage()]
    assert len(building) == 1 and str(data_dir) in building[0] and "offline" in building[0], building
    assert (data_dir / "flowgen_digits").is_dir()


SUBPROCESS_BAD = [
    (["--config.optim.lrr=1"], "did you mean 'optim.lr'"),   # was 57 lines of traceback
    (["--config.optim.lr=nan"], "optim.lr=nan"),              # trained until a non-finite loss at step 2
    (["--config.optim.grad_clip=-1"], "optim.grad_clip=-1"),  # trained silently
]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", SUBPROCESS_BAD, ids=[a[0] for a, _ in SUBPROCESS_BAD])
def test_real_command_line_refuses_cleanly(args, message, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "flowgen.main", TOY, f"--workdir={tmp_path / 'w'}", *args], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and message in res.stderr and "Traceback" not in res.stdout + res.stderr
    assert len(res.stderr.splitlines()) <= 3, res.stderr
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_an_override_may_add_an_option_to_an_open_section(tmp_path, capsys):
    """``--config.model.kwargs.time_scale=10`` and ``--config.data.kwargs.file=F`` add keys the config file does not
    list (a network's, a data set's options); a typo of a listed key still gets "did you mean"."""
    import numpy as np

    from flowgen.data.pairs import write_pairs

    file = str(tmp_path / "pairs.npz")
    write_pairs(file, np.ones((16, 2), np.float32), np.zeros((16, 2), np.float32))
    code, out, err, _ = run_cli(["--mode=describe", TOY, "--config.model.kwargs.time_scale=10.0",
                                 "--config.data.name=pairs", f"--config.data.kwargs.file={file}",
                                 "--config.loss.coupling=given"], tmp_path, capsys, with_workdir=False)
    assert code == 0, err
    assert "'time_scale': 10.0" in out and out.strip().splitlines()[-1] == "parameters: 264450"
    code, _, err, _ = run_cli(["--mode=describe", TOY, "--config.model.kwargs.time_scal=10.0"], tmp_path, capsys,
                              with_workdir=False)
    assert code == 2 and "unexpected keyword argument 'time_scal'" in err


def test_describe_builds_without_data_or_training_and_ends_with_the_parameter_count(tmp_path, capsys):
    """--mode=describe: no workdir, no data read (CIFAR-10 is not prepared here), nothing compiled or written."""
    code, out, err, _ = run_cli(["--mode=describe", "--config=configs/cifar10_edm.py"], tmp_path, capsys,
                                with_workdir=False)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == "parameters: 55732739"
    flops = [x for x in lines if x.startswith("training step:")]
    assert flops and "FLOPs" in flops[0] and "batch 512" in flops[0]
    assert not any(tmp_path.iterdir())
