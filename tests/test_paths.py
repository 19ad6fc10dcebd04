"""Paths: closed-form derivatives vs jax.jvp, λ inverses, SDE coefficients, priors, marginals, adapters."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import flowgen as fg
from flowgen.paths import conventions
from flowgen.paths.schedules import Path, _derivative

pytestmark = pytest.mark.usefixtures("x64")

#: Every named path at its defaults, plus Lipman et al.'s linear path with σ_min = 0.1 (Tong et al.'s "FM").
NAMED = [n for n in fg.paths.PATHS if n != "custom"] + ["linear_sigma_min"]


def named(name):
    return fg.paths.get("linear", sigma_min=0.1) if name == "linear_sigma_min" else fg.paths.get(name)


def custom_path():
    return fg.paths.AffinePath(alpha_fn=lambda t: t**2, sigma_fn=lambda t: 1 - t, t_min=0.0, t_max=1.0)


def interior(path, n=41):
    return jnp.linspace(path.t_min, path.t_max, n)[1:-1]


@pytest.mark.parametrize("name", NAMED)
def test_closed_form_derivatives_match_jvp(name):
    path = named(name)
    t = interior(path)
    np.testing.assert_allclose(path.d_alpha(t), _derivative(path.alpha, t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(path.d_sigma(t), _derivative(path.sigma, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMED + ["custom"])
def test_log_snr_inverse_round_trip(name):
    path = custom_path() if name == "custom" else named(name)
    t = interior(path)
    lam = path.log_snr(t)
    assert np.all(np.diff(np.asarray(lam)) > 0), "λ must increase with t"
    np.testing.assert_allclose(path.t_from_log_snr(lam), t, atol=1e-9)
    # The generic bisection agrees with every closed form.
    np.testing.assert_allclose(Path.t_from_log_snr(path, lam), t, atol=1e-9)
    np.testing.assert_allclose(path.t_from_sigma_edm(path.sigma_edm(t)), t, atol=1e-9)


@pytest.mark.parametrize("name", NAMED)
def test_sde_coefficients_preserve_the_marginals(name):
    """Forward SDE dx = f·x ds + g dW in s = 1 − t has mean α·x_data and variance σ² iff
    dα/ds = f·α and dσ²/ds = 2f·σ² + g²."""
    path = named(name)
    t = interior(path)
    f, g2 = path.drift_coefficient(t), path.diffusion_sq(t)
    a, s, da, ds = path.coefficients(t)
    np.testing.assert_allclose(-da, f * a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(-2 * s * ds, 2 * f * s**2 + g2, rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(g2) >= 0)


def test_known_values():
    vp = fg.paths.get("vp_linear")
    # score_sde: log mean coeff = −¼ s²(β1 − β0) − ½ s β0 at s = 1.
    np.testing.assert_allclose(vp.alpha(0.0), math.exp(-0.25 * 19.9 - 0.05), rtol=1e-12)
    np.testing.assert_allclose(vp.alpha(0.3) ** 2 + vp.sigma(0.3) ** 2, 1.0, rtol=1e-12)
    ve = fg.paths.get("ve")
    np.testing.assert_allclose([ve.sigma(0.0), ve.sigma(1.0)], [50.0, 0.01], rtol=1e-12)
    np.testing.assert_allclose(ve.prior_std(), 50.0)
    lin = fg.paths.get("linear")
    np.testing.assert_allclose([lin.alpha(0.25), lin.sigma(0.25)], [0.25, 0.75])
    trig = fg.paths.get("trig")
    assert float(trig.sigma(1.0)) == 0.0 and float(trig.alpha(0.0)) == 0.0
    sub = fg.paths.get("sub_vp")
    np.testing.assert_allclose(sub.sigma(0.4), 1 - vp.alpha(0.4) ** 2, rtol=1e-12)
    cos = fg.paths.get("vp_cosine")
    np.testing.assert_allclose(cos.alpha(1.0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cos.alpha(0.5) ** 2 + cos.sigma(0.5) ** 2, 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "ve", "vp_linear"])
def test_prior_log_prob_matches_scipy(name):
    path = named(name)
    x = jax.random.normal(jax.random.key(0), (5, 3)) * 2.0
    std = float(path.prior_std())
    expected = scipy.stats.norm(0, std).logpdf(np.asarray(x)).sum(-1)
    np.testing.assert_allclose(path.prior_log_prob(x), expected, rtol=1e-10)
    assert path.prior_sample(jax.random.key(1), (4, 3)).shape == (4, 3)


@pytest.mark.parametrize("name", NAMED)
def test_path_marginal_moments_against_monte_carlo(name):
    """x_t = α·x_data + σ·noise for mixture data: mean α·m and covariance α²·C + σ²·I."""
    path = named(name)
    gmm = fg.analytic.GaussianMixture.circle()
    n = 200_000
    k1, k2 = jax.random.split(jax.random.key(3))
    x_data = gmm.sample(k1, n, dtype=jnp.float64)
    noise = jax.random.normal(k2, x_data.shape, jnp.float64)
    t = 0.5 * (path.t_min + path.t_max)
    x_t = np.asarray(path.sample(x_data, noise, jnp.full((n,), t)))
    a, s = float(path.alpha(t)), float(path.sigma(t))
    cov = a**2 * gmm.covariance() + s**2 * np.eye(2)
    se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_allclose(x_t.mean(0), a * gmm.mean(), atol=5 * se.max())
    np.testing.assert_allclose(np.cov(x_t.T), cov, atol=5 * np.sqrt(2 / n) * cov.max())


def test_get_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown path 'vp'.*linear.*vp_linear"):
        fg.paths.get("vp")
    with pytest.raises(ValueError, match="beta_min"):
        fg.paths.get("vp_linear", beta=3)
    with pytest.raises(ValueError, match="t_min"):
        fg.paths.get("linear", t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="callables"):
        fg.paths.AffinePath()
    assert fg.paths.get(fg.paths.get("ve")) == fg.paths.VEPath()


@pytest.mark.parametrize("name", ["linear", "vp_linear", "ve", "trig"])
def test_edm_adapter_round_trip(name):
    path = named(name)
    t = interior(path, 9)
    x = jax.random.normal(jax.random.key(0), (t.shape[0], 3))
    x_edm, s_edm = conventions.to_edm(path, x, t)
    np.testing.assert_allclose(s_edm, path.sigma(t) / path.alpha(t), rtol=1e-12)
    x_back, t_back = conventions.from_edm(path, x_edm, s_edm)
    np.testing.assert_allclose(t_back, t, atol=1e-9)
    np.testing.assert_allclose(x_back, x, rtol=1e-8)
    # x_EDM = x_data + σ_EDM·noise for a path sample.
    x_data, noise = jnp.ones((t.shape[0], 3)), jnp.full((t.shape[0], 3), 0.5)
    x_edm, s_edm = conventions.to_edm(path, path.sample(x_data, noise, t), t)
    np.testing.assert_allclose(x_edm, x_data + s_edm[:, None] * noise, rtol=1e-10)


def test_score_sde_and_diffusers_time_adapters():
    t = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(conventions.from_score_sde_time(conventions.to_score_sde_time(t)), t)
    vp = fg.paths.get("vp_linear")
    # score_sde's VP at diffusion time s equals ours at t = 1 − s.
    s = 0.3
    np.testing.assert_allclose(vp.alpha(conventions.from_score_sde_time(s)), math.exp(-0.25 * s**2 * 19.9 - 0.05 * s))
    lin = fg.paths.get("linear")
    sig = conventions.to_diffusers_sigma(t)
    # diffusers: x = (1 − σ)·x_data + σ·noise.
    np.testing.assert_allclose(lin.alpha(t), 1 - sig)
    np.testing.assert_allclose(lin.sigma(t), sig)
    np.testing.assert_allclose(conventions.from_diffusers_sigma(sig), t)
