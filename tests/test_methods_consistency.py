"""Continuous-time consistency models (sCT / sCD, Lu & Song 2024) against the exact mixture.

The exact consistency function of the mixture on the trig path is the flow map to the data end,
f*(x_t, t) = Φ_{t→1}(x_t) (``GaussianMixture.flow_map``), i.e. F*(x_t, t) = (α(t)·x_t − Φ_{t→1}(x_t))/σ(t). Along the
probability flow f* does not move, so the sCM tangent g = cos(s)·df/ds is zero there with the exact marginal velocity
(sCD with an exact teacher: the loss and its gradient vanish), and zero in conditional expectation with sCT's
conditional velocity (the gradient in an output perturbation vanishes up to Monte-Carlo error). The diffusion model's
own v-prediction (the posterior mean, not the flow map) is no consistency function: its tangent is O(1). The
consistency sampler driven by F* reproduces the flow map at 1 and 2 steps with measured NFE; the warm-up factor and
the tangent normalisation are checked against an independent computation of g (a jvp of f itself, in TrigFlow time).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import methods
from flowgen.couplings import get_coupling
from flowgen.methods.consistency import consistency_tangent
from flowgen.networks.mlp import MLP
from flowgen.paths.targets import target_from_pair
from flowgen.paths.time_samplers import get_time_sampler
from flowgen.train.config import base_config
from flowgen.train.state import TrainState

CIRCLE = fg.analytic.GaussianMixture.circle(8, radius=2.0, std=0.5)
TRIG = fg.paths.get("trig")
RK4_STEPS = 48
HALF_PI = np.pi / 2


def build(path=TRIG, **options):
    base = dict(target="v", weighting="uniform", time_sampler="uniform", time_sampler_options={},
                coupling="independent", label_dropout=0.0)
    return methods.build("consistency", path=path, **{**base, **options})


def exact_f(x, t):
    """F*(x_t, t) = (α·x_t − Φ_{t→1}(x_t))/σ: the exact consistency function as the network's output (t < 1)."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    end = CIRCLE.flow_map(TRIG, x, t, 1.0, RK4_STEPS)
    return (TRIG.alpha(t)[:, None] * x - end) / TRIG.sigma(t)[:, None]


def diffusion_v(x, t):
    """The posterior-mean v-prediction (what flow matching with target "v" learns): not a consistency function."""
    return CIRCLE.model(TRIG, "v")(x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]))


def perturbed(model):
    """A training-mode 'network': ``model`` plus a learnable additive perturbation a + x·B (zero at ZERO)."""

    def apply(params, x, t, cond, rng):
        return model(x, t) + params["a"] + x @ params["B"]

    return apply


ZERO = {"a": jnp.zeros((2,)), "B": jnp.zeros((2, 2))}


def state_of(params, step=0):
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=(), ema={})


def data_batch(n, seed=0):
    return {"x": CIRCLE.sample(jax.random.key(seed), n, jnp.float64)}


def perturbation_gradient(loss, n=8192, seed=0, step=0):
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, state_of(p, step), data_batch(n, seed),
                                                             jax.random.key(seed + 1))[0]))(ZERO)
    return float(np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))), float(value)


def teacher_workdir(tmp_path, **overrides):
    """A workdir with only a config.json (enough for the method's checks; the teacher is loaded lazily)."""
    c = base_config()
    c.path.name, c.loss.target = "trig", "v"
    c.update_from_flattened_dict(overrides)
    (tmp_path / "config.json").write_text(json.dumps(json.loads(c.to_json())))
    return str(tmp_path)


def with_exact_teacher(method):
    """The sCD method with the exact marginal velocity as its (already loaded) teacher."""
    velocity = CIRCLE.model(TRIG, "velocity")
    method.__dict__["_teacher"] = [(lambda x, t, cond: velocity(x, t), (2,))]
    return method


