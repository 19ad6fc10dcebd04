"""Objectives: the exact posterior minimises every loss; weightings are exact across targets; finite at the ends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import losses
from flowgen.paths import targets as T

pytestmark = pytest.mark.usefixtures("x64")

GMM = fg.analytic.GaussianMixture.circle()


def perturbed_exact_model(path, target):
    exact = GMM.model(path, target)

    def model(params, x_t, t, cond, rng):
        # A smooth perturbation direction that is not orthogonal to anything in particular.
        direction = jnp.tanh(x_t[:, ::-1]) + jnp.sin(3 * t)[:, None]
        return exact(x_t, t) + params * direction

    return model


CASES = [
    ("linear", "velocity", "uniform"), ("linear", "noise", "uniform"), ("linear", "data", "snr"),
    ("linear", "v", "min_snr"), ("vp_linear", "noise", "snr"), ("vp_linear", "score", "likelihood"),
    ("vp_linear", "v", "uniform"), ("ve", "data", "edm"), ("trig", "velocity", "min_snr"),
]


@pytest.mark.parametrize("path_name,target,weighting", CASES)
def test_exact_posterior_minimises_the_expected_loss(path_name, target, weighting):
    path = fg.paths.get(path_name)
    t_max = min(path.t_max, 0.99) if target == "score" else path.t_max
    loss_fn = losses.make_loss(perturbed_exact_model(path, target), path, target, weighting,
                               time_sampler_options=dict(t_min=max(path.t_min, 1e-3), t_max=t_max))
    batch = {"x": GMM.sample(jax.random.key(0), 100_000, dtype=jnp.float64)}
    key = jax.random.key(1)
    value = lambda eps: loss_fn(jnp.asarray(eps), batch, key)[0]  # noqa: E731
    slope = jax.grad(value)(0.0)
    curvature = (value(0.2) + value(-0.2) - 2 * value(0.0)) / 0.04
    assert curvature > 0
    assert value(0.2) > value(0.0) and value(-0.2) > value(0.0)
    assert abs(slope / curvature) < 0.02, (slope, curvature)     # the minimiser is at ε ≈ 0


@pytest.mark.parametrize("weighting", losses.WEIGHTINGS[1:])
@pytest.mark.parametrize("target", T.TARGETS)
def test_weightings_are_the_same_objective_in_every_target(weighting, target):
    """w_T·‖F_T − T‖² equals w_x·‖x̂ − x_data‖² for the data prediction implied by F_T."""
    path = fg.paths.get("vp_linear")
    k = jax.random.split(jax.random.key(2), 4)
    x_data, noise = jax.random.normal(k[0], (32, 3)), jax.random.normal(k[1], (32, 3))
    t = jax.random.uniform(k[2], (32,), minval=0.05, maxval=0.95)
    x_t = path.sample(x_data, noise, t)
    goal = T.target_from_pair(target, path, x_data, noise, t)
    pred = goal + 0.3 * jax.random.normal(k[3], goal.shape)
    pred_data = T.convert(pred, target, "data", path, x_t, t)
    lhs = losses.loss_weight(weighting, target, path, t) * jnp.mean((pred - goal) ** 2, 1)
    rhs = losses.loss_weight(weighting, "data", path, t) * jnp.mean((pred_data - x_data) ** 2, 1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9)


def test_snr_weighting_is_the_plain_noise_loss_and_min_snr_caps_it():
    path = fg.paths.get("vp_linear")
    t = jnp.linspace(0.0, path.t_max, 11)
    np.testing.assert_allclose(losses.loss_weight("snr", "noise", path, t), 1.0, rtol=1e-9)
    snr = jnp.exp(2 * path.log_snr(t))
    np.testing.assert_allclose(losses.loss_weight("min_snr", "noise", path, t), jnp.minimum(snr, 5.0) / snr, rtol=1e-9)


@pytest.mark.parametrize("path_name", ["linear", "vp_linear", "ve", "trig", "vp_cosine"])
@pytest.mark.parametrize("target", ["velocity", "noise", "data", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "snr", "min_snr", "edm"])
def test_loss_and_gradients_are_finite_at_t_min_and_t_max(path_name, target, weighting):
    path = fg.paths.get(path_name)

    def model(params, x_t, t, cond, rng):
        return x_t @ params["w"] + t[:, None] * params["b"]

    loss_fn = losses.make_loss(model, path, target, weighting)
    params = {"w": jnp.eye(2) * 0.5, "b": jnp.ones((2,))}
    batch = {"x": GMM.sample(jax.random.key(0), 4, dtype=jnp.float64),
             "t": jnp.array([path.t_min, path.t_max, path.t_min, path.t_max])}
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.key(1))
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_label_dropout_uses_the_null_label():
    """With x_data = 0, t = 1 and a data target, a model that outputs 1 exactly when it sees the null label has an
    MSE equal to the fraction of labels dropped."""

    def model(params, x_t, t, cond, rng):
        return jnp.broadcast_to((cond == 10)[:, None].astype(x_t.dtype), x_t.shape)

    path = fg.paths.get("linear")
    n = 20_000
    batch = {"x": jnp.zeros((n, 2)), "label": jnp.zeros((n,), jnp.int32), "t": jnp.ones((n,))}
    loss_fn = jax.jit(losses.make_loss(model, path, "data", label_dropout=0.3, null_label=10))
    np.testing.assert_allclose(loss_fn(None, batch, jax.random.key(0))[1]["mse"], 0.3, atol=0.015)
    # make_loss itself may be called under jit too (its checks run on the host).
    jax.jit(lambda b: losses.make_loss(model, path, "data")(None, b, jax.random.key(0))[0])(batch)


def test_given_coupling_trains_on_the_batch_pairs():
    path = fg.paths.get("linear")
    got = {}

    def model(params, x_t, t, cond, rng):
        got["x_t"] = x_t
        return jnp.zeros_like(x_t)

    x, z = jnp.ones((3, 2)), jnp.full((3, 2), -1.0)
    loss_fn = losses.make_loss(model, path, coupling="given")
    loss_fn(None, {"x": x, "noise": z, "t": jnp.full((3,), 0.25)}, jax.random.key(0))
    np.testing.assert_allclose(got["x_t"], 0.25 * x + 0.75 * z)
    with pytest.raises(ValueError, match="needs batch\\['noise'\\]"):
        loss_fn(None, {"x": x}, jax.random.key(0))


BAD = [
    (dict(target="eps"), "unknown prediction target"),
    (dict(weighting="p2"), "unknown weighting 'p2'; valid weightings: uniform, snr"),
    (dict(time_sampler="cosine"), "unknown time sampler 'cosine'; valid time samplers: uniform, logit_normal, edm"),
    (dict(coupling="rot"), "unknown coupling 'rot'; valid couplings: independent, ot, sinkhorn, given"),
    (dict(label_dropout=0.1), "needs null_label"),
    (dict(label_dropout=1.5), "label_dropout must be in"),
    (dict(target="score"), "score target is infinite where σ = 0"),
    (dict(weighting="likelihood"), "not finite at t"),
    (dict(time_sampler_options=dict(sigma=2.0)), "unknown options \\['sigma'\\]"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_options_are_refused_when_the_loss_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.make_loss(lambda *a: None, fg.paths.get("linear"), **kwargs)
