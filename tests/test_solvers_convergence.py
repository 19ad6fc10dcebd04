"""Solver correctness against exact or high-accuracy solutions of the probability-flow ODE.

- Empirical convergence orders on the 2-D 8-Gaussian mixture against scipy DOP853 (rtol = atol = 1e-11).
- Single-Gaussian data: every deterministic solver against the closed-form flow map.
- Path independence: linear, VP and VE are reparameterisations of one ODE in (x/α, σ/α).
- DDIM on any path equals Euler on EDM's scaled ODE (Karras et al. 2022, eq. 4 and §3).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import flowgen as fg

pytestmark = pytest.mark.usefixtures("x64")

GMM = fg.analytic.GaussianMixture.circle()


def noise(n=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 2), jnp.float64)


@functools.cache
def dop853_reference(path_name, t_start, t_end, n=64):
    with jax.enable_x64(True):
        path = fg.paths.get(path_name)
        vel = jax.jit(GMM.model(path, "velocity"))
        x0 = np.asarray(path.sigma(t_start)) * np.asarray(noise(n))

        def f(t, y):
            return np.asarray(vel(jnp.asarray(y.reshape(-1, 2)), jnp.full((n,), t))).ravel()

        sol = scipy.integrate.solve_ivp(f, (t_start, t_end), x0.ravel(), method="DOP853", rtol=1e-11, atol=1e-11)
        assert sol.success
        return sol.y[:, -1].reshape(-1, 2)


def fitted_order(solver, path_name, target, grid, steps, t_start, t_end):
    path = fg.paths.get(path_name)
    ref = dop853_reference(path_name, t_start, t_end)
    errors, nfes = [], []
    for n in steps:
        x, info = fg.sample(GMM.model(path, target), path, target=target, solver=solver, grid=grid, num_steps=n,
                            t_start=t_start, t_end=t_end, noise=noise())
        errors.append(np.sqrt(np.mean((np.asarray(x) - ref) ** 2)))
        nfes.append(int(info["nfe"]))
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    return slope, errors


# (solver, path, target, grid, steps, expected order). ODE solvers on the linear path over the whole of [0, 1];
# exponential integrators on VP with DPM-Solver's logSNR grid. Step ranges are where each method is asymptotic.
# A solver is a name (default options) or a Solver instance.
ORDER_CASES = [
    ("euler", "linear", "velocity", "uniform", (32, 64, 128, 256), 1),
    ("midpoint", "linear", "velocity", "uniform", (32, 64, 128), 2),
    ("heun", "linear", "velocity", "uniform", (32, 64, 128), 2),
    ("rk4", "linear", "velocity", "uniform", (16, 32, 64), 4),
    ("ddim", "linear", "data", "uniform", (32, 64, 128, 256), 1),
    ("ddim", "vp_linear", "noise", "logsnr", (32, 64, 128, 256), 1),
    ("dpmpp_2m", "vp_linear", "noise", "logsnr", (32, 64, 128), 2),
    ("dpmpp_3m", "vp_linear", "noise", "logsnr", (64, 128, 256), 2),     # the published update: formally 2nd order
    pytest.param(fg.solvers.DPMSolverPP3M(taylor_exact_d2=True), "vp_linear", "noise", "logsnr", (32, 64, 128), 3,
                 id="dpmpp_3m_taylor_exact_d2-vp_linear-noise-logsnr"),
    ("unipc", "vp_linear", "noise", "logsnr", (32, 64, 128), 3),
    ("heun", "vp_linear", "noise", "uniform", (32, 64, 128), 2),
]


@pytest.mark.parametrize("solver,path_name,target,grid,steps,order", ORDER_CASES)
def test_convergence_order(solver, path_name, target, grid, steps, order):
    path = fg.paths.get(path_name)
    slope, errors = fitted_order(solver, path_name, target, grid, steps, path.t_min, path.t_max)
    assert abs(slope - order) <= 0.25, f"{solver}: fitted order {slope:.3f}, errors {errors}"
    assert fg.solvers.get(solver).order == order


def test_dopri5_meets_its_tolerance_and_counts_its_calls():
    path = fg.paths.get("linear")
    ref = dop853_reference("linear", 0.0, 1.0)
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        x, info = fg.sample(GMM.model(path, "velocity"), path, solver="dopri5", noise=noise(),
                            solver_options=dict(rtol=tol, atol=tol))
        errs.append(np.max(np.abs(np.asarray(x) - ref)))
        nfes.append(int(info["nfe"]))
        assert float(info["t_final"]) == 1.0
        accepted, rejected = int(info["num_accepted"]), int(info["num_rejected"])
        assert nfes[-1] == 2 + 6 * (accepted + rejected)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6, errs
    assert nfes[0] < nfes[1] < nfes[2]


SINGLE = fg.analytic.GaussianMixture([[1.5, -0.5]], 0.6)
# (steps, relative max error) on EDM's ρ-grid; the errors measured are 3-10x below these bounds on every path.
DETERMINISTIC = {
    "euler": (400, 3e-2), "midpoint": (100, 3e-3), "heun": (100, 3e-3), "rk4": (50, 1e-5), "ddim": (400, 1e-2),
    "dpmpp_2m": (100, 3e-3), "dpmpp_3m": (100, 1e-3), "unipc": (100, 1e-3), "edm_stochastic": (100, 3e-3),
}


@pytest.mark.parametrize("path_name", ["linear", "vp_linear", "ve", "trig", "vp_cosine", "sub_vp"])
@pytest.mark.parametrize("solver", list(DETERMINISTIC) + ["dopri5"])
def test_single_gaussian_flow_map(solver, path_name):
    """For Gaussian data the ODE solution is affine in the noise: compare with it (including the first step
    from α = 0, which EDM's sampler cannot take, so edm_stochastic starts at t = 1e-2 there)."""
    path = fg.paths.get(path_name)
    t_start = 1e-2 if solver == "edm_stochastic" and float(path.alpha(path.t_min)) == 0 else None
    kwargs = dict(solver_options=dict(rtol=1e-9, atol=1e-9)) if solver == "dopri5" else dict(
        num_steps=DETERMINISTIC[solver][0], grid="edm", t_start=t_start)
    x, info = fg.sample(SINGLE.model(path, "data"), path, target="data", solver=solver, noise=noise(), **kwargs)
    grid = np.asarray(info["grid"])
    exact = SINGLE.exact_flow_map(path, path.sigma(grid[0]) * noise(), grid[0], grid[-1])
    tol = 1e-6 if solver == "dopri5" else DETERMINISTIC[solver][1]
    scale = float(jnp.max(jnp.abs(exact)))
    assert np.max(np.abs(np.asarray(x) - exact)) <= tol * scale


def test_all_paths_solve_one_ode_in_edm_coordinates():
    """Started at the same σ/α from the same noise, linear, VP and VE end (after dividing by α) at the same point."""
    s_start, s_end = 40.0, 0.05
    finals = {}
    for name in ("linear", "vp_linear", "ve"):
        path = fg.paths.get(name)
        t0, t1 = (float(path.t_from_sigma_edm(s)) for s in (s_start, s_end))
        x, info = fg.sample(GMM.model(path, "velocity"), path, solver="dopri5", grid=np.array([t0, t1]),
                            noise=noise(), solver_options=dict(rtol=1e-10, atol=1e-10))
        np.testing.assert_allclose(path.sigma(t0) / path.alpha(t0), s_start, rtol=1e-9)
        finals[name] = np.asarray(x) / float(path.alpha(t1))
    np.testing.assert_allclose(finals["vp_linear"], finals["linear"], atol=1e-7)
    np.testing.assert_allclose(finals["ve"], finals["linear"], atol=1e-7)


@pytest.mark.parametrize("path_name", ["vp_linear", "ve", "vp_cosine", "linear"])
def test_ddim_is_euler_on_the_edm_ode(path_name):
    """x̃ = x/α, σ̃ = σ/α:  DDIM's update equals x̃' = x̃ + (σ̃' − σ̃)·(x̃ − D(x̃, σ̃))/σ̃ with D the data prediction."""
    path = fg.paths.get(path_name)
    t_start = max(path.t_min, 1e-2)
    grid = fg.solvers.grids.make_grid("edm", path, 12, t_start, path.t_max)
    model = GMM.model(path, "noise")
    x_ddim, _ = fg.sample(model, path, target="noise", solver="ddim", grid=grid, noise=noise())

    denoiser = GMM.model(path, "data")
    x_tilde = np.asarray(path.sigma_edm(grid[0])) * np.asarray(noise())
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        s0, s1 = float(path.sigma_edm(t0)), float(path.sigma_edm(t1))
        d = np.asarray(denoiser(jnp.asarray(float(path.alpha(t0)) * x_tilde), jnp.full((64,), t0)))
        x_tilde = x_tilde + (s1 - s0) * (x_tilde - d) / s0
    np.testing.assert_allclose(np.asarray(x_ddim) / float(path.alpha(grid[-1])), x_tilde, rtol=1e-10, atol=1e-10)
