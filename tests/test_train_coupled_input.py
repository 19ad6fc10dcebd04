"""Minibatch OT paired on the host ahead of the step (flowgen.train.coupled_input, ``coupling_options.host_threads``):
every batch's pairing is the exact optimum, the batches do not depend on the thread count or timing, a resumed input
continues exactly, and training through the real loop resumes bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.optimize

from flowgen import couplings, sources
from flowgen.train import config as config_lib
from flowgen.train.coupled_input import HostCoupledInput
from flowgen.train.input import ToyInput

B = 64


def _input(threads: int, seed: int = 3):
    coupling = couplings.get_coupling("ot", solver="emd", host_threads=threads)
    return HostCoupledInput(ToyInput("8gaussians", seed, B, {}), coupling, sources.get_source("gaussian"), seed, B)


def _batches(data, n):
    out = [data.next() for _ in range(n)]
    data.close()
    return out


def test_each_batch_is_paired_optimally():
    for batch in _batches(_input(2), 4):
        x, noise = batch["x"].astype(np.float64), batch["noise"].astype(np.float64)
        cost = ((x[:, None] - noise[None]) ** 2).sum(-1)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        assert np.trace(cost) == pytest.approx(cost[rows, cols].sum(), rel=1e-12, abs=1e-9)
        assert not np.allclose(cost.diagonal(), np.sort(cost, axis=1)[:, 0])     # not a nearest-neighbour pairing


def test_data_are_those_of_the_device_input_and_noise_is_fresh_per_step():
    batches = _batches(_input(1), 3)
    device = ToyInput("8gaussians", 3, B, {})
    for step, batch in enumerate(batches):
        np.testing.assert_array_equal(batch["x"], np.asarray(jax.jit(device.device_batch)(step)["x"]))
    assert not np.allclose(np.sort(batches[0]["noise"], 0), np.sort(batches[1]["noise"], 0))


def test_batches_do_not_depend_on_the_thread_count():
    one, three = _batches(_input(1), 6), _batches(_input(3), 6)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a["noise"], b["noise"])
        np.testing.assert_array_equal(a["x"], b["x"])


def test_resumed_input_continues_exactly():
    straight = _batches(_input(2), 6)
    first = _input(2)
    for _ in range(3):
        first.next()
    state = first.get_state()
    first.close()
    assert state["step"] == 3
    resumed = _input(2)
    resumed.set_state(state)
    for a, b in zip(straight[3:], _batches(resumed, 3), strict=True):
        np.testing.assert_array_equal(a["noise"], b["noise"])


def test_each_process_pairs_its_own_share_optimally():
    """Two processes (simulated): complementary halves of the same global data and noise, each paired optimally
    within its half (per-process minibatch OT, as the docstring says)."""
    coupling = couplings.get_coupling("ot", solver="emd", host_threads=1)
    whole = _batches(_input(1), 2)
    halves = []
    for index in range(2):
        data = HostCoupledInput(ToyInput("8gaussians", 3, B, {}), coupling, sources.get_source("gaussian"), 3, B,
                                shard_index=index, shard_count=2)
        halves.append(_batches(data, 2))
    for step in range(2):
        np.testing.assert_array_equal(np.concatenate([h[step]["x"] for h in halves]), whole[step]["x"])
        all_noise = np.sort(np.concatenate([h[step]["noise"] for h in halves]), axis=0)
        np.testing.assert_array_equal(all_noise, np.sort(whole[step]["noise"], axis=0))     # the same draws
        for h in halves:
            x, noise = h[step]["x"].astype(np.float64), h[step]["noise"].astype(np.float64)
            cost = ((x[:, None] - noise[None]) ** 2).sum(-1)
            rows, cols = scipy.optimize.linear_sum_assignment(cost)
            assert np.trace(cost) == pytest.approx(cost[rows, cols].sum(), rel=1e-12, abs=1e-9)


def test_options_are_checked():
    with pytest.raises(ValueError, match="host_threads=2 needs a host solver"):
        couplings.get_coupling("ot", solver="auction", host_threads=2)
    with pytest.raises(ValueError, match="host_threads=-1"):
        couplings.get_coupling("ot", host_threads=-1)
    coupling = couplings.get_coupling("ot", host_threads=1)
    with pytest.raises(ValueError, match="reads batch\\['noise'\\]"):
        coupling(jax.random.key(0), np.zeros((4, 2), np.float32), {"x": np.zeros((4, 2), np.float32)})


def _config(steps: int):
    c = config_lib.base_config()
    c.data.name = "8gaussians"
    c.data.batch_size = B
    c.model.kwargs = {"hidden": 32, "depth": 2}
    c.loss.coupling = "ot"
    c.loss.coupling_options = {"solver": "emd", "host_threads": 2}
    c.train.num_steps = steps
    c.train.log_every = c.train.checkpoint_every = 3
    c.train.sample_every = 0
    return c


def test_training_resumes_bit_for_bit(tmp_path):
    """6 steps in one go, and the same run resumed from its step-3 checkpoint, give the same parameters: the input's
    state is checkpointed with the batches actually used, not with those solved ahead."""
    import shutil

    import flowgen as fg
    from flowgen.train.loop import train_and_evaluate

    train_and_evaluate(_config(6), str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
    train_and_evaluate(_config(6), str(tmp_path / "b"))
    a, b = (fg.load_model(str(tmp_path / w), params="params") for w in ("a", "b"))
    assert a.step == b.step == 6
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