# ------------------------------------------------------------------------------------------------ exact fixed point
@pytest.mark.usefixtures("x64")
def test_the_tangent_of_the_exact_consistency_function_is_zero():
    """No Monte-Carlo error: with the exact marginal velocity, g = cos(s)·df*/ds = 0 (the formula as implemented: its
    signs, its tangents (−(2/π)·u, −2/π) on (x, t)); the diffusion model's v-prediction has an O(1) tangent."""
    z = jax.random.normal(jax.random.key(6), (64, 2), jnp.float64) * 1.5
    t = jnp.linspace(0.0, 0.95, 64)
    u = CIRCLE.model(TRIG, "velocity")(z, t)
    f, g = consistency_tangent(exact_f, z, t, u, 1.0, TRIG)
    assert float(jnp.abs(g).max()) < 1e-5 * float(jnp.abs(f).max())
    _, g_half = consistency_tangent(exact_f, z, t, u, 1.0, TRIG, sigma_d=0.5)
    assert float(jnp.abs(g_half).max()) < 1e-5 * float(jnp.abs(f).max())
    _, g_wrong = consistency_tangent(diffusion_v, z, t, u, 1.0, TRIG)
    print(f"max |g|: exact {float(jnp.abs(g).max()):.2e}, diffusion v {float(jnp.abs(g_wrong).max()):.2e}")
    assert float(jnp.abs(g_wrong).max()) > 0.3


@pytest.mark.usefixtures("x64")
def test_the_exact_consistency_function_is_the_fixed_point_of_the_sct_loss():
    """sCT (conditional velocity, r = 1, no normalisation: the tangent is then linear in the velocity, so E[g | x_t] =
    0): ∇ of the loss in an output perturbation is ~0 at F*, and ≥ 3× larger at the diffusion model's v."""
    method = build(warmup_steps=0, tangent_norm=None, time_sampler_options={"t_max": 0.95})
    exact, _ = perturbation_gradient(method.make_loss(perturbed(exact_f)))
    wrong, _ = perturbation_gradient(method.make_loss(perturbed(diffusion_v)))
    print(f"|grad| at F* {exact:.4f}, at the diffusion v {wrong:.4f}")
    assert exact < 0.3 * wrong


@pytest.mark.usefixtures("x64")
def test_the_scd_loss_of_the_exact_consistency_function_and_an_exact_teacher_vanishes(tmp_path):
    """sCD with the exact velocity as the teacher, the paper's stabilisers on (normalisation, r = 1 after warm-up, the
    proposal times): the tangent is deterministic, so the loss (= E‖g‖²/D) and its gradient are ~0 at F*."""
    method = with_exact_teacher(build(mode="scd", teacher=teacher_workdir(tmp_path), warmup_steps=10,
                                      time_sampler="edm", time_sampler_options={"p_mean": -1.0, "p_std": 1.4}))
    exact_grad, exact_value = perturbation_gradient(method.make_loss(perturbed(exact_f)), n=2048, step=10)
    wrong_grad, wrong_value = perturbation_gradient(method.make_loss(perturbed(diffusion_v)), n=2048, step=10)
    print(f"sCD loss {exact_value:.2e} / {wrong_value:.2e}, |grad| {exact_grad:.2e} / {wrong_grad:.2e}")
    assert exact_value < 1e-6 and exact_grad < 1e-3
    assert wrong_value > 0.01 and wrong_grad > 0.05


# ----------------------------------------------------------------------------------------- warm-up, normalisation
def mlp_apply():
    module = MLP(hidden=32, depth=2, time_scale=10.0)
    params = module.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    return (lambda p, x, t, cond, rng: module.apply(p, x, t)), params


def reference_loss(apply, params, batch, key, step, warmup, c):
    """The loss value and its gradient in an output offset a, from an independent computation of the tangent: a jvp
    of f(x, s) = cos(s)·x − sin(s)·F(x, 1 − 2s/π) itself in TrigFlow time, split into the warm-up's two terms."""
    k_couple, k_time, _, _ = jax.random.split(key, 4)
    x_data, noise = get_coupling("independent")(k_couple, batch["x"], batch, fg.sources.GAUSSIAN)
    t = get_time_sampler("uniform", TRIG).sample(k_time, (x_data.shape[0],), x_data.dtype)
    x_t = TRIG.sample(x_data, noise, t)
    s = HALF_PI * (1 - t)
    dx_ds = -target_from_pair("velocity", TRIG, x_data, noise, t) / HALF_PI
    net = lambda x, s: apply(params, x, 1 - s / HALF_PI, None, None)  # noqa: E731

    def f(x, s):
        return jnp.cos(s)[:, None] * x - jnp.sin(s)[:, None] * net(x, s)

    _, df_ds = jax.jvp(f, (x_t, s), (dx_ds, jnp.ones_like(s)))
    first = -jnp.cos(s)[:, None] ** 2 * (net(x_t, s) - dx_ds)        # the term warm-up leaves alone
    r = 1.0 if warmup == 0 else min(1.0, step / warmup)
    g = first + r * (jnp.cos(s)[:, None] * df_ds - first)
    if c is not None:
        g = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + c)
    return float(jnp.mean(jnp.sum(g**2, axis=1) / 2)), -2 * np.asarray(jnp.mean(g, axis=0)) / 2


