"""Several training steps per compiled call change nothing but speed: the same losses at the logged steps and
bit-identical parameters as one step per call; the first non-finite step inside a call is named and nothing is saved
from it. Also the pieces around it: call lengths, the device prefetcher, the smoothed rate, console lines, grids."""

import importlib.util
import json
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowgen.train import input as input_lib
from flowgen.train import loop, visualize
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.metrics import Throughput
from flowgen.train.run import Run
from flowgen.train.step import chunk_sizes, init_state, make_train_chunk, make_train_step

REPO = Path(__file__).resolve().parents[1]


def toy_config(workdir_steps=30, **train):
    spec = importlib.util.spec_from_file_location("toy2d_rf", REPO / "configs" / "toy2d_rf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("small")
    c.model.kwargs = {"hidden": 32, "depth": 2}
    c.data.batch_size = 64
    c.train.num_steps = workdir_steps
    c.train.sample_every = 0
    c.train.log_every = 5
    c.train.checkpoint_every = 7
    c.train.update(train)
    return c


def logged(workdir):
    lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: {k: x[k] for k in ("loss", "grad_norm", "lr", "mse")} for x in lines if "loss" in x}


def final_params(workdir, config):
    run = Run.from_config(config)
    with Checkpointer(Path(workdir) / "checkpoints") as ck:
        step, state, _ = run.restore(ck)
        steps = ck.all_steps()
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get((state.params, state.ema, state.opt_state)))
    return step, steps, {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


# ---------------------------------------------------------------------------------------------------- call lengths

def test_chunk_sizes_end_on_every_boundary_and_start_with_one_step():
    sizes = list(chunk_sizes(0, 23, (10,), 4))
    assert sizes == [1, 4, 4, 1, 4, 4, 2, 3]
    ends = np.cumsum(sizes)
    assert 10 in ends and 20 in ends and ends[-1] == 23
    sizes = list(chunk_sizes(5, 40, (5, 7, 0), 100))     # resumed at 5; periods 5 and 7; 0 = disabled
    ends = set(np.cumsum(sizes) + 5)
    assert {7, 10, 14, 15, 20, 21, 25, 28, 30, 35, 40} <= ends and sizes[0] == 1 and max(sizes) <= 5
    assert list(chunk_sizes(0, 3, (1,), 8)) == [1, 1, 1]
    with pytest.raises(ValueError, match="steps_per_call"):
        list(chunk_sizes(0, 3, (), 0))


# ------------------------------------------------------------------------------------- the fused program, in isolation

def scalar_problem(poison_index):
    """Fit w to data 1.0; the batch of (0-based) step ``poison_index`` is NaN."""
    def loss_fn(params, state, batch, key):
        loss = jnp.mean((params["w"] - batch["x"]) ** 2)
        return loss, {"loss": loss}

    opt = optax.sgd(0.1)
    step_fn = make_train_step(loss_fn, opt, optax.constant_schedule(0.1), decays=())

    def device_batch(step):
        return {"x": jnp.where(step == poison_index, jnp.nan, 1.0) * jnp.ones((4,))}

    return init_state({"w": jnp.zeros(())}, opt, ()), jax.jit(make_train_chunk(step_fn, device_batch))


def test_a_call_stops_at_its_first_non_finite_step_and_names_it():
    state, chunk = scalar_problem(poison_index=5)        # the 6th step (1-based) sees NaN data
    state, report = chunk(state, {}, jax.random.key(0), 4)
    assert int(report["steps"]) == 4 and int(report["bad_step"]) == -1 and int(state.step) == 4
    loss_4 = float(report["metrics"]["loss"])
    assert loss_4 == pytest.approx((0.8**3) ** 2, rel=1e-5)       # SGD 0.1 on (w − 1)²: the error shrinks by 0.8
    state, report = chunk(state, {}, jax.random.key(0), 8)
    assert int(report["bad_step"]) == 6 and int(report["steps"]) == 2    # stopped right there, not at step 12
    assert np.isnan(float(report["metrics"]["loss"]))


def test_one_call_of_k_steps_equals_k_calls_of_one():
    state_a, chunk = scalar_problem(poison_index=-1)
    state_b, _ = scalar_problem(poison_index=-1)
    state_a, rep_a = chunk(state_a, {}, jax.random.key(0), 7)
    for _ in range(7):
        state_b, rep_b = chunk(state_b, {}, jax.random.key(0), 1)
    assert np.asarray(state_a.params["w"]).tobytes() == np.asarray(state_b.params["w"]).tobytes()
    assert float(rep_a["metrics"]["loss"]) == float(rep_b["metrics"]["loss"])


def test_host_batches_are_read_by_step_index():
    def loss_fn(params, state, batch, key):
        loss = jnp.mean((params["w"] - batch["x"]) ** 2)
        return loss, {"loss": loss, "x0": batch["x"][0]}

    opt = optax.sgd(0.0)
    chunk = jax.jit(make_train_chunk(make_train_step(loss_fn, opt, optax.constant_schedule(0.0), ()), None))
    batches = {"x": jnp.arange(12.0).reshape(4, 3)}             # 4 stacked steps of batch 3
    state, report = chunk(init_state({"w": jnp.zeros(())}, opt, ()), batches, jax.random.key(0), 3)
    assert float(report["metrics"]["x0"]) == 6.0 and int(report["steps"]) == 3   # the third batch; the fourth unused


# ------------------------------------------------------------------------------------------- the real loop, fused

@pytest.mark.slow
def test_fused_and_unfused_runs_log_the_same_losses_and_end_bit_identical(tmp_path):
    runs = {}
    for k in (1, 8):
        config = toy_config(steps_per_call=k)
        loop.train_and_evaluate(config, str(tmp_path / f"k{k}"))
        runs[k] = logged(tmp_path / f"k{k}"), final_params(tmp_path / f"k{k}", config)
    (log_1, (step_1, ckpts_1, p_1)), (log_8, (step_8, ckpts_8, p_8)) = runs[1], runs[8]
    assert sorted(log_1) == sorted(log_8) == [5, 10, 15, 20, 25, 30]
    assert log_1 == log_8                              # the logged step's own values, exactly
    assert step_1 == step_8 == 30 and ckpts_1 == ckpts_8 == [21, 28, 30]
    for name in p_1:
        assert p_1[name].tobytes() == p_8[name].tobytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("bad_step", [13, 14])
def test_a_non_finite_step_inside_a_fused_call_is_named_and_never_saved(tmp_path, monkeypatch, bad_step):
    """Steps 11..14 run in one call (K = 8, checkpoints every 7); step ``bad_step`` sees NaN data. 14 is also a
    checkpoint step: its state must not be saved."""
    clean = input_lib.ToyInput.device_batch

    def poisoned(self, step):
        batch = clean(self, step)
        return {**batch, "x": jnp.where(step == bad_step - 1, jnp.nan, batch["x"])}

    monkeypatch.setattr(input_lib.ToyInput, "device_batch", poisoned)
    config = toy_config(steps_per_call=8, log_every=10)
    with pytest.raises(loop.NonFiniteLossError, match=rf"non-finite loss or gradient at step {bad_step} \(loss nan"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    with Checkpointer(tmp_path / "w" / "checkpoints") as ck:
        assert ck.all_steps() == [7]
    assert sorted(logged(tmp_path / "w")) == [10]


@pytest.mark.slow
def test_console_names_what_is_written_where(tmp_path, caplog):
    config = toy_config(num_steps=20, checkpoint_every=10, sample_every=20, log_every=20)
    config.sample.num_samples = 64
    config.sample.num_steps = 2
    with caplog.at_level(logging.INFO, logger="flowgen"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    text = caplog.text
    w = str(tmp_path / "w")
    assert re.search(r"step 1/20  loss [\d.]+", text)                     # right after the first call
    assert f"checkpoint step 10: saving to {w}/checkpoints/10" in text
    assert re.search(rf"samples step 20: sliced_w2 [\d.]+ \(NFE 4\) -> {w}/samples/step_0000020.png", text)
    assert re.search(r"finished at step 20/20: 20 steps in .*steps/s", text)
    assert re.search(r"checkpoints/  steps 10, 20", text) and "step_0000020.png" in text


# ---------------------------------------------------------------------------------------------- pieces around it

class CountingData:
    def __init__(self):
        self.i = 0

    def next(self):
        self.i += 1
        return {"x": np.full((4, 2), self.i, np.float32)}

    def get_state(self):
        return {"next": self.i}


def test_prefetcher_stacks_pads_and_records_the_state_after_each_call():
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    sharding = input_lib.stacked_sharding(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    data = CountingData()
    with input_lib.DevicePrefetcher(data, iter([1, 3, 2]), 3, sharding) as feed:
        got = [(n, np.asarray(b["x"])[:, 0, 0].tolist(), s) for n, b, s in feed]
    assert got == [(1, [1, 1, 1], {"next": 1}), (3, [2, 3, 4], {"next": 4}), (2, [5, 6, 6], {"next": 6})]


def test_prefetcher_reraises_reader_errors():
    class Broken(CountingData):
        def next(self):
            raise OSError("disk gone")

    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    sharding = input_lib.stacked_sharding(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    with pytest.raises(OSError, match="disk gone"), input_lib.DevicePrefetcher(Broken(), iter([1]), 1, sharding) as f:
        list(f)


def test_throughput_excludes_pauses_and_smooths():
    now = [0.0]
    tp = Throughput(half_life=1e9, clock=lambda: now[0])
    assert tp.rate is None and tp.eta(100) is None
    now[0] = 30.0                  # compilation: not timed (no mark before it)
    tp.update(1)
    assert tp.rate is None
    tp.mark()
    now[0] += 2.0
    tp.update(200)                 # 100 steps/s
    now[0] += 50.0                 # a sampling pause ...
    tp.mark()                      # ... excluded
    now[0] += 2.0
    tp.update(200)
    assert tp.rate == pytest.approx(100.0) and tp.eta(500) == pytest.approx(5.0)
    fast = Throughput(half_life=1.0, clock=lambda: now[0])
    fast.mark()
    now[0] += 10.0
    fast.update(100)               # 10 steps/s long ago
    now[0] += 10.0
    fast.update(1000)              # 100 steps/s now: the smoothed rate follows within a few half-lives
    assert 99.0 < fast.rate < 100.0


def test_image_grid_is_large_with_one_class_per_row():
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, (100, 8, 8, 1)).astype(np.float32)
    grid, labels = visualize.image_grid(samples, num_classes=10, gap=2)
    assert labels == [str(c) for c in range(10)]
    scale, cell = 8, 8 * 8 + 2                     # 8x8 digits shown at 64x64 pixels each
    assert grid.shape == (10 * cell - 2, 10 * cell - 2, 1)
    for row, col in [(0, 0), (3, 7), (9, 9)]:      # row = class: sample i has label i % 10
        image = grid[row * cell:row * cell + 64, col * cell:col * cell + 64]
        expected = np.kron((samples[row + 10 * col] + 1) / 2, np.ones((scale, scale, 1)))
        np.testing.assert_allclose(image, expected, rtol=1e-6)
    grid, labels = visualize.image_grid(rng.uniform(-1, 1, (20, 32, 32, 3)).astype(np.float32))
    assert labels is None and grid.shape == (4 * 66 - 2, 5 * 66 - 2, 3)     # 32 px shown at 64 px, 5 per row
