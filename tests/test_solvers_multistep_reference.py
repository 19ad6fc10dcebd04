"""DPM-Solver++(2M, 3M) and UniPC (bh1, bh2) equal references written here from the published update equations.

The references are plain numpy float64 on the schedule values (α_i, σ_i) at the grid times, with the exact
8-Gaussian posterior mean (also written here); they share no code with flowgen's solvers. Rules for the order of
each step are those of the authors' released code, with its default options:

  DPM-Solver++ (Lu et al. 2022b, Algorithm 2 and the 3M update of §4.2 / App. B): orders 1, 2, … while the history
    fills; with ``lower_order_final`` and fewer than 10 steps, step i of N uses order ≤ N − i.
  UniPC (Zhao et al. 2023, eqs. (5)–(9), B(h) = h or e^h − 1): the same warm-up; ``lower_order_final`` caps step i
    at order N − i for every N; the corrector runs on every step but the last, so NFE = N.

  k-diffusion's ``sample_dpmpp_3m_sde`` at η = 0 (Crowson): the same 3M update, but its order-2 warm-up step adds
    φ₂·D1₀ (the exact integral of the linear term) where DPM-Solver++(2M) adds −½φ₁·D1₀, and no step is lowered
    at the end except the step into σ = 0.

A step into σ = 0 (h = ∞) is x = α·x̂ (k-diffusion's convention; the released codes never step into σ = 0).
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special

import flowgen as fg

pytestmark = pytest.mark.usefixtures("x64")

BETA_MIN, BETA_MAX = 0.1, 20.0            # VP linear schedule (Song et al. 2021), as in both released codes
T_EPS = 1e-3                              # their default end time (diffusion time s = 1 − t)
ANGLES = 2 * np.pi * np.arange(8) / 8
MEANS = 4.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
STD = 0.5


# --- the exact model and the schedules, in numpy ------------------------------------------------------------------
def data_prediction(x, alpha, sigma):
    """E[x_data | x_t] for the equal-weight 8-Gaussian mixture under x_t = α·x_data + σ·noise."""
    var = alpha**2 * STD**2 + sigma**2
    resid = x[:, None, :] - alpha * MEANS[None]                           # (B, K, d)
    resp = scipy.special.softmax(-0.5 * np.sum(resid**2, axis=-1) / var, axis=1)
    return np.sum(resp[..., None] * (MEANS[None] + alpha * STD**2 / var * resid), axis=1)


def vp_alpha_sigma(t):
    """α, σ of the VP linear schedule at flowgen time t (diffusion time s = 1 − t)."""
    s = 1.0 - np.asarray(t, np.float64)
    log_alpha = -0.25 * s**2 * (BETA_MAX - BETA_MIN) - 0.5 * s * BETA_MIN
    return np.exp(log_alpha), np.sqrt(-np.expm1(2.0 * log_alpha))


def vp_grid(kind, n):
    """DPM-Solver's 'time_uniform' and 'logSNR' spacings from s = 1 to s = ε, as flowgen times t = 1 − s."""
    if kind == "time_uniform":
        return 1.0 - np.linspace(1.0, T_EPS, n + 1)
    alpha, sigma = vp_alpha_sigma(np.array([0.0, 1.0 - T_EPS]))
    lam = np.linspace(*np.log(alpha / sigma), n + 1)
    log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)                     # α² = sigmoid(2λ)
    db = BETA_MAX - BETA_MIN
    s = -4.0 * log_alpha / (BETA_MIN + np.sqrt(BETA_MIN**2 - 4.0 * db * log_alpha))
    return 1.0 - s


def edm_grid_on_linear_path(n, rho=7.0):
    """Karras et al. 2022 eq. (5): n − 1 steps from σ_EDM = 80 to 0.002, then σ = 0; linear path t = 1/(1 + σ_EDM)."""
    frac = np.arange(n) / (n - 1)
    sig = (80.0 ** (1 / rho) + frac * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    return np.append(1.0 / (1.0 + sig), 1.0)


def linear_alpha_sigma(t):
    return np.asarray(t, np.float64), 1.0 - np.asarray(t, np.float64)


# --- references ---------------------------------------------------------------------------------------------------
def log_snr(alpha, sigma):
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)                               # +inf where σ = 0


