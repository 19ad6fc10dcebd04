"""Workdirs given as URIs (``gs://bucket/run``) stay URIs end to end: training, sampling and loading reach every file
through ``etils.epath`` and hand orbax the URI unchanged (before the fix a gs:// workdir became the local folder
``./gs:/bucket/run``); sweeps refuse them.

No bucket is needed: orbax's ``CheckpointManager`` or ``epath.Path.read_text`` is replaced by a function that records
its argument and stops the run, and a "gs://" stand-in (an fsspec filesystem that keeps gs://bucket/... in a local
folder, plugged into epath's gs backend) lets a whole toy training run, sample and load through epath. Checkpoints are
the one thing the stand-in cannot carry (TensorStore writes them itself), so there the checkpointer is checked to be
given the gs:// path and then pointed at the stand-in's folder.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from etils import epath

import flowgen as fg
from flowgen.io import is_remote, workdir_path, write_bytes_once
from flowgen.train.config import load_config_module

# ml_collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
URI = "gs://bucket/run"


class Stop(Exception):
    """Raised by a stand-in to stop a run at the first I/O, carrying what it was given."""


def _small_config(sample_every=0):
    c = load_config_module(str(REPO / "configs" / "toy2d_rf.py"), "toy2d_rf").get_config("small")
    c.model.kwargs = {"hidden": 16, "depth": 1}
    c.data.batch_size = 32
    c.sample.num_samples = 64
    c.train.num_steps, c.train.checkpoint_every, c.train.sample_every, c.train.log_every = 6, 3, sample_every, 3
    return c


# ------------------------------------------------------------------------------------------------------- (a) paths


def test_workdir_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in (URI, "s3://bucket/run", "az://container/run"):
        p = workdir_path(uri)
        assert isinstance(p, epath.Path) and str(p) == uri and os.fspath(p) == uri and is_remote(p)
    assert str(workdir_path(URI) / "checkpoints") == "gs://bucket/run/checkpoints"
    assert workdir_path(epath.Path(URI)) == epath.Path(URI)
    cwd = os.getcwd()
    assert str(workdir_path("runs/toy")) == os.path.join(cwd, "runs", "toy")
    assert str(workdir_path(Path("runs"))) == os.path.join(cwd, "runs")
    assert str(workdir_path("/abs/run")) == "/abs/run"
    assert not any(is_remote(p) for p in ("runs/gs://x", "/gs:/bucket", "C:/run", "gs:/bucket"))


def test_write_bytes_once_refuses_an_existing_file(tmp_path):
    path = epath.Path(tmp_path / "a.npz")
    write_bytes_once(path, b"one")
    with pytest.raises(FileExistsError):
        write_bytes_once(path, b"two")
    assert path.read_bytes() == b"one"


# -------------------------------------------------------------- (b, c) the gs:// string reaches orbax and epath as is


def test_a_gs_workdir_reaches_orbax_unchanged(tmp_path, monkeypatch):
    """Training and --mode=sample hand orbax epath.Path("gs://bucket/run/checkpoints") and make no local folder."""
    from flowgen.train import checkpoint
    from flowgen.train.loop import train_and_evaluate
    from flowgen.train.sample_mode import sample_from_checkpoint

    def manager(directory, *args, **kwargs):
        raise Stop(directory)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", manager)
    monkeypatch.chdir(tmp_path)
    config = _small_config()
    for entry in (train_and_evaluate, sample_from_checkpoint):
        with pytest.raises(Stop) as stopped:
            entry(config, URI)
        directory = stopped.value.args[0]
        assert isinstance(directory, epath.Path) and directory == epath.Path(URI) / "checkpoints"
        assert os.fspath(directory) == "gs://bucket/run/checkpoints"
    assert list(tmp_path.iterdir()) == []          # no ./gs:/bucket/run


def test_load_model_and_run_from_workdir_read_the_config_at_the_uri(tmp_path, monkeypatch):
    from flowgen.train.run import Run

    def read_text(self, *args, **kwargs):
        raise Stop(os.fspath(self))

    monkeypatch.setattr(epath.Path, "read_text", read_text)
    monkeypatch.chdir(tmp_path)
    for load in (fg.load_model, Run.from_workdir, lambda w: fg.load_model(epath.Path(w))):
        with pytest.raises(Stop) as stopped:
            load(URI)
        assert stopped.value.args[0] == "gs://bucket/run/config.json"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ a whole run on a local "gs://" stand-in


@pytest.fixture
def gs_standin(tmp_path, monkeypatch):
    """epath's gs:// backend redirected to an fsspec filesystem that keeps ``gs://B/P`` at ``<root>/B/P``;
    tensorboardX's writer replaced by one that records its logdir (it would need google-cloud-storage); the working
    directory an empty folder (where the old bug made ./gs:/...). Returns (root, cwd, tensorboard logdirs)."""
    from etils.epath import backend as epath_backend
    from etils.epath import gpath
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    class GsStandIn(DirFileSystem):
        def _join(self, path):
            if isinstance(path, str) and path.startswith("gs://"):
                path = path[len("gs://"):]
            return super()._join(path)

    root, cwd = tmp_path / "store", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    fs = GsStandIn(path=str(root), fs=LocalFileSystem(auto_mkdir=True))
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)      # always epath's fsspec backend for gs://
    monkeypatch.setattr(epath_backend.fsspec_backend, "fs", lambda path: fs)
    logdirs = []

    class SummaryWriter:
        def __init__(self, logdir, *args, **kwargs):
            logdirs.append(logdir)

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    monkeypatch.setattr("tensorboardX.SummaryWriter", SummaryWriter)
    monkeypatch.chdir(cwd)
    return root, cwd, logdirs


def test_train_sample_and_load_a_gs_workdir_through_epath(gs_standin, monkeypatch):
    import flowgen.train.checkpoint as checkpoint
    import flowgen.train.loop as loop
    import flowgen.train.sample_mode as sample_mode
    from flowgen.train.metrics import read_metrics

    root, cwd, logdirs = gs_standin
    local = root / "bucket" / "run"
    real, given = checkpoint.Checkpointer, []

    def checkpointer(directory, **kwargs):        # TensorStore writes the arrays itself: the stand-in's folder
        given.append(directory)
        return real(local / "checkpoints", **kwargs)

    for module in (checkpoint, loop, sample_mode):
        monkeypatch.setattr(module, "Checkpointer", checkpointer)

    config = _small_config(sample_every=3)
    last = loop.train_and_evaluate(config, URI)
    assert {p.name for p in local.iterdir()} >= {"config.json", "metrics.jsonl", "samples", "checkpoints"}
    assert {p.name for p in (local / "samples").iterdir()} == {"step_0000003.png", "step_0000006.png"}
    assert (local / "samples" / "step_0000006.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_metrics(URI)
    assert [r["step"] for r in rows] == [3, 6] and all("loss" in r and "sample/sliced_w2" in r for r in rows)
    assert logdirs == ["gs://bucket/run/tensorboard"]
    assert loop.train_and_evaluate(config, URI)["loss"] == last["loss"]     # already done: read back through epath

    result = sample_mode.sample_from_checkpoint(config, URI)
    assert result["npz"].startswith("gs://bucket/run/samples/sample_step0000006_") and result["png"].startswith(
        "gs://bucket/run/samples/")
    with np.load(local / "samples" / result["npz"].rsplit("/", 1)[1]) as f:
        assert f["samples"].shape == (64, 2) and int(f["step"]) == 6
    with pytest.raises(sample_mode.SamplesExistError, match="exist already"):
        sample_mode.sample_from_checkpoint(config, URI)

    model = fg.load_model(URI)
    assert model.step == 6 and model.workdir == URI
    assert all(os.fspath(d) == "gs://bucket/run/checkpoints" for d in given) and len(given) == 5
    assert list(cwd.iterdir()) == []               # nothing went to the local ./gs:/bucket/run


# ---------------------------------------------------------------------------------------- (d) sweeps stay local


def test_a_sweep_refuses_a_gs_workdir_before_anything_runs(tmp_path, monkeypatch, capsys):
    from flowgen import main as cli_main
    from flowgen.sweep import runner

    monkeypatch.chdir(tmp_path)
    config = {"models": {"lin": {"analytic": "circle", "path": "linear", "target": "velocity"}},
              "solvers": ("euler",), "nfe": (2,), "seeds": (0,), "metrics": ("sliced_w2",), "num_samples": 64}
    message = (r"sweep workdirs must be local \(the lock and the write-once cells need a POSIX filesystem\); "
               r"got gs://bucket/sweep")
    for entry in (runner.run, runner.evaluate):
        with pytest.raises(ValueError, match=message):
            entry(config, "gs://bucket/sweep")
    code = cli_main.cli(["flowgen", "--mode=sweep", f"--config={REPO / 'experiments' / 'analytic_sweep.py'}",
                         "--workdir=gs://bucket/sweep"])
    assert code == 2
    assert "error: sweep workdirs must be local" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
