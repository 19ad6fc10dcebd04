"""EDM preconditioning: Table 1 coefficients, unit-variance design, exactness for Gaussian data, any path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.paths.precond import edm_coefficients, edm_precondition, edm_training_target

pytestmark = pytest.mark.usefixtures("x64")


def test_coefficients_match_table_1():
    s, sd = jnp.array([0.002, 0.5, 80.0]), 0.5
    c = edm_coefficients(s, sd)
    np.testing.assert_allclose(c.c_skip, sd**2 / (s**2 + sd**2))
    np.testing.assert_allclose(c.c_out, s * sd / np.sqrt(s**2 + sd**2))
    np.testing.assert_allclose(c.c_in, 1 / np.sqrt(s**2 + sd**2))
    np.testing.assert_allclose(c.c_noise, np.log(s) / 4)


SIGMAS = np.geomspace(0.002, 80.0, 25)


@pytest.mark.parametrize("sd", [0.5, 1.0, 0.1])
def test_coefficients_satisfy_the_design_criteria_of_appendix_b6(sd):
    """Karras et al. 2022, App. B.6: Var[c_in·x̃] = 1 (eq. 114), Var[target] = 1 (eq. 117 gives c_out), and c_skip
    minimises c_out (eq. 131), for data of std σ_data and x̃ = x_data + σ·noise (variance σ² + σ_data²)."""
    c = edm_coefficients(SIGMAS, sd)
    np.testing.assert_allclose(c.c_in**2 * (SIGMAS**2 + sd**2), 1.0, rtol=1e-13)
    # target = (x_data − c_skip·x̃)/c_out = ((1 − c_skip)·x_data − c_skip·σ·noise)/c_out has variance 1:
    np.testing.assert_allclose(((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * SIGMAS**2) / c.c_out**2, 1.0, rtol=1e-13)
    # c_skip is the stationary point of that variance, (1 − c)²σ_data² + c²σ², in c:
    np.testing.assert_allclose(-(1 - c.c_skip) * sd**2 + c.c_skip * SIGMAS**2, 0.0, atol=1e-15)
    # EDM's loss weight λ(σ) = (σ² + σ_data²)/(σ·σ_data)² is 1/c_out² (eq. 144): the effective weight is 1.
    np.testing.assert_allclose((SIGMAS**2 + sd**2) / (SIGMAS * sd) ** 2 * c.c_out**2, 1.0, rtol=1e-13)


def test_denoiser_loss_is_c_out_squared_times_the_effective_target_loss():
    """‖D(x̃; σ) − x_data‖² = c_out²·‖F − target‖² for any network output F (eq. 8 of Karras et al. 2022)."""
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x_data, noise, f = (jax.random.normal(k, (25, 3), jnp.float64) for k in (k1, k2, k3))
    sd = 0.5
    sigma = jnp.asarray(SIGMAS)
    c = edm_coefficients(sigma, sd)
    x_tilde = x_data + sigma[:, None] * noise
    denoised = c.c_skip[:, None] * x_tilde + c.c_out[:, None] * f
    target = edm_training_target(x_data, noise, sigma, sd)
    np.testing.assert_allclose(((denoised - x_data) ** 2).sum(-1), c.c_out**2 * ((f - target) ** 2).sum(-1),
                               rtol=1e-10)
    # The target is the one F output for which D is exactly the clean data.
    np.testing.assert_allclose(c.c_skip[:, None] * x_tilde + c.c_out[:, None] * target, x_data, atol=1e-12)


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


def exact_network(gmm, path, sd):
    """The raw network F* for which the preconditioned model is the exact posterior mean: from F's inputs
    (c_in·x̃, c_noise) recover σ̃ = exp(4·c_noise), x̃ and t, and return (D*(x̃; σ̃) − c_skip·x̃)/c_out."""
    exact = gmm.model(path, "data", conditional=True)

    def network(scale, x_in, c_noise, labels):
        sigma_edm = jnp.exp(4.0 * c_noise)
        c = edm_coefficients(sigma_edm, sd)
        x_tilde = x_in / c.c_in[:, None]
        t = path.t_from_sigma_edm(sigma_edm)
        denoised = exact(path.alpha(t)[:, None] * x_tilde, t, labels)
        return scale * (denoised - c.c_skip[:, None] * x_tilde) / c.c_out[:, None]

    return network


@pytest.mark.parametrize("path_name", ["vp_linear", "ve", "linear"])
def test_preconditioned_exact_network_samples_like_the_exact_model(path_name):
    """The wrapper passes params, labels and c_noise through unchanged: with F* inside, fg.sample gives the exact
    model's samples (and its data predictions agree at every time)."""
    path = fg.paths.get(path_name)
    gmm = fg.analytic.GaussianMixture.circle()
    sd = 0.5
    model = edm_precondition(exact_network(gmm, path, sd), path, sd)
    labels = jnp.arange(16) % 9                         # 8 = the null label: the whole mixture
    x = jax.random.normal(jax.random.key(1), (16, 2), jnp.float64)
    t = jnp.linspace(0.05, min(path.t_max, 0.95), 16)
    np.testing.assert_allclose(model(1.0, 3.0 * x, t, labels), gmm.model(path, "data", conditional=True)(
        3.0 * x, t, labels), rtol=1e-8, atol=1e-8)
    common = dict(target="data", solver="edm_stochastic", num_steps=8, noise=x, cond=labels, t_start=0.01)
    wrapped, info = fg.sample(model, path, params=jnp.asarray(1.0), **common)
    exact, _ = fg.sample(gmm.model(path, "data", conditional=True), path, **common)
    np.testing.assert_allclose(wrapped, exact, rtol=1e-8, atol=1e-8)
    assert int(info["nfe"]) == 2 * 8 - (1 if float(path.sigma(path.t_max)) == 0 else 0)
    halved, _ = fg.sample(model, path, params=jnp.asarray(0.5), **common)   # params reach the network
    assert not np.allclose(halved, exact)
    with pytest.raises(ValueError, match="sigma_data"):
        edm_precondition(exact_network(gmm, path, sd), path, sigma_data=0.0)