def dpm_solver_pp(x, alpha, sigma, order, lower_order_final=True, d2_factor=1.0):
    """Multistep DPM-Solver++ of the given order; returns (x, NFE).

    h = λ_{i+1} − λ_i, r_k = h_{i−k}/h, φ₁ = e^{−h} − 1;  order 1:  x ← (σ_{i+1}/σ_i)·x − α_{i+1}·φ₁·x̂_i  (DDIM);
    order 2 (Alg. 2):  x̂_i is replaced by D = (1 + 1/(2r₀))·x̂_i − 1/(2r₀)·x̂_{i−1};
    order 3:  + α_{i+1}·(φ₂·D1 − c·φ₃·D2) with φ₂ = φ₁/h + 1, φ₃ = φ₂/h − ½ and the divided differences
    D1₀ = (x̂_i − x̂_{i−1})/r₀, D1₁ = (x̂_{i−1} − x̂_{i−2})/r₁, D1 = D1₀ + r₀(D1₀ − D1₁)/(r₀ + r₁),
    D2 = (D1₀ − D1₁)/(r₀ + r₁); c = 1 published, c = 2 the Taylor-exact weight.
    """
    n = len(alpha) - 1
    lam = log_snr(alpha, sigma)
    hist = []
    for i in range(n):
        hist.append(data_prediction(x, alpha[i], sigma[i]))
        k = min(order, i + 1)
        if lower_order_final and n < 10:
            k = min(k, n - i)
        if sigma[i + 1] == 0:
            x = alpha[i + 1] * hist[-1]
            continue
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        if k < 3:
            d = hist[-1]
            if k == 2:
                half_over_r = 0.5 * h / (lam[i] - lam[i - 1])
                d = (1.0 + half_over_r) * hist[-1] - half_over_r * hist[-2]
            x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * phi_1 * d
            continue
        r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
        d1_0 = (hist[-1] - hist[-2]) / r0
        d1_1 = (hist[-2] - hist[-3]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        x = (sigma[i + 1] / sigma[i] * x - alpha[i + 1] * phi_1 * hist[-1]
             + alpha[i + 1] * (phi_2 * d1 - d2_factor * phi_3 * d2))
    return x, n


def k_diffusion_3m(x, alpha, sigma):
    """k-diffusion's DPM-Solver++(3M) rule (``sample_dpmpp_3m_sde`` with η = 0), written from its equations in
    flowgen's (α, σ) variables (k-diffusion works in x/α with σ_EDM = σ/α; h is the same there); returns (x, NFE).

    Step i: x̂_i = D(x_i);  into σ = 0:  x = α·x̂_i.  Otherwise the first-order part
    x ← (σ_{i+1}/σ_i)·x − α_{i+1}·φ₁·x̂_i, plus α_{i+1}·φ₂·D1₀ once one earlier step exists (D1₀ = (x̂_i − x̂_{i−1})/r₀)
    or α_{i+1}·(φ₂·D1 − φ₃·D2) once two exist (D1, D2 as in ``dpm_solver_pp``); no order is lowered at the end.
    """
    n = len(alpha) - 1
    lam = log_snr(alpha, sigma)
    data, steps = [], []                                               # x̂ and h of the earlier finite steps
    for i in range(n):
        m = data_prediction(x, alpha[i], sigma[i])
        if sigma[i + 1] == 0:
            return alpha[i + 1] * m, i + 1
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        phi_2 = phi_1 / h + 1.0
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * phi_1 * m
        if len(steps) == 1:
            x = x + alpha[i + 1] * phi_2 * (m - data[-1]) * h / steps[-1]
        elif len(steps) >= 2:
            r0, r1 = steps[-1] / h, steps[-2] / h
            d1_0 = (m - data[-1]) / r0
            d1_1 = (data[-1] - data[-2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + alpha[i + 1] * (phi_2 * d1 - (phi_2 / h - 0.5) * d2)
        data.append(m)
        steps.append(h)
    return x, n


def phi_functions(z, count):
    """φ_1(z), …, φ_count(z):  φ_1 = (e^z − 1)/z,  φ_{j+1} = (φ_j − 1/j!)/z."""
    phis = [math.expm1(z) / z]
    for j in range(1, count):
        phis.append((phis[-1] - 1.0 / math.factorial(j)) / z)
    return phis


def unipc(x, alpha, sigma, order, variant, lower_order_final=True):
    """UniPC with data prediction (Zhao et al. 2023); returns (x, NFE).

    z = −h, B = z (bh1) or e^z − 1 (bh2), r_k = (λ_{i−k} − λ_i)/h (r = 1 for the new point),
    D_k = (x̂_{i−k} − x̂_i)/r_k, b_j = j!·z·φ_{j+1}(z)/B, R_{jk} = r_k^{j−1}.
    UniP-p:  x̃ = (σ_{i+1}/σ_i)·x − α_{i+1}·(e^z − 1)·x̂_i − α_{i+1}·B·Σ ρᵖ_k D_k  with R[:p−1,:p−1]·ρᵖ = b[:p−1]
    (ρᵖ = ½ for p = 2);  UniC-p: the same with Σ ρᶜ_k D_k + ρᶜ_p·(x̂(x̃) − x̂_i), R·ρᶜ = b (ρᶜ = ½ for p = 1).
    x̂(x̃) is the next step's x̂_i.
    """
    n = len(alpha) - 1
    lam = log_snr(alpha, sigma)
    hist = [data_prediction(x, alpha[0], sigma[0])]
    nfe = 1
    for i in range(n):
        k = min(order, i + 1)
        if lower_order_final:
            k = min(k, n - i)
        m_i = hist[-1]
        if sigma[i + 1] == 0:
            x_base = alpha[i + 1] * m_i
            k = 1
        else:
            h = lam[i + 1] - lam[i]
            z = -h
            x_base = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * math.expm1(z) * m_i
            big_b = z if variant == "bh1" else math.expm1(z)
            phis = phi_functions(z, k + 1)
            b = np.array([math.factorial(j) * z * phis[j] / big_b for j in range(1, k + 1)])
            r = np.array([(lam[i - j] - lam[i]) / h for j in range(1, k)] + [1.0])
            big_r = np.stack([r ** (j - 1) for j in range(1, k + 1)])
            diffs = [(hist[-1 - j] - m_i) / r[j - 1] for j in range(1, k)]
        x_pred = x_base
        if k == 2:
            x_pred = x_base - alpha[i + 1] * big_b * 0.5 * diffs[0]
        elif k == 3:
            rho_p = np.linalg.solve(big_r[:-1, :-1], b[:-1])
            x_pred = x_base - alpha[i + 1] * big_b * (rho_p[0] * diffs[0] + rho_p[1] * diffs[1])
        if i == n - 1:
            return x_pred, nfe
        m_next = data_prediction(x_pred, alpha[i + 1], sigma[i + 1])
        nfe += 1
        rho_c = np.array([0.5]) if k == 1 else np.linalg.solve(big_r, b)
        corr = rho_c[-1] * (m_next - m_i) + sum(rho_c[j] * diffs[j] for j in range(k - 1))
        x = x_base - alpha[i + 1] * big_b * corr
        hist.append(m_next)


# --- flowgen against the references -------------------------------------------------------------------------------
GMM = fg.analytic.GaussianMixture.circle()


def noise(n=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 2), jnp.float64)


def flowgen_sample(solver, path_name, grid, options):
    path = fg.paths.get(path_name)
    x, info = fg.sample(GMM.model(path, "noise"), path, target="noise", solver=solver, grid=grid, noise=noise(),
                        solver_options=options)
    return np.asarray(x), int(info["nfe"])


def problem(grid_kind, n):
    """(path name, grid times, α, σ) for a grid kind and step count."""
    if grid_kind == "edm":
        ts = edm_grid_on_linear_path(n)
        return "linear", ts, *linear_alpha_sigma(ts)
    ts = vp_grid(grid_kind, n)
    return "vp_linear", ts, *vp_alpha_sigma(ts)


# (flowgen solver, options, reference); the first four are the defaults of flowgen and of the released codes.
DEFAULTS = {
    "dpmpp_2m": ("dpmpp_2m", {}, lambda x, a, s: dpm_solver_pp(x, a, s, 2)),
    "dpmpp_3m": ("dpmpp_3m", {}, lambda x, a, s: dpm_solver_pp(x, a, s, 3)),
    "unipc": ("unipc", {}, lambda x, a, s: unipc(x, a, s, 2, "bh1")),
    "unipc_order3": ("unipc", {"solver_order": 3}, lambda x, a, s: unipc(x, a, s, 3, "bh1")),
}
OPTIONS = {
    "dpmpp_2m_no_lower_order_final": ("dpmpp_2m", {"lower_order_final": False},
                                      lambda x, a, s: dpm_solver_pp(x, a, s, 2, lower_order_final=False)),
    "dpmpp_3m_taylor_exact_d2": ("dpmpp_3m", {"taylor_exact_d2": True},
                                 lambda x, a, s: dpm_solver_pp(x, a, s, 3, d2_factor=2.0)),
    "unipc_bh2": ("unipc", {"variant": "bh2"}, lambda x, a, s: unipc(x, a, s, 2, "bh2")),
    "unipc_order3_bh2": ("unipc", {"solver_order": 3, "variant": "bh2"}, lambda x, a, s: unipc(x, a, s, 3, "bh2")),
    "unipc_order3_no_lower_order_final": ("unipc", {"solver_order": 3, "lower_order_final": False},
                                          lambda x, a, s: unipc(x, a, s, 3, "bh1", lower_order_final=False)),
}


def check_against_reference(case, grid_kind, n):
    solver, options, reference = case
    path_name, ts, alpha, sigma = problem(grid_kind, n)
    x_ref, nfe_ref = reference(sigma[0] * np.asarray(noise()), alpha, sigma)
    x, nfe = flowgen_sample(solver, path_name, ts, options)
    assert nfe == nfe_ref == n
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-10)


# 5 steps lower the final orders everywhere, 12 only in UniPC (not in DPM-Solver++, whose rule is N < 10), 50 shows
# UniPC's rule at every step count; "edm" ends with a step into σ = 0.
@pytest.mark.parametrize("n", [5, 12, 50])
@pytest.mark.parametrize("grid_kind", ["time_uniform", "logSNR", "edm"])
@pytest.mark.parametrize("case", list(DEFAULTS))
def test_defaults_equal_the_published_updates(case, grid_kind, n):
    check_against_reference(DEFAULTS[case], grid_kind, n)


@pytest.mark.parametrize("grid_kind,n", [("time_uniform", 9), ("edm", 20)])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_options_equal_the_published_updates(case, grid_kind, n):
    check_against_reference(OPTIONS[case], grid_kind, n)


@pytest.mark.parametrize("kind,name", [("time_uniform", "uniform"), ("logSNR", "logsnr")])
def test_reference_grids_are_flowgens_named_grids(kind, name):
    ts = fg.solvers.grids.make_grid(name, fg.paths.get("vp_linear"), 20)
    np.testing.assert_allclose(ts, vp_grid(kind, 20), rtol=0, atol=1e-12)
    ts = fg.solvers.grids.make_grid("edm", fg.paths.get("linear"), 20)
    np.testing.assert_allclose(ts, edm_grid_on_linear_path(20), rtol=0, atol=1e-12)


@functools.lru_cache(maxsize=1)
def exact_from_edm_start():
    """The exact ODE solution from σ_EDM = 80 (the start of every EDM grid here) to σ = 0: DOP853 on
    dx̃/du = x̃ − D(x̃, σ) with x̃ = x/α and u = log σ_EDM, from σ_EDM = 80 to 1e-10 (x̃ has converged to its σ = 0
    limit there)."""
    x_start = 80.0 * np.asarray(noise())

    def velocity(u, y):
        x = y.reshape(-1, 2)
        return (x - data_prediction(x, 1.0, math.exp(u))).ravel()

    sol = scipy.integrate.solve_ivp(velocity, (math.log(80.0), math.log(1e-10)), x_start.ravel(), method="DOP853",
                                    rtol=1e-11, atol=1e-11)
    return sol.y[:, -1].reshape(-1, 2)


def test_published_3m_is_more_accurate_than_taylor_at_16_and_32_edm_steps():
    """The docstring's claim, against the exact ODE solution."""
    exact = exact_from_edm_start()
    for n in (16, 32):
        _, ts, _, _ = problem("edm", n)
        rms = {}
        for taylor in (False, True):
            x, _ = flowgen_sample("dpmpp_3m", "linear", ts, {"taylor_exact_d2": taylor})
            rms[taylor] = np.sqrt(np.mean((x - exact) ** 2))
        assert rms[False] < 0.8 * rms[True], (n, rms)


K_DIFFUSION = {"second_order": "taylor", "lower_order_final": False}    # dpmpp_3m's options for k-diffusion's rule


@pytest.mark.parametrize("n", [8, 12, 16, 32])
def test_k_diffusion_options_equal_k_diffusions_3m_on_karras_grids_into_sigma_zero(n):
    """k-diffusion's ``get_sigmas_karras(n, 0.002, 80)`` (n σ's, then 0) is the edm grid here; measured max
    difference 1e-13 (without ``second_order="taylor"``: 1.3e-4 after the second step, 1e-4 / 2e-5 / 1.4e-6 at the
    end at 12 / 16 / 32 steps)."""
    path_name, ts, alpha, sigma = problem("edm", n)
    x_ref, nfe_ref = k_diffusion_3m(sigma[0] * np.asarray(noise()), alpha, sigma)
    x, nfe = flowgen_sample("dpmpp_3m", path_name, ts, K_DIFFUSION)
    assert nfe == nfe_ref == n
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)


