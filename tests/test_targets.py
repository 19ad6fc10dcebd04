"""Prediction targets: exact conversions between every pair on every path, and the EDM preconditioner."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.paths import targets as T

pytestmark = pytest.mark.usefixtures("x64")

NAMED = [n for n in fg.paths.PATHS if n != "custom"]


def pair(path, n=16, d=3, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x_data = jax.random.normal(k1, (n, d)) * 2 + 1
    noise = jax.random.normal(k2, (n, d))
    t = jax.random.uniform(k3, (n,), minval=path.t_min, maxval=path.t_max)
    t = jnp.clip(t, path.t_min + 1e-3, path.t_max - 1e-3)
    return x_data, noise, t


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("source,dest", list(itertools.permutations(T.TARGETS, 2)))
def test_conversion_is_exact_for_every_pair(name, source, dest):
    path = fg.paths.get(name)
    x_data, noise, t = pair(path)
    x_t = path.sample(x_data, noise, t)
    src = T.target_from_pair(source, path, x_data, noise, t)
    dst = T.convert(src, source, dest, path, x_t, t)
    expected = T.target_from_pair(dest, path, x_data, noise, t)
    np.testing.assert_allclose(dst, expected, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(expected))))
    back = T.convert(dst, dest, source, path, x_t, t)
    np.testing.assert_allclose(back, src, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(src))))


def test_denoised_recovers_the_pair_and_scalar_time():
    path = fg.paths.get("vp_cosine")
    x_data, noise, _ = pair(path)
    t = 0.4
    x_t = path.sample(x_data, noise, jnp.full((x_data.shape[0],), t))
    for target in T.TARGETS:
        pred = T.target_from_pair(target, path, x_data, noise, jnp.full((x_data.shape[0],), t))
        d = T.to_denoised(target, pred, x_t, path.coefficients(t))
        np.testing.assert_allclose(d.data, x_data, rtol=1e-10)
        np.testing.assert_allclose(d.noise, noise, rtol=1e-9, atol=1e-10)


def test_velocity_is_the_time_derivative_of_the_path():
    path = fg.paths.get("vp_linear")
    x_data, noise, t = pair(path)
    u = T.target_from_pair("velocity", path, x_data, noise, t)
    dx_dt = jax.jvp(lambda t: path.sample(x_data, noise, t), (t,), (jnp.ones_like(t),))[1]
    np.testing.assert_allclose(u, dx_dt, rtol=1e-10)


def test_v_prediction_matches_salimans_ho_on_vp():
    """On VP (α² + σ² = 1): x̂ = α·x_t − σ·v and ε̂ = σ·x_t + α·v (Salimans & Ho 2022)."""
    path = fg.paths.get("vp_linear")
    x_data, noise, t = pair(path)
    x_t = path.sample(x_data, noise, t)
    v = T.target_from_pair("v", path, x_data, noise, t)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    np.testing.assert_allclose(a * x_t - s * v, x_data, rtol=1e-10)
    np.testing.assert_allclose(s * x_t + a * v, noise, rtol=1e-9, atol=1e-10)


def test_data_prediction_at_sigma_zero_uses_the_zero_noise_limit():
    path = fg.paths.get("linear")
    x = jnp.ones((2, 2))
    d = T.to_denoised("data", x, x, path.coefficients(1.0))
    assert np.all(np.isfinite(d.noise)) and np.all(d.noise == 0)
    grads = jax.grad(lambda p: T.to_denoised("data", p, x, path.coefficients(1.0)).noise.sum())(x)
    assert np.all(np.isfinite(grads))


def test_unknown_target_lists_the_valid_ones():
    path = fg.paths.get("linear")
    with pytest.raises(ValueError, match="unknown prediction target 'eps'.*velocity, noise, data, v, score"):
        T.convert(jnp.ones((1, 2)), "eps", "data", path, jnp.ones((1, 2)), 0.5)
