"""Tong et al.'s conditional flow matching (``flowgen.methods.cfm``): the target is the conditional path's time
derivative, the ends of each noise schedule, the options checked, and — trained briefly — OT pairs learn a flow
whose path energy is near the optimal transport cost while independent pairs do not (the paper's claim)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgen as fg
from flowgen import methods
from flowgen.data import toy
from flowgen.evals.sample_metrics import path_energy, wasserstein2
from flowgen.methods.cfm import conditional_flow
from flowgen.networks import MLP

LINEAR = fg.paths.get("linear")


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("noise", ["constant", "bridge"])
def test_target_is_the_time_derivative_of_the_conditional_path(noise):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x1, x0, eps = (jax.random.normal(k, (16, 2), jnp.float64) for k in (k1, k2, k3))
    t = jnp.linspace(0.05, 0.95, 16, dtype=jnp.float64)
    x_t, u_t = conditional_flow(x1, x0, eps, t, 0.3, noise)
    _, dx_dt = jax.jvp(lambda s: conditional_flow(x1, x0, eps, s, 0.3, noise)[0], (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(u_t, dx_dt, rtol=1e-12, atol=1e-12)
    spread = np.asarray(x_t - (t[:, None] * x1 + (1 - t[:, None]) * x0))
    scale = 0.3 if noise == "constant" else 0.3 * np.sqrt(np.asarray(t * (1 - t)))[:, None]
    np.testing.assert_allclose(spread, scale * np.asarray(eps), rtol=1e-12, atol=1e-12)


def test_the_bridge_pins_both_ends_and_constant_noise_does_not():
    x1, x0, eps = jnp.ones((4, 2)), -jnp.ones((4, 2)), jnp.full((4, 2), 2.0)
    for t, end in ((0.0, x0), (1.0, x1)):
        x_t, u_t = conditional_flow(x1, x0, eps, jnp.full((4,), t), 0.5, "bridge")
        np.testing.assert_allclose(x_t, end, atol=1e-5)
        assert np.all(np.isfinite(u_t))
        x_t, _ = conditional_flow(x1, x0, eps, jnp.full((4,), t), 0.5, "constant")
        np.testing.assert_allclose(x_t, end + 1.0)


def test_constant_noise_loss_of_a_zero_network_is_the_mean_squared_displacement():
    """With a network that outputs 0, the loss is E‖x₁ − x₀‖²/dim whatever t and ε are (u_t = x₁ − x₀)."""
    m = methods.build("cfm", path=LINEAR, coupling="given", sigma=0.7)
    x1, x0 = jax.random.normal(jax.random.key(1), (64, 2)), jax.random.normal(jax.random.key(2), (64, 2)) + 3.0
    value, _ = m.make_loss(lambda p, x, t, c, r: jnp.zeros_like(x))(None, None, {"x": x1, "noise": x0},
                                                                    jax.random.key(3))
    np.testing.assert_allclose(value, np.mean((np.asarray(x1) - np.asarray(x0)) ** 2), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=-0.1), "method.kwargs.sigma=-0.1"),
    (dict(sigma=float("nan")), "method.kwargs.sigma=nan"),
    (dict(noise="brownian"), "method.kwargs.noise='brownian'; valid: constant, bridge"),
    (dict(target="noise"), "loss.target='velocity'"),
    (dict(path=fg.paths.get("vp_linear")), "path.name must be 'linear'"),
    (dict(path=fg.paths.get("linear", sigma_min=0.1)), "path.name must be 'linear'"),
])
def test_bad_options_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError) as e:
        methods.build("cfm", **{"path": LINEAR, **kwargs})
    assert message in str(e.value)


def _train_and_score(coupling, noise="constant", steps=400, batch=256, seed=0):
    """(W2 to held-out data, NPE) of a 3×64 SELU net trained ``steps`` steps on N(0, I) → 8 gaussians."""
    m = methods.build("cfm", path=LINEAR, coupling=coupling, sigma=0.1, noise=noise)
    net = MLP(hidden=64, depth=3, time_embedding="concat", activation="selu")
    params = net.init(jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    loss = m.make_loss(lambda p, x, t, cond, rng: net.apply(p, x, t))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, k):
        x = toy.toy_batch("8gaussians", seed, k, batch)
        grads = jax.grad(lambda p: loss(p, None, {"x": x}, jax.random.fold_in(jax.random.key(seed + 1), k))[0])(
            params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for k in range(steps):
        params, opt_state = step(params, opt_state, k)
    x0 = jax.random.normal(jax.random.key(99), (500, 2))
    times = np.linspace(0.0, 1.0, 33)

    @jax.jit
    def trajectory(x):
        def euler(x, k):
            x = x + (times[1] - times[0]) * net.apply(params, x, jnp.full((x.shape[0],), jnp.asarray(times)[k]))
            return x, x
        return jnp.concatenate([x[None], jax.lax.scan(euler, x, jnp.arange(32))[1]])

    xs = np.asarray(trajectory(x0), np.float64)
    true = np.asarray(toy.toy_batch("8gaussians", 7, 0, 500), np.float64)
    w2_ref = wasserstein2(np.asarray(x0, np.float64), true) ** 2
    return wasserstein2(xs[-1], true), abs(path_energy(times, xs) - w2_ref) / w2_ref


def test_ot_pairs_learn_a_near_optimal_transport_and_independent_pairs_do_not():
    """Tong et al.'s claim, briefly trained: OT-CFM and SB-CFM reach the data (W2) with a path energy within 20% of
    the OT cost, I-CFM about 60% above it. Measured (400 steps): W2 0.50 / 0.46 / 0.67, NPE 0.11 / 0.11 / 0.59."""
    w2_ot, npe_ot = _train_and_score("ot")
    w2_sb, npe_sb = _train_and_score("ot", "bridge")
    w2_ind, npe_ind = _train_and_score("independent")
    assert max(w2_ot, w2_sb) < 0.6 and w2_ind < 0.9, (w2_ot, w2_sb, w2_ind)
    assert max(npe_ot, npe_sb) < 0.2 and npe_ind > 0.4, (npe_ot, npe_sb, npe_ind)