def test_dpm_solver_and_k_diffusion_differ_in_the_order_2_warm_up_step_only():
    """Without lowered final orders the two rules share the first step, every third-order step and the step into
    σ = 0 (x = α·x̂ in both); the second step (order 2) is DPM-Solver++(2M)'s −½φ₁·D1₀ in one, φ₂·D1₀ in the other."""
    path_name, ts, alpha, sigma = problem("edm", 12)
    for steps, options, same in [(1, {"lower_order_final": False}, True),
                                 (2, {"lower_order_final": False}, False),
                                 (2, K_DIFFUSION, True)]:
        x_ref, _ = k_diffusion_3m(sigma[0] * np.asarray(noise()), alpha[:steps + 1], sigma[:steps + 1])
        x, _ = flowgen_sample("dpmpp_3m", path_name, ts[:steps + 1], options)
        assert (np.max(np.abs(x - x_ref)) < 1e-12) == same, (steps, options, np.max(np.abs(x - x_ref)))
    # One step into σ = 0 from the same state: the same in every rule.
    x_ref, _ = k_diffusion_3m(sigma[-2] * np.asarray(noise()), alpha[-2:], sigma[-2:])
    for options in ({}, K_DIFFUSION):
        x, _ = flowgen_sample("dpmpp_3m", path_name, ts[-2:], options)
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)