@pytest.mark.parametrize("step, warmup, c", [(0, 100, 0.1), (25, 100, 0.1), (400, 100, 0.1), (25, 100, None),
                                             (0, 0, 0.1)])
def test_warmup_and_tangent_normalisation_are_applied(step, warmup, c):
    apply, params = mlp_apply()
    batch, key = {"x": CIRCLE.sample(jax.random.key(1), 256)}, jax.random.key(2)
    want, want_grad_a = reference_loss(apply, params, batch, key, step, warmup, c)
    method = build(warmup_steps=warmup, tangent_norm=c)
    offset = lambda p, x, t, cond, rng: apply(p["net"], x, t, cond, rng) + p["a"]  # noqa: E731
    both = {"net": params, "a": jnp.zeros((2,))}
    (got, aux), grads = jax.value_and_grad(method.make_loss(offset), has_aux=True)(both, state_of(both, step),
                                                                                      batch, key)
    assert float(got) == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads["a"], want_grad_a, rtol=1e-3, atol=1e-7)   # F moves along +g
    assert float(aux["warmup_r"]) == pytest.approx(1.0 if warmup == 0 else min(1.0, step / warmup))
    if c is not None:
        assert float(got) < 0.5                           # every normalised ‖g‖ < 1, so the loss < 1/D


def test_warmup_and_normalisation_change_the_loss():
    """The checks above are not vacuous: r and c each move the loss of a random network."""
    apply, params = mlp_apply()
    batch, key = {"x": CIRCLE.sample(jax.random.key(1), 256)}, jax.random.key(2)
    values = {(step, c): float(build(warmup_steps=100, tangent_norm=c).make_loss(apply)(
        params, state_of(params, step), batch, key)[0]) for step in (0, 100) for c in (0.1, None)}
    assert abs(values[(0, 0.1)] - values[(100, 0.1)]) > 1e-3 * values[(100, 0.1)]
    assert abs(values[(100, None)] - values[(100, 0.1)]) > 1e-3 * values[(100, 0.1)]


# ------------------------------------------------------------------------------------------------ sampling
def counting_exact():
    inputs = []

    def apply(params, x, t, *cond):
        jax.debug.callback(lambda x, t: inputs.append((np.asarray(x), np.asarray(t))), x, t)
        return exact_f(x, t).astype(x.dtype)

    return apply, inputs


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("steps", [1, 2])
def test_the_consistency_sampler_driven_by_the_exact_model_follows_the_exact_flow(steps):
    """1 step: x = Φ_{0→1}(x₀). 2 steps: the second call sees cos(1.1)·Φ_{0→1}(x₀) + sin(1.1)·x₀' at t = 1 − 2.2/π,
    with x₀' fresh noise, and returns its flow map to data. NFE measured."""
    method = build()
    apply, inputs = counting_exact()
    noise = jax.random.normal(jax.random.key(4), (64, 2), jnp.float64)
    x, info = method.sample(apply, None, noise, key=jax.random.key(5), solver="consistency", num_steps=steps)
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(inputs) == steps == int(info["forward_passes"]) == int(info["num_steps"])
    first = CIRCLE.flow_map(TRIG, noise, 0.0, 1.0, RK4_STEPS)
    np.testing.assert_allclose(inputs[0][0], noise)
    if steps == 1:
        np.testing.assert_allclose(x, first, atol=1e-6)
        np.testing.assert_allclose(info["grid"], [0.0, 1.0])
        return
    t1 = 1 - 1.1 / HALF_PI
    np.testing.assert_allclose(info["grid"], [0.0, t1, 1.0], atol=1e-12)
    x1, t_in = inputs[1]
    np.testing.assert_allclose(t_in, t1, atol=1e-12)
    fresh = (x1 - np.cos(1.1) * np.asarray(first)) / np.sin(1.1)
    assert abs(fresh.mean()) < 0.25 and abs(fresh.std() - 1) < 0.2          # re-noised with fresh N(0, I) noise
    assert np.abs(fresh - np.asarray(noise)).max() > 0.5                     # not the starting noise again
    np.testing.assert_allclose(x, CIRCLE.flow_map(TRIG, jnp.asarray(x1), t1, 1.0, RK4_STEPS), atol=1e-6)


