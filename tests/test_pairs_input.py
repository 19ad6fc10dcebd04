"""The two pairs inputs (``flowgen.train.input``): held on the devices (small sets) or memory-mapped and fed from the
host (large ones, e.g. Liu et al.'s 4M CIFAR-10 pairs). Both draw the rows ``pair_indices(seed, step)``, so a run
trains identically on either; the host-fed one resumes exactly and splits each global batch over processes."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgen.data.pairs import write_pairs
from flowgen.train import config as config_lib
from flowgen.train import input as input_lib
from flowgen.train import loop
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.run import Run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((300, 2)).astype(np.float32)
    x_data = (2.0 * noise + rng.standard_normal((300, 2)) * 0.1).astype(np.float32)
    file = str(tmp_path_factory.mktemp("pairs") / "pairs.npz")
    write_pairs(file, x_data, noise, label=np.arange(300) % 4, teacher="test")
    return file


def test_host_fed_batches_resume_exactly(pairs_file):
    """The state after k batches (JSON, as checkpointed) makes a fresh input continue with batch k."""
    data = input_lib.HostPairsInput(pairs_file, seed=7, batch_size=16)
    batches, states = [], []
    for _ in range(6):
        batches.append(data.next())
        states.append(json.loads(json.dumps(data.get_state())))
    resumed = input_lib.HostPairsInput(pairs_file, seed=7, batch_size=16)
    resumed.set_state(states[2])
    for expected in batches[3:]:
        got = resumed.next()
        assert got.keys() == expected.keys() == {"x", "noise", "label"}
        for k in got:
            np.testing.assert_array_equal(got[k], expected[k])
    assert not np.array_equal(batches[3]["x"], batches[4]["x"])


def test_two_processes_read_halves_of_the_global_batch_which_is_the_device_inputs(pairs_file):
    """Shards 0 and 1 of 2 are disjoint halves that together are the global batch, row for row the batch the
    device-resident input draws inside the training program for the same seed and step."""
    whole = input_lib.HostPairsInput(pairs_file, seed=3, batch_size=8, shard_index=0, shard_count=1)
    halves = [input_lib.HostPairsInput(pairs_file, seed=3, batch_size=8, shard_index=i, shard_count=2)
              for i in range(2)]
    device = input_lib.PairsInput(pairs_file, seed=3, batch_size=8)
    batch = jax.jit(device.device_batch)
    for step in range(4):
        parts = [h.next() for h in halves]
        full = whole.next()
        on_device = jax.device_get(batch(jnp.int32(step)))
        for k in ("x", "noise", "label"):
            assert [len(p[k]) for p in parts] == [4, 4]
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
            np.testing.assert_array_equal(full[k], on_device[k])
        assert np.abs(full["x"] - 2.0 * full["noise"]).max() < 0.6                # pairs stay paired
    assert whole.reference(50).shape == (50, 2)
    np.testing.assert_array_equal(whole.reference(50), device.reference(50))
    with pytest.raises(ValueError, match="batch_size=8 must split evenly over 3"):
        input_lib.HostPairsInput(pairs_file, seed=3, batch_size=8, shard_index=0, shard_count=3)


def test_the_size_rule_puts_small_sets_on_the_devices_and_large_ones_on_the_host(pairs_file):
    nbytes = 300 * 2 * 4 * 2 + 300 * 4                                 # x_data, noise, labels
    assert isinstance(input_lib.pairs_input(pairs_file, 0, 8), input_lib.PairsInput)   # default 64 MiB
    assert isinstance(input_lib.pairs_input(pairs_file, 0, 8, nbytes / 2**20), input_lib.PairsInput)
    assert isinstance(input_lib.pairs_input(pairs_file, 0, 8, (nbytes - 1) / 2**20), input_lib.HostPairsInput)
    assert isinstance(input_lib.pairs_input(pairs_file, 0, 8, 0), input_lib.HostPairsInput)
    config = pairs_config(pairs_file, 0)
    assert not input_lib.make_input(config.data, 0).on_device
    for kwargs, match in (({"device_max_mb": -1}, "device_max_mb=-1: must be a number >= 0"),
                          ({"device_max_mb": "big"}, "device_max_mb='big'"),
                          ({"max_mb": 1}, "data.kwargs.max_mb: not an option.*valid: file, device_max_mb")):
        bad = pairs_config(pairs_file, 0)
        bad.data.kwargs = {**bad.data.kwargs.to_dict(), **kwargs}
        with pytest.raises(ValueError, match=match):
            config_lib.validate(bad)


def pairs_config(file, device_max_mb, num_steps=8):
    spec = importlib.util.spec_from_file_location("toy2d_rf", REPO / "configs" / "toy2d_rf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = config_lib.on_pairs(module.get_config("small"), file)
    c.data.kwargs = {"file": file, "device_max_mb": device_max_mb}
    c.model.kwargs = {"hidden": 32, "depth": 2}
    c.model.num_classes = 0
    c.data.batch_size = 32
    c.train.update(num_steps=num_steps, sample_every=0, log_every=4, checkpoint_every=0)
    return c


def final_params(workdir, config):
    with Checkpointer(Path(workdir) / "checkpoints") as ck:
        step, state, _ = Run.from_config(config).restore(ck)
    return step, jax.device_get((state.params, state.ema, state.opt_state))


@pytest.fixture(scope="module")
def device_run(pairs_file, tmp_path_factory):
    """8 steps on the device-resident input: (workdir, config)."""
    config = pairs_config(pairs_file, 64)
    workdir = tmp_path_factory.mktemp("device")
    loop.train_and_evaluate(config, str(workdir))
    return workdir, config


def test_training_on_host_fed_pairs_stopped_and_resumed_equals_training_on_device_pairs(pairs_file, device_run,
                                                                                         tmp_path):
    """Same pairs, seed and steps: the device-resident input (several steps per compiled call) uninterrupted, and the
    host-fed one (one step per call, batches through the prefetcher) stopped at step 4 and resumed to 8, end with
    bit-identical parameters, EMA and optimiser state."""
    loop.train_and_evaluate(pairs_config(pairs_file, 0, num_steps=4), str(tmp_path / "host"))
    host = pairs_config(pairs_file, 0)
    loop.train_and_evaluate(host, str(tmp_path / "host"))
    (step_a, a), (step_b, b) = final_params(device_run[0], device_run[1]), final_params(tmp_path / "host", host)
    assert step_a == step_b == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    fresh = Run.from_config(host).init_state()
    assert not np.array_equal(jax.tree.leaves(fresh.params)[0], jax.tree.leaves(b[0])[0])


def test_a_fresh_run_starts_from_another_runs_parameters(pairs_file, device_run, tmp_path):
    """``train.init_from`` (Liu et al. fine-tune each k-RF from its teacher): step 0 starts from the other run's raw
    parameters, and every EMA from them. The learning rate of step 0 is 0 (warm-up), so after one step the parameters
    are still the teacher's, bit for bit. A missing workdir, an unknown parameter set or another network is refused
    by name before anything compiles."""
    teacher_dir, teacher_config = device_run
    config = pairs_config(pairs_file, 64, num_steps=1)
    config.train.init_from = str(teacher_dir)
    loop.train_and_evaluate(config, str(tmp_path / "student"))
    _, (params, ema, _) = final_params(tmp_path / "student", config)
    _, (teacher, _, _) = final_params(teacher_dir, teacher_config)
    for x, y in zip(jax.tree.leaves(teacher), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)
    for copy in ema.values():
        for x, y in zip(jax.tree.leaves(teacher), jax.tree.leaves(copy), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    for key, value, match in (("init_from", str(tmp_path / "nowhere"), "not a flowgen training workdir"),
                              ("init_params", "ema_0.5", "train.init_params='ema_0.5' is not one of: params, ema")):
        bad = pairs_config(pairs_file, 64, num_steps=1)
        bad.train.init_from = str(teacher_dir)
        bad.train[key] = value
        with pytest.raises(ValueError, match=match):
            loop.train_and_evaluate(bad, str(tmp_path / "refused"))
    other = pairs_config(pairs_file, 64, num_steps=1)
    other.model.kwargs = {"hidden": 16, "depth": 2}
    other.train.init_from = str(teacher_dir)
    with pytest.raises(ValueError, match="does not match this run's"):
        loop.train_and_evaluate(other, str(tmp_path / "other"))
    assert not (tmp_path / "other" / "metrics.jsonl").exists()