def test_default_order_rule_is_the_more_accurate_on_karras_grids_into_sigma_zero():
    """Why dpmpp_3m keeps DPM-Solver's rule (midpoint warm-up, lowered final orders below 10 steps) as its default.
    rms error against the exact solution, default / k-diffusion's rule (32 samples): 3 steps 1.13 / 2.29, 4: 0.50 /
    2.42, 5: 3.08 / 4.16, 6: 2.88 / 3.24, 7: 1.40 / 1.08, 8: 1.00 / 0.55, 9: 0.62 / 0.64; from 10 steps on the two
    agree to 4 digits (0.6250 / 0.6249 at 10, 0.3972 at 12, 0.08312 at 16)."""
    exact = exact_from_edm_start()
    rms = {}
    for n in (3, 4, 5, 6, 7, 8, 9, 12, 16):
        _, ts, _, _ = problem("edm", n)
        for rule, options in (("default", {}), ("k", K_DIFFUSION)):
            x, _ = flowgen_sample("dpmpp_3m", "linear", ts, options)
            rms[rule, n] = np.sqrt(np.mean((x - exact) ** 2))
    short = range(3, 10)
    assert sum(rms["default", n] < rms["k", n] for n in short) >= 5, rms
    assert sum(rms["default", n] for n in short) < 0.8 * sum(rms["k", n] for n in short), rms
    for n in (12, 16):
        assert abs(rms["default", n] / rms["k", n] - 1) < 1e-3, rms


@pytest.mark.parametrize("solver,options", [
    ("unipc", {"variant": "bh3"}),
    ("unipc", {"lower_order_final": "yes"}),
    ("dpmpp_2m", {"lower_order_final": 1}),
    ("dpmpp_3m", {"taylor_exact_d2": "taylor"}),
    ("dpmpp_3m", {"second_order": "heun"}),
])
def test_bad_options_are_refused_by_name(solver, options):
    (name, value), = options.items()
    with pytest.raises(ValueError, match=re.escape(f"{name} must be") + ".*" + re.escape(f"got {value!r}")):
        fg.solvers.get(solver, **options)
