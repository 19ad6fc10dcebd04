"""EDM preconditioning: Table 1 coefficients, unit-variance design, exactness for Gaussian data, any path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.networks.precond import edm_coefficients, edm_precondition, edm_training_target

pytestmark = pytest.mark.usefixtures("x64")


def test_coefficients_match_table_1():
    s, sd = jnp.array([0.002, 0.5, 80.0]), 0.5
    c = edm_coefficients(s, sd)
    np.testing.assert_allclose(c.c_skip, sd**2 / (s**2 + sd**2))
    np.testing.assert_allclose(c.c_out, s * sd / np.sqrt(s**2 + sd**2))
    np.testing.assert_allclose(c.c_in, 1 / np.sqrt(s**2 + sd**2))
    np.testing.assert_allclose(c.c_noise, np.log(s) / 4)


@pytest.mark.parametrize("sigma_edm", [0.01, 0.5, 3.0, 80.0])
def test_network_input_and_target_have_unit_variance_for_unit_scaled_data(sigma_edm):
    sd = 0.5
    k1, k2 = jax.random.split(jax.random.key(0))
    x_data = sd * jax.random.normal(k1, (200_000, 1))
    noise = jax.random.normal(k2, x_data.shape)
    c = edm_coefficients(sigma_edm, sd)
    np.testing.assert_allclose(np.std(c.c_in * (x_data + sigma_edm * noise)), 1.0, rtol=0.01)
    np.testing.assert_allclose(np.std(edm_training_target(x_data, noise, sigma_edm, sd)), 1.0, rtol=0.01)


@pytest.mark.parametrize("path_name", ["linear", "vp_linear", "ve", "trig"])
def test_zero_network_is_the_exact_denoiser_of_centred_gaussian_data(path_name):
    """For x_data ~ N(0, σ_data²·I), E[x_data | x_t] = c_skip·x̃: F ≡ 0 is the exact data prediction on any path."""
    path = fg.paths.get(path_name)
    sd = 0.5
    gmm = fg.analytic.GaussianMixture([[0.0, 0.0]], sd)
    model = edm_precondition(lambda params, x, c_noise: jnp.zeros_like(x), path, sd)
    x = jax.random.normal(jax.random.key(1), (8, 2))
    t = jnp.linspace(max(path.t_min, 0.05), min(path.t_max, 0.95), 8)
    np.testing.assert_allclose(model(None, x, t), gmm.model(path, "data")(x, t), rtol=1e-10, atol=1e-12)


def test_preconditioned_model_samples_through_fg_sample():
    path = fg.paths.get("vp_linear")
    seen = []

    def network(params, x, c_noise, labels):
        seen.append(c_noise.shape)
        return params * x + labels[:, None]

    model = edm_precondition(network, path)
    x, info = fg.sample(model, path, target="data", solver="edm_stochastic", num_steps=4, key=jax.random.key(0),
                        shape=(3, 2), params=jnp.asarray(0.1), cond=jnp.array([0.0, 1.0, 2.0]))
    assert x.shape == (3, 2) and np.all(np.isfinite(x)) and seen[0] == (3,)
    with pytest.raises(ValueError, match="sigma_data"):
        edm_precondition(network, path, sigma_data=0.0)