@pytest.mark.usefixtures("x64")
def test_fg_sample_reads_the_network_as_a_v_prediction_and_one_ddim_step_is_the_consistency_step():
    apply, _ = counting_exact()
    noise = jax.random.normal(jax.random.key(4), (32, 2), jnp.float64)
    x, info = build().sample(apply, {}, noise, key=jax.random.key(5), solver="ddim", num_steps=1)
    np.testing.assert_allclose(x, CIRCLE.flow_map(TRIG, noise, 0.0, 1.0, RK4_STEPS), atol=1e-6)
    assert int(info["nfe"]) == 1


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("options, match", [
    ({"path": fg.paths.get("linear")}, "needs path.name='trig'"),
    ({"path": fg.paths.get("trig", t_max=0.99)}, "needs path.name='trig'"),
    ({"target": "velocity"}, "loss.target='velocity'.*set loss.target='v'"),
    ({"weighting": "snr"}, "loss.weighting='snr'"),
    ({"coupling": "ot"}, "loss.coupling='ot'"),
    ({"mode": "ect"}, "mode='ect' is not one of: sct, scd"),
    ({"mode": "sct", "teacher": "/some/run"}, "teacher='/some/run' is for mode 'scd'"),
    ({"mode": "scd"}, "teacher=None: mode 'scd' needs the workdir"),
    ({"mode": "scd", "teacher": "/nonexistent/run"}, "teacher='/nonexistent/run'.*not a flowgen training workdir"),
    ({"sigma_d": 0.0}, "sigma_d=0.0"),
    ({"warmup_steps": -1}, "warmup_steps=-1"),
    ({"warmup_steps": 1.5}, "warmup_steps=1.5"),
    ({"tangent_norm": 0.0}, "tangent_norm=0.0"),
    ({"intermediate_times": (2.0,)}, r"intermediate_times=\(2.0,\)"),
    ({"intermediate_times": (0.5, 1.0)}, "strictly decreasing"),
])
def test_bad_options_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        build(**options)


@pytest.mark.parametrize("overrides, match", [
    ({"path.name": "linear"}, "was trained on LinearPath"),
    ({"loss.target": "noise"}, "predicts 'noise'.*valid teacher predictions: velocity, data, v"),
    ({"method.name": "consistency"}, "is itself a consistency model"),
    ({"model.num_classes": 10, "data.name": "flowgen_digits"}, "num_classes=10; the student has 0"),
])
def test_bad_teachers_are_refused_by_name(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        build(mode="scd", teacher=teacher_workdir(tmp_path, **overrides))


def test_a_good_teacher_config_builds(tmp_path):
    method = build(mode="scd", teacher=teacher_workdir(tmp_path))
    assert method.mode == "scd" and method.prediction == "v"


def test_bad_sampler_settings_are_refused_by_name():
    noise = jnp.zeros((4, 2))
    apply, _ = counting_exact()
    method = build()
    with pytest.raises(ValueError, match=r"num_steps=3: sampler 'consistency' takes 1 to 2 steps"):
        method.sample(apply, None, noise, key=jax.random.key(0), solver="consistency", num_steps=3)
    with pytest.raises(ValueError, match="num_steps=0"):
        method.check_sampler("consistency", 0, "uniform")
    with pytest.raises(ValueError, match="sample.grid='edm'"):
        method.sample(apply, None, noise, key=jax.random.key(0), solver="consistency", num_steps=1, grid="edm")
    with pytest.raises(ValueError, match="sample.guidance=2.0: sampler 'consistency' samples unguided"):
        method.check_sampler("consistency", 1, "uniform", 2.0)
    with pytest.raises(ValueError, match="re-noises: give key"):
        method.sample(apply, None, noise, key=None, solver="consistency", num_steps=2)
    build(intermediate_times=(1.3, 0.8, 0.3)).check_sampler("consistency", 4, "uniform")


def test_bad_sample_settings_of_the_config_fail_validation():
    import importlib.util
    from pathlib import Path

    from flowgen.train.config import validate

    spec = importlib.util.spec_from_file_location(
        "toy2d_consistency", Path(__file__).resolve().parents[1] / "configs" / "toy2d_consistency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    validate(config)
    config.sample.num_steps = 3
    with pytest.raises(ValueError, match="sample.num_steps=3: sampler 'consistency' takes 1 to 2 steps"):
        validate(config)
    config.sample.num_steps, config.path.name = 1, "linear"
    with pytest.raises(ValueError, match="needs path.name='trig'"):
        validate(config)
