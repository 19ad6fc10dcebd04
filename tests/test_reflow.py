"""Reflow pairs (``flowgen.reflow``) and one-step distillation (``flowgen.methods.distill``): the pairs are the
teacher's flow map, written once with their provenance and resumable; the distillation loss vanishes at the exact
one-step map and its sampler reproduces the exact flow in one call."""

import dataclasses
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import reflow
from flowgen.data import toy
from flowgen.data.pairs import load_pairs, open_pairs
from flowgen.methods import build
from flowgen.train.state import TrainState

LINEAR = fg.paths.get("linear")


def exact_teacher():
    return reflow.analytic_teacher("8gaussians", "linear", "velocity")


def test_pairs_are_the_teachers_flow_map_with_their_provenance(tmp_path):
    file = str(tmp_path / "pairs.npz")
    info = reflow.generate_pairs(exact_teacher(), file, num_pairs=300, solver="rk4", num_steps=32, seed=3, chunk=128)
    pairs = load_pairs(file)
    assert pairs["x_data"].shape == pairs["noise"].shape == (300, 2)
    mixture = toy.toy_mixture("8gaussians")
    with jax.enable_x64(True):
        exact = mixture.flow_map(LINEAR, jnp.asarray(pairs["noise"], jnp.float64), 0.0, 1.0, num_steps=512)
    assert np.max(np.abs(pairs["x_data"] - np.asarray(exact))) < 2e-3        # RK4 at 32 steps, float32
    assert info["teacher"] == "analytic:8gaussians" and info["solver"] == "rk4" and info["num_steps"] == "32"
    assert info["nfe"] == "128" and info["num_pairs"] == "300" and info["seed"] == "3"
    assert not os.path.exists(file + ".parts")                                 # the chunks are removed once written


def test_pairs_resume_after_a_kill_and_match_an_uninterrupted_run(tmp_path):
    teacher = exact_teacher()
    whole = str(tmp_path / "whole.npz")
    reflow.generate_pairs(teacher, whole, num_pairs=250, num_steps=8, chunk=100)
    calls = []

    def dies_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return teacher.sample(*args)

    file = str(tmp_path / "resumed.npz")
    with pytest.raises(KeyboardInterrupt):
        reflow.generate_pairs(dataclasses.replace(teacher, sample=dies_on_the_second_chunk), file, num_pairs=250,
                              num_steps=8, chunk=100)
    assert not os.path.exists(file)
    assert sorted(os.listdir(file + ".parts")) == ["chunk-00000.json", "pairs.tmp", "provenance.json"]
    counted = []

    def counting(*args):
        counted.append(1)
        return teacher.sample(*args)

    reflow.generate_pairs(dataclasses.replace(teacher, sample=counting), file, num_pairs=250, num_steps=8, chunk=100)
    assert len(counted) == 2                                                     # chunks 1 and 2 only
    assert not os.path.exists(file + ".parts")
    with zipfile.ZipFile(whole) as a, zipfile.ZipFile(file) as b:               # the same bytes, member by member
        assert a.testzip() is None and b.testzip() is None                      # (CRCs checked)
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "meta_created.npy":
                assert a.read(name) == b.read(name), name
    mapped = open_pairs(file)
    assert isinstance(mapped["x_data"], np.memmap) and mapped["x_data"].offset % 64 == 0
    np.testing.assert_array_equal(mapped["x_data"], load_pairs(whole)["x_data"])


