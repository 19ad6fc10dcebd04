"""The few-step methods (MeanFlow, shortcut models) against the exact mixture and against flow matching.

What is testable about a loss whose minimiser is a conditional expectation: at the exact model the *regression
residual* Δ = model − target has zero mean given the model's inputs, so the gradient of the loss with respect to any
perturbation of the model's output that depends only on its inputs vanishes (up to Monte-Carlo error), while a wrong
model, or the right model under a wrong target (a sign error in the identity), leaves a gradient many times larger.
Where the target is deterministic (shortcut self-consistency) the residual itself is ~0 at the exact model. The
adaptive weighting of MeanFlow (p > 0) moves the fixed point (the weight depends on Δ), so these checks use p = 0.
Further: MeanFlow with r = t and shortcut models with d = 0 *are* flow matching (same batch, same key), and the
few-step samplers driven by the exact average velocity reproduce the exact flow map with measured NFE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import methods
from flowgen.networks.mlp import MLP
from flowgen.train.state import TrainState

CIRCLE = fg.analytic.GaussianMixture.circle(8, radius=2.0, std=0.5)
LINEAR = fg.paths.get("linear")
RK4_STEPS = 48


def build(name, path=LINEAR, **options):
    base = dict(target="velocity", weighting="uniform", time_sampler="uniform", time_sampler_options={},
                coupling="independent", label_dropout=0.0)
    return methods.build(name, path=path, **{**base, **options})


def exact_u(path):
    """The exact average velocity as a training-mode 'network' with a learnable additive perturbation
    a + z·B (zero at params = 0): u*(z, t, t + step) + a + z·B."""

    def apply(params, z, t, cond, rng, h=None, d=None):
        step = h if h is not None else d
        u = CIRCLE.average_velocity(path, z, t, t + step, RK4_STEPS)
        return u + params["a"] + z @ params["B"]

    return apply


ZERO = {"a": jnp.zeros((2,)), "B": jnp.zeros((2, 2))}


def state_of(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), ema={"ema_0.99": params})


def data_batch(n, seed=0):
    return {"x": CIRCLE.sample(jax.random.key(seed), n, jnp.float64)}


def perturbation_gradient(loss, params=ZERO, n=8192, seed=0):
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, state_of(p), data_batch(n, seed),
                                                             jax.random.key(seed + 1))[0]))(params)
    return float(np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))), value


# ------------------------------------------------------------------------------------------------ exact fixed point
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("path_name", ["linear", "vp_cosine"])
def test_the_exact_average_velocity_is_the_fixed_point_of_the_meanflow_loss(path_name):
    """All examples with r ≠ t (ratio 1): ∇ of the loss in an output perturbation is ~0 at u*, and ≥ 3× larger
    for the instantaneous velocity used as if it were the average one (u(z, t, r) = v(z, t))."""
    path = fg.paths.get(path_name)
    method = build("meanflow", path=path, ratio=1.0, p=0.0)
    exact, _ = perturbation_gradient(method.make_loss(exact_u(path)))

    def velocity_only(params, z, t, cond, rng, h):
        return CIRCLE.model(path, "velocity")(z, t) + params["a"] + z @ params["B"]

    wrong, _ = perturbation_gradient(method.make_loss(velocity_only))
    print(f"{path_name}: |grad| at the exact u {exact:.4f}, at u = v {wrong:.4f}")
    assert exact < 0.35 * wrong


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("path_name", ["linear", "vp_cosine"])
def test_the_meanflow_target_of_the_exact_model_is_the_exact_average_velocity(path_name):
    """No Monte-Carlo error: with the exact marginal velocity v(z, t) in place of the conditional one the target is
    deterministic, and at u* it must equal u* (the identity as implemented: its sign, its tangents (v, 1, −1))."""
    from flowgen.methods.meanflow import meanflow_target

    path = fg.paths.get(path_name)
    z = jax.random.normal(jax.random.key(6), (32, 2)) * 2.0
    t = jnp.linspace(0.02, 0.7, 32)
    h = jnp.linspace(0.9, 0.05, 32) * (path.t_max - t)
    v = CIRCLE.model(path, "velocity")(z, t)
    u, goal = meanflow_target(lambda z, t, h: CIRCLE.average_velocity(path, z, t, t + h, RK4_STEPS), z, t, h, v)
    np.testing.assert_allclose(goal, u, atol=2e-3 * float(jnp.abs(u).max()))
    assert float(jnp.abs(u - v).max()) > 0.5               # the check is not vacuous: u* is no velocity here


@pytest.mark.usefixtures("x64")
def test_the_shortcut_self_consistency_target_is_met_exactly_by_the_exact_shortcut():
    """Self-consistency only (fraction just under 1): the residual of the exact shortcut is ~0 (its only error is
    the finest level, whose half steps are queried at d = 0); a model that ignores d is far off. The flow-matching
    part's gradient in an output perturbation is ~0 at the exact velocity."""
    method = build("shortcut", self_consistency_fraction=0.99, target_params="ema")
    _, aux = method.make_loss(exact_u(LINEAR))(ZERO, state_of(ZERO), data_batch(512), jax.random.key(3))
    assert float(aux["sc_mse"]) < 1e-3

    def ignores_d(params, z, t, cond, rng, d):
        return CIRCLE.model(LINEAR, "velocity")(z, t) + params["a"]

    _, aux_wrong = method.make_loss(ignores_d)(ZERO, state_of(ZERO), data_batch(512), jax.random.key(3))
    print(f"sc_mse exact {float(aux['sc_mse']):.2e}, ignoring d {float(aux_wrong['sc_mse']):.2e}")
    assert float(aux_wrong["sc_mse"]) > 100 * float(aux["sc_mse"])


