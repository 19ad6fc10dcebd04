"""Sources of x₀ and the pairs data set: the Gaussian default draws exactly what training always drew, a toy source
is refused where it cannot be a path's start, and a pairs file is read and never overwritten."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import couplings, sources
from flowgen.data.pairs import load_pairs, pairs_element_shape, write_pairs


def test_gaussian_source_is_jax_random_normal_bit_for_bit():
    key = jax.random.key(5)
    got = sources.GAUSSIAN.sample(key, (7, 3), jnp.float32)
    np.testing.assert_array_equal(got, jax.random.normal(key, (7, 3), jnp.float32))
    x = jnp.ones((7, 3))
    _, noise = couplings.get_coupling("independent")(key, x, {})
    np.testing.assert_array_equal(noise, got)


def test_toy_source_samples_its_data_set_and_is_checked():
    moons = sources.get_source("moons")
    x = moons.sample(jax.random.key(0), (512, 2), jnp.float32)
    assert x.shape == (512, 2) and float(jnp.std(x)) > 0.5
    moons.check(fg.paths.get("linear"), "velocity")
    moons.check(fg.paths.get("trig"), "data")
    with pytest.raises(ValueError, match="α\\(0\\) = 0"):
        moons.check(fg.paths.get("vp_linear"), "velocity")
    with pytest.raises(ValueError, match="Gaussian source"):
        moons.check(fg.paths.get("linear"), "score")
    with pytest.raises(ValueError, match="2-D points"):
        moons.check_shape((8, 8, 1))
    with pytest.raises(ValueError, match="unknown source 'gauss'"):
        sources.get_source("gauss")


def test_ot_coupling_pairs_a_toy_source_with_the_data():
    moons = sources.get_source("moons")
    x = jax.random.normal(jax.random.key(1), (64, 2)) + 5.0
    key = jax.random.key(2)
    _, paired = couplings.get_coupling("ot")(key, x, {}, moons)
    drawn = moons.sample(key, x.shape, x.dtype)
    assert sorted(map(tuple, np.asarray(paired))) == sorted(map(tuple, np.asarray(drawn)))   # a permutation


def test_pairs_files_are_checked_and_never_overwritten(tmp_path):
    file = str(tmp_path / "p.npz")
    x, z = np.ones((10, 2), np.float32), np.zeros((10, 2), np.float32)
    write_pairs(file, x, z, label=np.arange(10) % 3, teacher="test")
    with pytest.raises(FileExistsError):
        write_pairs(file, x, z)
    arrays = load_pairs(file)
    assert arrays["x_data"].shape == (10, 2) and str(arrays["meta_teacher"]) == "test"
    assert pairs_element_shape(file) == (2,)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_data=x, noise=z[:5])
    with pytest.raises(ValueError, match="must have one shape"):
        load_pairs(bad)
    with pytest.raises(ValueError, match="no such file"):
        load_pairs(str(tmp_path / "missing.npz"))


def test_pairs_input_batches_are_a_pure_function_of_the_step(tmp_path):
    from flowgen.train.input import PairsInput

    file = str(tmp_path / "p.npz")
    write_pairs(file, np.arange(40, dtype=np.float32).reshape(20, 2), -np.arange(40, dtype=np.float32).reshape(20, 2))
    data = PairsInput(file, seed=3, batch_size=8)
    a, b = data.device_batch(jnp.int32(4)), data.device_batch(jnp.int32(4))
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["noise"], -a["x"])                       # pairs stay paired
    assert not np.array_equal(a["x"], data.device_batch(jnp.int32(5))["x"])


def test_a_pairs_file_is_published_once_and_its_finish_can_be_redone(tmp_path):
    """Rows land wherever they are written; a file that appears under the name meanwhile is not replaced (the new
    one stays in its temporary file); finishing again after that (a killed finish) gives a valid file whose arrays
    map, and bad rows are refused by name."""
    from flowgen.data.pairs import PairsWriter, open_pairs

    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    file, tmp = str(tmp_path / "p.npz"), str(tmp_path / "p.tmp")
    writer = PairsWriter(tmp, 12, (2,))
    writer.write(8, x[8:], -x[8:])                                             # any order
    writer.write(0, x[:8], -x[:8])
    with pytest.raises(ValueError, match=r"rows \[10, 14\) are outside \[0, 12\)"):
        writer.write(10, x[:4], x[:4])
    with pytest.raises(ValueError, match="label given: this file has no labels"):
        writer.write(0, x[:1], x[:1], label=[0])
    with open(file, "w") as f:
        f.write("a user's file")
    with pytest.raises(FileExistsError, match="never replaced"):
        writer.finish(file, teacher="t")
    assert open(file).read() == "a user's file" and os.path.exists(tmp)
    os.remove(file)
    again = PairsWriter(tmp, 12, (2,), resume=True)                            # the rows are kept
    again.finish(file, teacher="t")
    assert not os.path.exists(tmp)
    np.testing.assert_array_equal(open_pairs(file)["noise"], -x)
    assert str(load_pairs(file)["meta_teacher"]) == "t"
    with pytest.raises(FileExistsError, match="another layout"):
        open(tmp, "wb").close()
        PairsWriter(tmp, 13, (2,), resume=True)