def test_pairs_are_streamed_to_their_file_not_gathered_in_memory(tmp_path, monkeypatch):
    """Chunk by chunk into the file's layout: the host never holds more than a few chunks (numpy allocations traced
    by tracemalloc), far below the set's size; the memory-mapped file holds every chunk's rows."""
    import tracemalloc

    from flowgen import sources
    from flowgen.data import pairs as pairs_lib

    monkeypatch.setattr(pairs_lib, "_BLOCK", 1 << 18)                             # CRCs read 256 KiB at a time
    teacher = reflow.Teacher(lambda x0, cond, key, *a: (2.0 * x0, {"nfe": jnp.int32(1)}), sources.GAUSSIAN, (512,),
                             None, {"teacher": "doubling"})
    file = str(tmp_path / "big.npz")
    reflow.generate_pairs(teacher, file, num_pairs=64, chunk=64, num_steps=1)     # compiles outside the trace
    tracemalloc.start()
    reflow.generate_pairs(teacher, str(tmp_path / "big2.npz"), num_pairs=4096, chunk=128, num_steps=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = 2 * 4096 * 512 * 4                                                   # 16 MiB of pairs
    print(f"peak {peak / 2**20:.2f} MiB of numpy/Python allocations for {total / 2**20:.0f} MiB of pairs")
    assert peak < total / 8, (peak, total)
    mapped = open_pairs(str(tmp_path / "big2.npz"))
    np.testing.assert_array_equal(mapped["x_data"], 2.0 * mapped["noise"])
    assert np.all(np.any(mapped["noise"] != 0, axis=1))                          # every row written (space is 0s)


def test_a_pairs_file_is_never_replaced_and_is_reused_when_it_matches(tmp_path):
    teacher = exact_teacher()
    file = str(tmp_path / "pairs.npz")
    reflow.generate_pairs(teacher, file, num_pairs=64, num_steps=4)
    before = os.path.getmtime(file), load_pairs(file)["x_data"]

    def never(*args):
        raise AssertionError("a matching pairs file is reused, not recomputed")

    reflow.generate_pairs(dataclasses.replace(teacher, sample=never), file, num_pairs=64, num_steps=4)
    with pytest.raises(FileExistsError, match="num_steps differ"):
        reflow.generate_pairs(teacher, file, num_pairs=64, num_steps=8)
    assert os.path.getmtime(file) == before[0]
    np.testing.assert_array_equal(load_pairs(file)["x_data"], before[1])
    os.makedirs(str(tmp_path / "other.npz.parts"))
    with open(str(tmp_path / "other.npz.parts" / "provenance.json"), "w") as f:
        f.write("{}")
    with pytest.raises(FileExistsError, match="other pairs"):
        reflow.generate_pairs(teacher, str(tmp_path / "other.npz"), num_pairs=64, num_steps=4)


@pytest.mark.parametrize("kwargs, match", [({"num_pairs": 0}, "num_pairs=0"), ({"solver": "eular"}, "eular"),
                                           ({"chunk": 1.5}, "chunk=1.5")])
def test_bad_pair_settings_are_refused_by_name(tmp_path, kwargs, match):
    settings = {"num_pairs": 8, "num_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        reflow.generate_pairs(exact_teacher(), str(tmp_path / "p.npz"), **settings)


# ------------------------------------------------------------------------------------------------ distillation
def distill(path=LINEAR):
    return build("distill", path=path, coupling="given")


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("path_name", ["linear", "vp_cosine"])
def test_the_exact_one_step_map_makes_the_distillation_loss_vanish(path_name):
    """Pairs (x₀, Φ(σ(t_min)·x₀)) of the exact flow and the exact average velocity over the whole interval as the
    network at t_min: the loss is 0 (and > 0 for the instantaneous velocity, which is not a one-step map)."""
    path = fg.paths.get(path_name)
    mixture = toy.toy_mixture("8gaussians")
    noise = jax.random.normal(jax.random.key(0), (256, 2), jnp.float64)
    x_start = path.sigma(path.t_min) * noise
    x_end = mixture.flow_map(path, x_start, path.t_min, path.t_max, num_steps=512)
    batch = {"x": x_end, "noise": noise}
    exact_jump = mixture.average_velocity(path, x_start, path.t_min, path.t_max, num_steps=512)
    loss = distill(path).make_loss(lambda params, x, t, cond, rng: exact_jump * params)
    value, _ = loss(jnp.asarray(1.0), None, batch, jax.random.key(1))
    assert float(value) < 1e-12
    velocity = mixture.model(path, "velocity")
    wrong, _ = distill(path).make_loss(lambda params, x, t, cond, rng: velocity(x, t))(None, None, batch,
                                                                                       jax.random.key(1))
    assert float(wrong) > 1e-2


@pytest.mark.usefixtures("x64")
def test_the_one_step_sampler_with_the_exact_map_lands_on_the_exact_flow_in_one_call():
    mixture = toy.toy_mixture("8gaussians")
    noise = jax.random.normal(jax.random.key(2), (128, 2), jnp.float64)
    exact = mixture.flow_map(LINEAR, noise, 0.0, 1.0, num_steps=512)

    def net(params, x, t):
        return mixture.average_velocity(LINEAR, x, t, jnp.ones_like(t), num_steps=512)

    x, info = distill().sample(net, jnp.zeros(()), noise, key=jax.random.key(0), solver="one_step", num_steps=1)
    assert int(info["nfe"]) == 1
    np.testing.assert_allclose(np.asarray(x), np.asarray(exact), atol=1e-8)


def test_distillation_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="loss.coupling='independent'.*pairs"):
        build("distill", path=LINEAR)
    with pytest.raises(ValueError, match="loss.target='noise'"):
        build("distill", path=LINEAR, coupling="given", target="noise")
    with pytest.raises(ValueError, match="sample.num_steps=2"):
        distill().check_sampler("one_step", 2, "uniform")
    assert distill().sampler_steps("one_step", 8) == 1


def test_the_distillation_loss_ignores_the_train_state():
    """Its teacher is in the pairs: the loss is the same for any state (e.g. a fresh one)."""
    loss = distill().make_loss(lambda params, x, t, cond, rng: x * params)
    batch = {"x": jnp.ones((4, 2)), "noise": jnp.zeros((4, 2))}
    a, _ = loss(jnp.asarray(0.5), None, batch, jax.random.key(0))
    b, _ = loss(jnp.asarray(0.5), TrainState(step=jnp.asarray(3), params={}, opt_state=(), ema={}), batch,
                jax.random.key(0))
    assert float(a) == float(b)


def test_an_adaptive_solvers_nfe_is_the_mean_over_its_chunks(tmp_path):
    """An adaptive solve's NFE differs by chunk: the provenance records the mean per pair (measured, not declared)."""
    from flowgen import sources

    counts = iter([62, 68, 70])
    teacher = reflow.Teacher(lambda x0, *a: (x0, {"nfe": jnp.int32(next(counts))}), sources.GAUSSIAN, (2,), None,
                             {"teacher": "counting"})
    info = reflow.generate_pairs(teacher, str(tmp_path / "p.npz"), num_pairs=40, chunk=16, solver="dopri5")
    assert info["nfe"] == "66.67"
    info = reflow.generate_pairs(dataclasses.replace(teacher, sample=lambda x0, *a: (x0, {"nfe": jnp.int32(3)})),
                                 str(tmp_path / "q.npz"), num_pairs=20, chunk=16, solver="dopri5", seed=1)
    assert info["nfe"] == "3"