# ------------------------------------------------------------------------------------------------ reductions to FM
def mlp_apply(extra):
    module = MLP(hidden=32, depth=2, extra_times=(extra,))
    params = module.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)), times={extra: jnp.zeros((1,))})

    def apply(p, x, t, cond, rng, **times):
        return module.apply(p, x, t, cond, times=times)

    return apply, params


@pytest.mark.parametrize("name, options, extra", [
    ("meanflow", {"ratio": 0.0, "p": 0.0}, "h"),
    ("shortcut", {"self_consistency_fraction": 0.0}, "d"),
])
def test_at_r_equal_t_and_at_d_zero_the_methods_are_flow_matching(name, options, extra):
    apply, params = mlp_apply(extra)
    method = build(name, time_sampler="logit_normal", **options)
    fm = build("flow_matching", time_sampler="logit_normal")
    fm_loss = fm.make_loss(lambda p, x, t, c, rng: apply(p, x, t, c, rng, **{extra: jnp.zeros_like(t)}))
    batch, key = {"x": CIRCLE.sample(jax.random.key(1), 256)}, jax.random.key(2)
    state = state_of(params)
    (lm, _), gm = jax.value_and_grad(method.make_loss(apply), has_aux=True)(params, state, batch, key)
    (lf, _), gf = jax.value_and_grad(fm_loss, has_aux=True)(params, state, batch, key)
    np.testing.assert_allclose(lm, lf, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), gm, gf)


def test_meanflow_weights_each_example_adaptively():
    """p > 0: loss = mean(sg(w)·‖Δ‖²/D), w = 1/(‖Δ‖² + c)^p — checked at r = t, where Δ = u − v_t is known."""
    apply, params = mlp_apply("h")
    batch, key = {"x": CIRCLE.sample(jax.random.key(1), 64)}, jax.random.key(2)
    plain, aux = build("meanflow", ratio=0.0, p=0.0).make_loss(apply)(params, state_of(params), batch, key)
    weighted, _ = build("meanflow", ratio=0.0, p=0.5, c=0.1).make_loss(apply)(params, state_of(params), batch, key)
    assert float(weighted) < float(plain)                # every weight < 1 once ‖Δ‖² + c > 1 ...
    sq = 2 * float(aux["mse"])
    assert float(weighted) == pytest.approx(float(plain) / np.sqrt(sq + 0.1), rel=0.5)  # ... about 1/sqrt(‖Δ‖²+c)


# ------------------------------------------------------------------------------------------------ samplers
def counting_exact(path):
    calls = []

    def apply(params, x, t, *cond, h=None, d=None):
        jax.debug.callback(lambda: calls.append(1))
        step = h if h is not None else d
        return CIRCLE.average_velocity(path, x, t, t + step, RK4_STEPS).astype(x.dtype)

    return apply, calls


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name, steps", [("meanflow", 1), ("meanflow", 2), ("shortcut", 1), ("shortcut", 2),
                                         ("shortcut", 4)])
def test_the_samplers_driven_by_the_exact_average_velocity_follow_the_exact_flow(name, steps):
    method = build(name)
    apply, calls = counting_exact(LINEAR)
    noise = jax.random.normal(jax.random.key(4), (64, 2), jnp.float64)
    x, info = method.sample(apply, None, noise, key=jax.random.key(5), solver=name, num_steps=steps)
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(calls) == steps == int(info["forward_passes"])
    np.testing.assert_allclose(x, CIRCLE.flow_map(LINEAR, noise, 0.0, 1.0, RK4_STEPS), atol=1e-6)


