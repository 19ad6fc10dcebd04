"""The Gaussian-mixture ground truth: exact marginal density, posterior means, flow map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.paths import targets as T

pytestmark = pytest.mark.usefixtures("x64")

NAMED = [n for n in fg.paths.PATHS if n != "custom"]


def mixture():
    return fg.analytic.GaussianMixture(
        means=[[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]], std=[0.5, 0.3, 1.0], weights=[0.2, 0.5, 0.3]
    )


@pytest.mark.parametrize("name", NAMED)
def test_posterior_score_is_the_gradient_of_the_exact_log_density(name):
    """Tweedie: ∇log p_t(x) = −E[noise | x]/σ and E[x_data | x] = (x + σ²∇log p_t)/α."""
    path = fg.paths.get(name)
    gmm = mixture()
    x = jax.random.normal(jax.random.key(0), (32, 2)) * 3
    for t in np.linspace(path.t_min, path.t_max, 5)[1:-1]:
        grad = jax.grad(lambda x: gmm.log_prob(x, t, path).sum())(x)
        d, score = gmm.posterior(x, t, path)
        np.testing.assert_allclose(score, grad, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(-d.noise / path.sigma(t), grad, rtol=1e-9, atol=1e-12)
        a, s = path.alpha(t), path.sigma(t)
        np.testing.assert_allclose(d.data, (x + s**2 * grad) / a, rtol=1e-8, atol=1e-10)


def test_marginal_density_integrates_to_one():
    gmm, path = mixture(), fg.paths.get("linear")
    g = np.linspace(-8, 8, 401)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1))
    for t in (None, 0.3, 0.9):
        mass = np.exp(np.asarray(gmm.log_prob(pts, t, path))).sum() * (g[1] - g[0]) ** 2
        np.testing.assert_allclose(mass, 1.0, atol=2e-3)


def test_model_is_finite_at_both_ends_for_every_target():
    gmm = fg.analytic.GaussianMixture.circle()
    x = jax.random.normal(jax.random.key(1), (16, 2))
    for name in ("linear", "trig"):
        path = fg.paths.get(name)
        for target in T.TARGETS:
            for t in (0.0, 1.0):
                out = gmm.model(path, target)(x, jnp.full((16,), t))
                assert np.all(np.isfinite(out)), (name, target, t)
    # At σ = 0 the data mean is x itself; at α = 0 it is E[x_data].
    path = fg.paths.get("linear")
    d, _ = gmm.posterior(x, 1.0, path)
    np.testing.assert_allclose(d.data, x, atol=1e-12)
    d, _ = gmm.posterior(x, 0.0, path)
    np.testing.assert_allclose(d.data, np.broadcast_to(gmm.mean(), x.shape), atol=1e-12)


def test_every_target_of_the_model_is_consistent():
    gmm, path = mixture(), fg.paths.get("vp_linear")
    x = jax.random.normal(jax.random.key(2), (8, 2))
    t = jnp.full((8,), 0.6)
    vel = gmm.model(path, "velocity")(x, t)
    for target in T.TARGETS:
        pred = gmm.model(path, target)(x, t)
        np.testing.assert_allclose(T.convert(pred, target, "velocity", path, x, t), vel, rtol=1e-9)


def test_conditional_model_and_null_label():
    gmm, path = mixture(), fg.paths.get("linear")
    model = gmm.model(path, "data", conditional=True)
    x = jax.random.normal(jax.random.key(3), (3, 2))
    t = jnp.full((3,), 0.999999)
    # Almost no noise left: the conditional data mean sits at the labelled component's own posterior.
    labels = jnp.array([0, 1, 2])
    per_label = model(x, t, labels)
    t_mid = jnp.full((3,), 0.2)
    cond = model(x, t_mid, labels)
    uncond = model(x, t_mid, jnp.full((3,), 3))
    np.testing.assert_allclose(uncond, gmm.model(path, "data")(x, t_mid), rtol=1e-12)
    assert not np.allclose(cond, uncond)
    assert np.all(np.isfinite(per_label))
    # With the component fixed the posterior mean is that of a single Gaussian.
    single = fg.analytic.GaussianMixture(gmm.means[1:2], gmm.std[1])
    np.testing.assert_allclose(model(x, t_mid, jnp.ones(3, int)), single.model(path, "data")(x, t_mid), rtol=1e-10)


def test_samples_follow_the_weights_and_moments():
    gmm = mixture()
    x, labels = gmm.sample(jax.random.key(4), 100_000, dtype=jnp.float64, return_labels=True)
    freq = np.bincount(np.asarray(labels), minlength=3) / 100_000
    np.testing.assert_allclose(freq, gmm.weights, atol=0.005)
    np.testing.assert_allclose(np.asarray(x).mean(0), gmm.mean(), atol=0.03)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), gmm.covariance(), atol=0.1)


def test_exact_flow_map_solves_the_probability_flow_ode():
    gmm = fg.analytic.GaussianMixture([[1.0, -2.0]], 0.7)
    for name in ("linear", "vp_linear", "ve"):
        path = fg.paths.get(name)
        x0 = jax.random.normal(jax.random.key(5), (4, 2))
        t0 = path.t_min

        def flow(t):
            return gmm.exact_flow_map(path, x0, t0, t)

        t = 0.5
        dx_dt = jax.jvp(flow, (jnp.asarray(t),), (jnp.asarray(1.0),))[1]
        np.testing.assert_allclose(dx_dt, gmm.model(path, "velocity")(flow(t), jnp.full((4,), t)), rtol=1e-9)
        np.testing.assert_allclose(flow(t0), x0, rtol=1e-12)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="means must have shape"):
        fg.analytic.GaussianMixture([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="std"):
        fg.analytic.GaussianMixture([[1.0]], -1.0)
    with pytest.raises(ValueError, match="weights"):
        fg.analytic.GaussianMixture([[1.0], [2.0]], 1.0, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="single Gaussian"):
        fg.analytic.GaussianMixture.circle().exact_flow_map(fg.paths.get("linear"), jnp.ones((1, 2)), 0.0, 1.0)
