"""Stochastic samplers: sample mean, covariance and mixture weights converge to the true ones as NFE grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg

pytestmark = pytest.mark.usefixtures("x64")

GMM = fg.analytic.GaussianMixture.circle()
N = 20_000


def errors(x):
    x = np.asarray(x)
    nearest = np.argmin(((x[:, None] - GMM.means[None]) ** 2).sum(-1), axis=1)
    weights = np.bincount(nearest, minlength=GMM.num_components) / len(x)
    return (np.abs(x.mean(0) - GMM.mean()).max(), np.abs(np.cov(x.T) - GMM.covariance()).max(),
            np.abs(weights - GMM.weights).max())


STOCHASTIC = [
    ("euler_maruyama", {}),
    ("pc", {}),
    ("edm_stochastic", {"s_churn": 20.0}),
    ("ddim", {"eta": 1.0}),
]


@pytest.mark.parametrize("path_name", ["linear", "vp_linear", "ve"])
@pytest.mark.parametrize("solver,options", STOCHASTIC)
def test_stochastic_sampler_converges_in_distribution(solver, options, path_name):
    path = fg.paths.get(path_name)
    z = jax.random.normal(jax.random.key(0), (N, 2), jnp.float64)
    cov_errors = []
    for steps in (8, 128):
        x, info = fg.sample(GMM.model(path, "noise"), path, target="noise", solver=solver, num_steps=steps, noise=z,
                            key=jax.random.key(1), t_start=max(path.t_min, 1e-2), solver_options=options)
        mean_err, cov_err, weight_err = errors(x)
        cov_errors.append(cov_err)
    # Monte-Carlo standard errors at N = 20 000: mean ≈ 0.02, covariance ≈ 0.08, weights ≈ 0.0023.
    assert cov_errors[1] < 0.5 * cov_errors[0], cov_errors
    assert cov_errors[1] < 0.25 and mean_err < 0.1 and weight_err < 0.012, (cov_errors, mean_err, weight_err)


def test_euler_maruyama_with_sigma_diffusion_and_zero_diffusion():
    path = fg.paths.get("linear")
    z = jax.random.normal(jax.random.key(0), (N, 2), jnp.float64)
    x, _ = fg.sample(GMM.model(path, "velocity"), path, solver="euler_maruyama", num_steps=256, noise=z,
                     key=jax.random.key(2), solver_options=dict(diffusion="sigma"))
    _, cov_err, weight_err = errors(x)
    assert cov_err < 0.25 and weight_err < 0.012
    # w = 0 is the probability-flow ODE: Euler–Maruyama is then exactly Euler.
    em, _ = fg.sample(GMM.model(path, "velocity"), path, solver="euler_maruyama", num_steps=16, noise=z[:64],
                      key=jax.random.key(2), solver_options=dict(diffusion="zero"))
    euler, _ = fg.sample(GMM.model(path, "velocity"), path, solver="euler", num_steps=16, noise=z[:64])
    np.testing.assert_allclose(em, euler, rtol=1e-12)


def test_edm_without_churn_is_deterministic_heun_and_pc_without_corrector_is_euler_maruyama():
    path = fg.paths.get("vp_linear")
    z = jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)
    model = GMM.model(path, "noise")
    a, _ = fg.sample(model, path, target="noise", solver="edm_stochastic", num_steps=10, noise=z, key=jax.random.key(1))
    b, _ = fg.sample(model, path, target="noise", solver="edm_stochastic", num_steps=10, noise=z, key=jax.random.key(2))
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
    pc, _ = fg.sample(model, path, target="noise", solver="pc", num_steps=10, noise=z, key=jax.random.key(3),
                      solver_options=dict(corrector_steps=0))
    em, _ = fg.sample(model, path, target="noise", solver="euler_maruyama", num_steps=10, noise=z,
                      key=jax.random.key(3))
    np.testing.assert_array_equal(pc, em)          # the same steps with the same noise
    corrected, _ = fg.sample(model, path, target="noise", solver="pc", num_steps=10, noise=z, key=jax.random.key(3))
    assert not np.allclose(corrected, em)


def test_diffusion_scale_multiplies_a_callable_diffusion():
    """w(t) given as a callable is scaled like the named kinds: scale 0 is the ODE, scale s is the callable s·w."""
    path = fg.paths.get("vp_linear")
    z = jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)
    model = GMM.model(path, "noise")

    def w(t):
        return 0.5 + t

    def em(diffusion, scale):
        return fg.sample(model, path, target="noise", solver="euler_maruyama", num_steps=12, noise=z,
                         key=jax.random.key(4), solver_options=dict(diffusion=diffusion, diffusion_scale=scale))[0]

    euler, _ = fg.sample(model, path, target="noise", solver="euler", num_steps=12, noise=z)
    np.testing.assert_allclose(em(w, 0.0), euler, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(em(w, 2.5), em(lambda t: 2.5 * w(t), 1.0), rtol=1e-12, atol=1e-12)
    assert not np.allclose(em(w, 2.5), em(w, 1.0))


def test_stochastic_samplers_are_reproducible_from_the_key():
    path = fg.paths.get("linear")
    model = GMM.model(path, "velocity")
    run = lambda seed: fg.sample(model, path, solver="ddim", num_steps=5, key=jax.random.key(seed),  # noqa: E731
                                 shape=(8, 2), solver_options=dict(eta=1.0))[0]
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
