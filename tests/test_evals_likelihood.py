"""Likelihood through the probability-flow ODE against exact densities (analytic mixtures, a Gaussian)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import flowgen as fg
from flowgen.evals import likelihood


def _marginal_prior(gmm, path):
    return lambda z: gmm.log_prob(z, path.t_min, path)


@pytest.mark.parametrize("path_name, target", [("linear", "velocity"), ("vp_linear", "noise")])
def test_exact_divergence_matches_the_mixture_log_density(x64, path_name, target):
    gmm = fg.analytic.GaussianMixture.circle()
    path = fg.paths.get(path_name)
    x = gmm.sample(jax.random.key(1), 16, dtype=jnp.float64)
    truth = gmm.log_prob(x, path.t_max, path)
    # With the exact marginal at t_min as prior, what is left is the ODE's integration error.
    log_p, info = likelihood.log_likelihood(gmm.model(path, target), path, x, target, num_steps=60,
                                            prior_log_prob=_marginal_prior(gmm, path))
    assert float(jnp.max(jnp.abs(log_p - truth))) < 1e-5
    assert int(info["nfe"]) == 4 * 60
    # With the default prior N(0, σ(t_min)²): exact on the linear path (α(0) = 0); off by the prior's mismatch
    # on VP (α(t_min) ≈ 6.6e-3), still within 2e-3 nats.
    log_p_default, _ = likelihood.log_likelihood(gmm.model(path, target), path, x, target, num_steps=60)
    bound = 1e-5 if path_name == "linear" else 2e-3
    assert float(jnp.max(jnp.abs(log_p_default - truth))) < bound


def test_single_gaussian_closed_form_with_dopri5(x64):
    mean, std = np.array([1.0, -2.0, 0.5]), 0.7
    gmm = fg.analytic.GaussianMixture(mean[None], std)
    path = fg.paths.get("linear")
    x = jax.random.normal(jax.random.key(2), (8, 3), jnp.float64) + mean
    log_p, info = likelihood.log_likelihood(gmm.model(path, "velocity"), path, x, solver="dopri5", rtol=1e-8,
                                            atol=1e-8)
    truth = scipy.stats.multivariate_normal(mean, std**2 * np.eye(3)).logpdf(np.asarray(x))
    np.testing.assert_allclose(np.asarray(log_p), truth, atol=1e-6)
    assert float(info["t_final"]) == pytest.approx(path.t_max - path.t_min)   # reversed time τ ran to its end


@pytest.mark.parametrize("probe", likelihood.PROBES)
def test_hutchinson_is_unbiased_within_standard_error(x64, probe):
    gmm = fg.analytic.GaussianMixture.circle()
    path = fg.paths.get("linear")
    model = gmm.model(path, "velocity")
    points = gmm.sample(jax.random.key(3), 4, dtype=jnp.float64)
    exact, _ = likelihood.log_likelihood(model, path, points, num_steps=40)
    reps = 400
    x = jnp.repeat(points, reps, axis=0)                 # 400 independent single-probe estimates per point
    est, _ = likelihood.log_likelihood(model, path, x, divergence="hutchinson", probe=probe, key=jax.random.key(4),
                                       num_steps=40)
    est = np.asarray(est).reshape(4, reps)
    mean, se = est.mean(axis=1), est.std(axis=1, ddof=1) / math.sqrt(reps)
    assert np.all(se > 1e-3)                             # the estimator is noisy, so the check has teeth
    np.testing.assert_array_less(np.abs(mean - np.asarray(exact)), 4.5 * se)
    # More probes, less spread: 16 probes per estimate cut the standard deviation by about 4.
    est16, _ = likelihood.log_likelihood(model, path, x[: 4 * 50], divergence="hutchinson", probe=probe,
                                         num_probes=16, key=jax.random.key(5), num_steps=40)
    spread16 = np.asarray(est16).reshape(4, 50).std(axis=1, ddof=1)
    assert np.all(spread16 < 0.5 * est.std(axis=1, ddof=1))


def test_divergence_estimators_on_a_linear_map(x64):
    a = jnp.array([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 4.0, 0.25]])
    fn = lambda x: x @ a.T
    x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    value, div = likelihood.divergence_exact(fn, x)
    np.testing.assert_allclose(value, fn(x))
    np.testing.assert_allclose(div, np.full(5, float(jnp.trace(a))))
    probes = likelihood.make_probes(jax.random.key(1), "rademacher", (20000, 5, 3), jnp.float64)
    _, est = likelihood.divergence_hutchinson(fn, x, probes)
    np.testing.assert_allclose(est, np.full(5, float(jnp.trace(a))), atol=0.15)


def test_the_model_is_never_evaluated_outside_the_path_interval(x64):
    gmm = fg.analytic.GaussianMixture.circle()
    path = fg.paths.get("vp_linear")                     # t_max = 0.999: the velocity is infinite at t = 1
    inner = gmm.model(path, "velocity")
    outside = lambda t: (t < path.t_min) | (t > path.t_max)
    model = lambda x, t: jnp.where(outside(t)[:, None], jnp.nan, inner(x, t))
    x = gmm.sample(jax.random.key(0), 8, dtype=jnp.float64)
    for solver, kw in (("rk4", {"num_steps": 7}), ("dopri5", {"rtol": 1e-4, "atol": 1e-4})):
        log_p, _ = likelihood.log_likelihood(model, path, x, solver=solver, **kw)
        assert np.all(np.isfinite(np.asarray(log_p))), solver


def test_batch_members_are_independent(x64):
    gmm = fg.analytic.GaussianMixture.circle()
    path = fg.paths.get("linear")
    x = gmm.sample(jax.random.key(0), 6, dtype=jnp.float64)
    whole, _ = likelihood.log_likelihood(gmm.model(path), path, x, num_steps=10)
    parts = [likelihood.log_likelihood(gmm.model(path), path, x[i:i + 3], num_steps=10)[0] for i in (0, 3)]
    np.testing.assert_allclose(whole, np.concatenate(parts), rtol=1e-12)


def test_bits_per_dim_of_the_uniform_density_is_eight():
    # p_x = 2^-D on [-1, 1)^D: every 8-bit pixel value equally likely, so exactly 8 bits per dimension.
    dim = 64
    assert float(likelihood.bits_per_dim(-dim * math.log(2.0), dim)) == pytest.approx(8.0)
    # A density twice as concentrated per dimension saves one bit per dimension.
    assert float(likelihood.bits_per_dim(0.0, dim)) == pytest.approx(7.0)


def test_dequantize_stays_in_its_pixel_bin():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = np.asarray(likelihood.dequantize(pixels, jax.random.key(0)))
    assert x.min() >= -1.0 and x.max() < 1.0
    np.testing.assert_array_equal(np.floor((x + 1.0) * 128.0).astype(int), pixels.astype(int))
    with pytest.raises(ValueError, match="integer pixels"):
        likelihood.dequantize(x, jax.random.key(0))


@pytest.mark.parametrize("kwargs, match", [
    ({"divergence": "trace"}, "divergence must be one of"),
    ({"divergence": "hutchinson"}, "needs key"),
    ({"divergence": "hutchinson", "key": jax.random.key(0), "num_probes": 0}, "num_probes"),
    ({"probe": "uniform"}, "probe must be one of"),
    ({"solver": "ddim"}, "solver must be one of"),
    ({"num_steps": 0}, "num_steps"),
    ({"t_end": 1.0}, "t_max"),
    ({"target": "noise", "path": "linear"}, "α"),
])
def test_bad_arguments_are_refused_before_compiling(kwargs, match):
    gmm = fg.analytic.GaussianMixture.circle()
    path = kwargs.pop("path", "vp_linear")
    target = kwargs.pop("target", "velocity")
    with pytest.raises(ValueError, match=match):
        likelihood.log_likelihood(gmm.model(fg.paths.get(path), target), path, jnp.zeros((2, 2)), target, **kwargs)
