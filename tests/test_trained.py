"""``fg.load_model``: the newest good checkpoint and the saved config as a model value; loading writes nothing."""

import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.train.config import load_config_module
from flowgen.train.loop import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def _train(workdir, num_classes=0, steps=6):
    c = load_config_module(str(REPO / "configs" / "toy2d_rf.py"), "toy2d_rf").get_config("small")
    c.model.kwargs = {"hidden": 16, "depth": 1}
    c.model.num_classes = num_classes
    c.data.batch_size = 32
    c.ema.decays = (0.9, 0.99)
    c.train.num_steps, c.train.checkpoint_every, c.train.sample_every, c.train.log_every = steps, 3, 0, 3
    train_and_evaluate(c, str(workdir))
    return c


def _snapshot(root):
    """Every file and directory under root with its size, mtime and content hash."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    _train(wd)
    return wd


def _restore_state(workdir):
    from flowgen.train.checkpoint import Checkpointer
    from flowgen.train.run import Run

    run = Run.from_workdir(workdir)
    with Checkpointer(Path(workdir) / "checkpoints") as ck:
        return run.restore(ck)


def test_load_model_gives_the_newest_checkpoint_and_writes_nothing(workdir):
    before = _snapshot(workdir)
    model = fg.load_model(workdir)
    assert _snapshot(workdir) == before
    step, state, _ = _restore_state(workdir)
    assert model.step == step == 6 and model.params_name == "ema_0.99"
    assert (model.target, model.num_classes, model.null_label, model.element_shape) == ("velocity", None, None, (2,))
    assert model.path == fg.paths.get("linear")
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(state.ema["ema_0.99"]), strict=True):
        np.testing.assert_array_equal(a, b)
    x, t = jnp.ones((5, 2)), jnp.full((5,), 0.3)
    np.testing.assert_array_equal(model.fn(x, t), model.apply(state.ema["ema_0.99"], x, t))
    raw = fg.load_model(workdir, params="params")
    for a, b in zip(jax.tree.leaves(raw.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    samples, info = fg.sample(model.fn, model.path, target=model.target, solver="heun", num_steps=4,
                              key=jax.random.key(0), shape=(8, *model.element_shape))
    assert samples.shape == (8, 2) and int(info["nfe"]) > 0


def test_bad_params_name_is_refused_with_the_choices(workdir):
    with pytest.raises(ValueError, match=r"params='ema_0\.5' is not one of: params, ema, ema_0\.9, ema_0\.99"):
        fg.load_model(workdir, params="ema_0.5")


def test_not_a_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a flowgen training workdir"):
        fg.load_model(tmp_path)


@pytest.mark.slow
def test_corrupt_newest_step_is_skipped_not_moved(tmp_path):
    wd = tmp_path / "w"
    _train(wd)
    newest = wd / "checkpoints" / "6"
    target = max((f for f in newest.rglob("*") if f.is_file() and "state" in str(f)), key=lambda f: f.stat().st_size)
    data = bytearray(target.read_bytes())
    target.write_bytes(bytes(data[: len(data) // 2]))
    before = _snapshot(wd)
    model = fg.load_model(wd)
    assert model.step == 3
    assert _snapshot(wd) == before and not (wd / "checkpoints" / "corrupt").exists()


@pytest.mark.slow
def test_conditional_model_has_its_null_label(tmp_path):
    _train(tmp_path / "c", num_classes=8, steps=3)
    model = fg.load_model(tmp_path / "c")
    assert (model.num_classes, model.null_label) == (8, 8)
    out = model.fn(jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.array([0, 1, 8, 3]))
    assert out.shape == (4, 2) and bool(jnp.all(jnp.isfinite(out)))
    assert os.path.exists(tmp_path / "c" / "config.json")