@pytest.mark.usefixtures("x64")
def test_shortcut_at_the_finest_step_queries_d_zero():
    """2^K steps query d = 0: Euler on the exact velocity (close to, not equal to, the flow)."""
    method = build("shortcut", levels=3)
    apply, calls = counting_exact(LINEAR)
    noise = jax.random.normal(jax.random.key(4), (64, 2), jnp.float64)
    x, info = method.sample(apply, None, noise, key=jax.random.key(5), solver="shortcut", num_steps=8)
    euler, _ = fg.sample(CIRCLE.model(LINEAR, "velocity"), LINEAR, solver="euler", num_steps=8, noise=noise)
    np.testing.assert_allclose(x, euler, atol=1e-9)
    assert int(info["nfe"]) == 8


def test_other_solvers_sample_the_network_at_extra_time_zero():
    apply, calls = counting_exact(LINEAR)
    noise = jax.random.normal(jax.random.key(4), (16, 2))
    x, info = build("meanflow").sample(apply, {}, noise, key=jax.random.key(5), solver="heun", num_steps=4)
    ref, _ = fg.sample(CIRCLE.model(LINEAR, "velocity"), LINEAR, solver="heun", num_steps=4, noise=noise)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert int(info["nfe"]) == 8


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name, options, match", [
    ("meanflow", {"ratio": 1.5}, "ratio=1.5"),
    ("meanflow", {"p": -1.0}, "p=-1.0"),
    ("meanflow", {"target": "noise"}, "loss.target='noise'"),
    ("shortcut", {"levels": 0}, "levels=0"),
    ("shortcut", {"target_params": "teacher"}, "target_params='teacher' is not one of: ema, params"),
    ("shortcut", {"self_consistency_fraction": 1.0}, "self_consistency_fraction=1.0"),
    ("shortcut", {"weighting": "snr"}, "loss.weighting='snr'"),
])
def test_bad_options_are_refused_by_name(name, options, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        build(name, **options)


def test_bad_sampler_settings_are_refused_by_name():
    noise = jnp.zeros((4, 2))
    apply, _ = counting_exact(LINEAR)
    with pytest.raises(ValueError, match=r"num_steps=3: sampler 'shortcut' takes a power of two .* \[1, 2, 4, 8"):
        build("shortcut").sample(apply, None, noise, key=None, solver="shortcut", num_steps=3)
    with pytest.raises(ValueError, match="sample.guidance=2.0: sampler 'meanflow' samples unguided"):
        build("meanflow").sample(apply, None, noise, key=None, solver="meanflow", num_steps=1, cond=jnp.zeros(4, int),
                                 guidance=2.0, null_cond=3)
    with pytest.raises(ValueError, match="sample.grid='edm'"):
        build("meanflow").sample(apply, None, noise, key=None, solver="meanflow", num_steps=1, grid="edm")


def test_guided_shortcut_sampling_counts_one_batched_call_and_two_passes_per_step():
    """Guidance of s: the conditional and the null pass in one batch of 2B; with a model that ignores its label the
    guided samples equal the unguided ones for any weight."""
    calls = []

    def apply(params, x, t, cond, d):
        jax.debug.callback(lambda: calls.append(1))
        assert x.shape[0] == cond.shape[0]
        return CIRCLE.average_velocity(LINEAR, x, t, t + d, 16)

    noise = jax.random.normal(jax.random.key(4), (8, 2))
    method = build("shortcut", num_classes=3)
    labels = jnp.arange(8) % 3
    x, info = method.sample(apply, {}, noise, key=None, solver="shortcut", num_steps=4, cond=labels, guidance=2.5,
                            null_cond=3)
    jax.block_until_ready(x)
    assert len(calls) == int(info["nfe"]) == 4 and int(info["forward_passes"]) == 8
    plain, _ = method.sample(apply, {}, noise, key=None, solver="shortcut", num_steps=4, cond=labels)
    np.testing.assert_allclose(x, plain, atol=1e-5)


@pytest.mark.parametrize("config_file, override, match", [
    ("toy2d_shortcut", {"sample.num_steps": 3}, "sample.num_steps=3: sampler 'shortcut' takes a power of two"),
    ("toy2d_meanflow", {"sample.grid": "logsnr"}, "sample.grid='logsnr': sampler 'meanflow' jumps on the uniform"),
])
def test_bad_sample_settings_of_a_few_step_config_fail_validation(config_file, override, match):
    """Before anything trains: config validation asks the method about its own sampler's settings."""
    import importlib.util
    from pathlib import Path

    from flowgen.train.config import validate

    spec = importlib.util.spec_from_file_location(
        config_file, Path(__file__).resolve().parents[1] / "configs" / f"{config_file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    validate(config)
    config.update_from_flattened_dict(override)
    with pytest.raises(ValueError, match=match):
        validate(config)
