"""Where a run starts, in-process (``train_and_evaluate`` / ``sample_from_checkpoint`` on the toy config): a
quarantined-only workdir is refused rather than retrained from step 0, a changed cosine length is refused, a finished
run says so at once, and ``--mode=sample`` draws once into new files and never overwrites anything."""

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from flowgen.train import loop, resume, sample_mode, visualize
from flowgen.train.checkpoint import CORRUPT_DIR, STATE

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def toy_config(**overrides):
    spec = importlib.util.spec_from_file_location("toy2d_rf", REPO / "configs" / "toy2d_rf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("small")
    c.model.kwargs.hidden, c.model.kwargs.depth = 32, 2
    c.data.batch_size = 64
    c.train.num_steps, c.train.checkpoint_every, c.train.log_every, c.train.sample_every = 10, 5, 5, 10
    c.sample.num_samples, c.sample.num_steps = 64, 4
    for name, value in overrides.items():  # e.g. num_steps=20, schedule="cosine"
        section = next(s for s in ("train", "optim") if name in c[s])
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 10-step run (checkpoints at 5 and 10, a sample grid at 10), copied for each test."""
    workdir = tmp_path_factory.mktemp("trained") / "w"
    loop.train_and_evaluate(toy_config(), str(workdir))
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    dest = tmp_path / "w"
    shutil.copytree(trained, dest)
    return dest


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def truncate_state(step_dir: Path) -> None:
    files = [f for f in (step_dir / STATE).rglob("*") if f.is_file()]
    target = max(files, key=lambda f: f.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])


def no_build(config):
    raise AssertionError("built the run (data, network, compilation) although it had to stop before")


def test_quarantined_only_workdir_is_refused_not_restarted(workdir, monkeypatch):
    for step in (5, 10):
        truncate_state(workdir / "checkpoints" / str(step))
    metrics = (workdir / "metrics.jsonl").read_bytes()
    png = (workdir / "samples" / "step_0000010.png").read_bytes()
    with pytest.raises(resume.RunRefusedError) as info:  # 20 steps: not finished, so it restores (and verifies)
        loop.train_and_evaluate(toy_config(num_steps=20), str(workdir))
    message = str(info.value)
    assert "steps 5, 10" in message and "quarantined" in message and "--restart" in message, message
    assert "Refusing to train again from step 0" in message and "move it back" in message
    moved = sorted(p.name.split("-")[0] for p in (workdir / "checkpoints" / CORRUPT_DIR).iterdir())
    assert moved == ["10", "5"]  # moved for the evidence (a truncated file), not deleted
    assert (workdir / "metrics.jsonl").read_bytes() == metrics  # nothing trained, appended or overwritten
    assert (workdir / "samples" / "step_0000010.png").read_bytes() == png
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]

    # Asked explicitly: starts over, with the earlier outputs moved aside (not appended to, not overwritten).
    loop.train_and_evaluate(toy_config(num_steps=20), str(workdir), restart=True)
    (previous,) = workdir.glob("previous-*")
    assert (previous / "metrics.jsonl").read_bytes() == metrics
    assert (previous / "samples" / "step_0000010.png").read_bytes() == png
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[0] == 5, steps  # one run's metrics, no duplicated steps
    assert len(list((workdir / "checkpoints" / CORRUPT_DIR).iterdir())) == 2  # the quarantined steps stay


def test_restart_over_a_good_checkpoint_is_refused(workdir):
    before = snapshot(workdir / "checkpoints")
    with pytest.raises(resume.RunRefusedError, match="holds a good checkpoint"):
        loop.train_and_evaluate(toy_config(num_steps=20), str(workdir), restart=True)
    assert snapshot(workdir / "checkpoints") == before


def test_finished_run_says_done_at_once(workdir, monkeypatch, caplog):
    before = snapshot(workdir)
    monkeypatch.setattr(loop.Run, "from_config", no_build)
    with caplog.at_level(logging.INFO, logger="flowgen"):
        last = loop.train_and_evaluate(toy_config(), str(workdir))
    assert any("already done" in r.getMessage() and "step 10" in r.getMessage() for r in caplog.records)
    assert last["step"] == 10 and "loss" in last
    assert snapshot(workdir) == before


def test_changing_num_steps_under_a_cosine_schedule_is_refused(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    loop.train_and_evaluate(toy_config(schedule="cosine", num_steps=5, sample_every=0), str(workdir))
    before = snapshot(workdir)
    monkeypatch.setattr(loop.Run, "from_config", no_build)
    with pytest.raises(resume.RunRefusedError) as info:
        loop.train_and_evaluate(toy_config(schedule="cosine", num_steps=10, sample_every=0), str(workdir))
    message = str(info.value)
    assert "train.num_steps changed from 5" in message and "to 10" in message and "cosine" in message, message
    assert "--config.train.num_steps=5" in message
    assert snapshot(workdir) == before


def test_changing_num_steps_under_a_constant_schedule_resumes(workdir, caplog):
    with caplog.at_level(logging.INFO, logger="flowgen"):
        loop.train_and_evaluate(toy_config(num_steps=15, sample_every=0), str(workdir))
    assert any("resumed from step 10" in r.getMessage() for r in caplog.records)
    assert any("train.num_steps" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_sample_mode_draws_once_and_never_overwrites(workdir, monkeypatch):
    training_png = (workdir / "samples" / "step_0000010.png").read_bytes()
    calls = []
    from flowgen.train.run import Run

    draw = Run.draw_samples
    monkeypatch.setattr(Run, "draw_samples", lambda *a, **k: calls.append(1) or draw(*a, **k))
    out = sample_mode.sample_from_checkpoint(toy_config(), str(workdir))
    assert len(calls) == 1  # drawn once: the PNG and the .npz show the same samples
    with np.load(out["npz"]) as z:
        assert z["samples"].shape == (64, 2) and int(z["step"]) == 10 and str(z["solver"]) == "heun"
        nfe = int(z["nfe"])
    assert nfe == out["sample/nfe"] and 4 <= nfe <= 8  # measured: Heun makes 1 or 2 calls per step
    stem = f"sample_step0000010_ema_heun_4steps_uniform_nfe{nfe}_gnone"  # no guidance (unconditional model)
    assert out["png"] == str(workdir / "samples" / f"{stem}.png")
    assert out["npz"] == str(workdir / "samples" / f"{stem}.npz")
    assert (workdir / "samples" / "step_0000010.png").read_bytes() == training_png  # training's grid untouched

    # Again with the same settings: refused before any work, nothing rewritten.
    before = snapshot(workdir / "samples")
    monkeypatch.setattr(loop.Run, "from_config", no_build)
    with pytest.raises(sample_mode.SamplesExistError, match=stem):
        sample_mode.sample_from_checkpoint(toy_config(), str(workdir))
    assert snapshot(workdir / "samples") == before and len(calls) == 1

    # Another grid or other parameters are other samples: new files, the first ones untouched (issue: the name
    # used to omit both, so these were refused as "exist already").
    monkeypatch.undo()
    for key, value in (("grid", "logsnr"), ("ema", "params")):
        config = toy_config()
        config.sample[key] = value
        other = sample_mode.sample_from_checkpoint(config, str(workdir))
        assert f"_{value}_" in other["npz"] and other["npz"] != out["npz"]
    assert {p: q for p, q in snapshot(workdir / "samples").items() if p in before} == before


def test_a_failure_while_sampling_keeps_that_steps_checkpoint(tmp_path, monkeypatch):
    """The loop saves before it samples, so a crash in sampling (a metric, a full disk for the PNG) loses no training:
    the step is on disk and the same command resumes from it."""

    def broken(*args, **kwargs):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(visualize, "sample_and_report", broken)
    workdir = tmp_path / "w"
    with pytest.raises(RuntimeError, match="sampling failed"):
        loop.train_and_evaluate(toy_config(checkpoint_every=10), str(workdir))
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [10]
