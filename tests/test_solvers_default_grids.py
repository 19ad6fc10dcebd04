"""Each solver's default grid is sensible on every path: the data-prediction multistep solvers (dpmpp_2m, dpmpp_3m,
unipc) space their steps in log-SNR where λ is finite at the end (VP, VE) and uniformly in time where σ reaches 0
(linear, trig), whose last λ-interval is infinite. Checked on the exact 8-Gaussian mixture against an accurate
dopri5 solve of the same ODE from the same start."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.solvers import grids

pytestmark = pytest.mark.usefixtures("x64")

GMM = fg.analytic.GaussianMixture.circle()
MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "unipc")
TO_DATA = ("linear", "trig")                   # σ(t_max) = 0


def noise(n=128):
    return jax.random.normal(jax.random.key(0), (n, 2), jnp.float64)


def exact(path, t_start):
    x, _ = fg.sample(GMM.model(path, "velocity"), path, "velocity", "dopri5", grid=np.array([t_start, path.t_max]),
                     noise=noise(), solver_options={"rtol": 1e-10, "atol": 1e-10, "max_steps": 100_000})
    return np.asarray(x)


def rms_error(path, solver, grid=None, num_steps=None):
    x, info = fg.sample(GMM.model(path, "velocity"), path, "velocity", solver, grid=grid, num_steps=num_steps,
                        noise=noise())
    return float(np.sqrt(np.mean((np.asarray(x) - exact(path, float(info["grid"][0]))) ** 2)))


@pytest.mark.parametrize("path_name", TO_DATA)
@pytest.mark.parametrize("solver", MULTISTEP)
def test_no_model_call_is_spent_where_the_sample_is_already_data(solver, path_name):
    """With 2 steps the logsnr grid on the linear path is [0.0123, 0.998, 1]; the default puts the middle call in
    the middle of the interval."""
    path = fg.paths.get(path_name)
    _, info = fg.sample(GMM.model(path, "velocity"), path, "velocity", solver, num_steps=2, noise=noise(4))
    ts = np.asarray(info["grid"])
    assert ts[-1] == 1.0 and 0.4 < ts[1] < 0.6, ts


@pytest.mark.parametrize("path_name", TO_DATA)
@pytest.mark.parametrize("solver", MULTISTEP)
def test_default_grid_beats_the_clipped_logsnr_grid_into_sigma_zero(solver, path_name):
    """Measured rms errors (linear path, 128 samples): logsnr 2.78 / 0.74 / 0.41–1.8 at 2 / 4 / 8 steps; the
    default 0.88 / 0.18–0.51 / 0.06–0.11 (grids.py)."""
    path = fg.paths.get(path_name)
    for n in (2, 4, 8):
        default = rms_error(path, solver, num_steps=n)
        clipped = rms_error(path, solver, grid="logsnr", num_steps=n)
        assert default < 0.7 * clipped, (n, default, clipped)
    assert rms_error(path, solver, num_steps=2) < 1.0


@pytest.mark.parametrize("path_name", ["vp_linear", "vp_cosine", "sub_vp", "ve"])
@pytest.mark.parametrize("solver", MULTISTEP)
def test_default_grid_is_logsnr_where_log_snr_is_finite(solver, path_name):
    path = fg.paths.get(path_name)
    _, info = fg.sample(GMM.model(path, "noise"), path, "noise", solver, num_steps=6, noise=noise(4))
    np.testing.assert_array_equal(np.asarray(info["grid"]), grids.make_grid("logsnr", path, 6))


@pytest.mark.parametrize("path_name", TO_DATA)
def test_logsnr_or_uniform_into_sigma_zero_is_time_uniform_from_the_logsnr_start(path_name):
    path = fg.paths.get(path_name)
    for n in (1, 2, 7):
        ts = grids.make_grid("logsnr_or_uniform", path, n)
        start = grids.make_grid("logsnr", path, n)[0]            # σ/α = 80: α = 0 at t = 0
        np.testing.assert_allclose(ts, np.linspace(start, 1.0, n + 1), rtol=0, atol=1e-15)
        assert ts[-1] == 1.0
    # An explicit interval is kept: both ends finite in λ, so the grid is log-SNR uniform there.
    ts = grids.make_grid("logsnr_or_uniform", path, 5, t_start=0.1, t_end=0.9)
    np.testing.assert_array_equal(ts, grids.make_grid("logsnr", path, 5, t_start=0.1, t_end=0.9))


@pytest.mark.parametrize("solver", ["euler", "heun", "ddim", "edm_stochastic", "pc"])
def test_other_solvers_keep_their_default_grids(solver):
    cls = fg.solvers.SOLVERS[solver]
    assert cls.default_grid == {"edm_stochastic": "edm"}.get(solver, "uniform")
