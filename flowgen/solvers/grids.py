"""Time grids t₀ < t₁ < … < t_N for fixed-step samplers (built on the host, in float64, before any tracing).

    uniform   t_i = t_start + (i/N)·(t_end − t_start)
    logsnr    uniform in λ = log(α/σ) (DPM-Solver's "logSNR" spacing; Lu et al. 2022)
    edm       Karras et al. 2022, eq. (5), in EDM's noise level σ_EDM = σ/α:
              σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i < N, and σ_N = 0;  ρ = 7
    logsnr_or_uniform
              logsnr where λ is finite at the end; where σ(t_end) = 0 (linear, trig), uniform in t from the
              logsnr grid's start to t_end (the default of the data-prediction multistep solvers, see below)

An end where λ is infinite (α = 0 at the start, σ = 0 at the end) cannot be spaced in λ or σ_EDM. There the grid
uses EDM's range instead: the start moves to σ_EDM = 80 and, at an end with σ = 0, N − 1 steps are spaced down to
σ_EDM = 0.002 and the exact end is appended (EDM's final step to σ = 0).

Why ``logsnr_or_uniform``: on a path whose σ reaches 0 the last λ-interval is infinite, so a λ-spaced grid must clip
it (here at σ_EDM = 0.002) and spends its N − 1 finite steps over λ ∈ [−4.4, 6.2]. At few steps the points land
where the sample is already data: with 2 steps on the linear path the logsnr grid is [0.0123, 0.998, 1], and the
second model call is wasted. Time-uniform grids are what flow-model codes use (diffusers' and Wan's flow schedulers
space σ = 1 − t uniformly, optionally shifted). Measured on the exact 8-Gaussian mixture (float64, 256 samples, rms
error against a dopri5 solve at rtol = atol = 1e-11 from the same start), linear path, at 2 / 4 / 8 steps:

    dpmpp_2m   logsnr 2.78 / 0.745 / 0.405     uniform in t from 1/81: 0.877 / 0.184 / 0.055
    dpmpp_3m   logsnr 2.78 / 0.745 / 0.433                             0.877 / 0.184 / 0.106
    unipc      logsnr 2.78 / 8.24  / 1.80                              0.877 / 0.512 / 0.100

(the trig path and logSNR-uniform grids that drop the last finite point instead of clipping it: docs/solvers.md).
Starting at t = 0 instead of at σ_EDM = 80 (t = 1/81 on the linear path) is mixed (dpmpp_2m 0.926 /
0.256 / 0.073, worse; unipc 0.926 / 0.246 / 0.062, better) and would refuse noise- and score-prediction models, whose x̂
is undefined where α = 0.
"""

from __future__ import annotations

import math

import numpy as np

from flowgen.paths.schedules import Path, host_eval

GRIDS = ("uniform", "logsnr", "edm", "logsnr_or_uniform")
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}")
    return int(num_steps)


def _spaced_ends(path: Path, t_start: float, t_end: float):
    """λ at both ends (infinite ends replaced by EDM's range), whether the start is exact, and whether the exact
    end must be appended after the spaced points."""
    lam0, lam1 = (float(v) for v in host_eval(path.log_snr, np.array([t_start, t_end])))
    start_exact = math.isfinite(lam0)
    if not start_exact:
        lam0 = -math.log(EDM_SIGMA_MAX)
    append_end = not math.isfinite(lam1)
    if append_end:
        lam1 = -math.log(EDM_SIGMA_MIN)
    if not lam0 < lam1:
        raise ValueError(f"log-SNR does not increase from t_start={t_start} to t_end={t_end} on path {path!r}")
    return lam0, lam1, start_exact, append_end


def _from_log_snr(path, lams, t_start, t_end, start_exact, append_end) -> np.ndarray:
    """Times of the spaced λ values; exact ends are pinned so that no round-off moves them."""
    ts = np.clip(host_eval(path.t_from_log_snr, lams), t_start, t_end)
    if start_exact:
        ts[0] = t_start
    if append_end:
        return np.concatenate([ts, [t_end]])
    ts[-1] = t_end
    return ts


def uniform(path: Path, num_steps: int, t_start: float, t_end: float) -> np.ndarray:
    return np.linspace(t_start, t_end, _check_num_steps(num_steps) + 1)


def logsnr(path: Path, num_steps: int, t_start: float, t_end: float) -> np.ndarray:
    n = _check_num_steps(num_steps)
    lam0, lam1, start_exact, append_end = _spaced_ends(path, t_start, t_end)
    lams = np.linspace(lam0, lam1, n if append_end else n + 1)
    return _from_log_snr(path, lams, t_start, t_end, start_exact, append_end)


def logsnr_or_uniform(path: Path, num_steps: int, t_start: float, t_end: float) -> np.ndarray:
    """``logsnr`` where λ(t_end) is finite; where σ(t_end) = 0, uniform in t between the logsnr grid's ends."""
    n = _check_num_steps(num_steps)
    lam0, _, start_exact, append_end = _spaced_ends(path, t_start, t_end)
    if not append_end:
        return logsnr(path, n, t_start, t_end)
    start = t_start if start_exact else float(np.clip(host_eval(path.t_from_log_snr, np.array([lam0]))[0], t_start,
                                                      t_end))
    ts = np.linspace(start, t_end, n + 1)
    ts[-1] = t_end
    return ts


def edm(path: Path, num_steps: int, t_start: float, t_end: float, rho: float = 7.0) -> np.ndarray:
    n = _check_num_steps(num_steps)
    if not rho > 0:
        raise ValueError(f"rho must be positive; got {rho!r}")
    lam0, lam1, start_exact, append_end = _spaced_ends(path, t_start, t_end)
    s_max, s_min = math.exp(-lam0), math.exp(-lam1)
    m = n if append_end else n + 1            # number of ρ-spaced points
    frac = np.arange(m) / max(m - 1, 1)
    sig = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    if m == 1:
        sig = np.array([s_max])
    return _from_log_snr(path, -np.log(sig), t_start, t_end, start_exact, append_end)


def make_grid(kind: str, path: Path, num_steps: int, t_start: float | None = None, t_end: float | None = None,
              rho: float = 7.0) -> np.ndarray:
    """A grid of ``num_steps`` steps (``num_steps + 1`` times) of the given kind on [t_start, t_end]."""
    t_start = path.t_min if t_start is None else float(t_start)
    t_end = path.t_max if t_end is None else float(t_end)
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(f"need 0 <= t_start < t_end <= 1; got t_start={t_start}, t_end={t_end}")
    if kind == "uniform":
        ts = uniform(path, num_steps, t_start, t_end)
    elif kind == "logsnr":
        ts = logsnr(path, num_steps, t_start, t_end)
    elif kind == "edm":
        ts = edm(path, num_steps, t_start, t_end, rho)
    elif kind == "logsnr_or_uniform":
        ts = logsnr_or_uniform(path, num_steps, t_start, t_end)
    else:
        raise ValueError(f"unknown grid {kind!r}; valid grids: {', '.join(GRIDS)} (or pass an array of times)")
    if not np.all(np.diff(ts) > 0):
        raise ValueError(
            f"{kind} grid with {num_steps} steps on [{t_start}, {t_end}] is not strictly increasing in float64: "
            f"{ts}; use fewer steps or a wider interval"
        )
    return ts


def check_grid(grid) -> np.ndarray:
    """Validate a user-given grid: 1-D, at least 2 times, finite, strictly increasing, inside [0, 1]."""
    ts = np.asarray(grid, dtype=np.float64)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 times; got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise ValueError(f"grid has non-finite times: {ts}")
    if not np.all(np.diff(ts) > 0):
        bad = int(np.argmin(np.diff(ts) > 0))
        raise ValueError(
            f"grid must be strictly increasing (t = 0 noise, t = 1 data); "
            f"t[{bad}]={ts[bad]} >= t[{bad + 1}]={ts[bad + 1]}"
        )
    if ts[0] < 0.0 or ts[-1] > 1.0:
        raise ValueError(f"grid must lie in [0, 1]; got [{ts[0]}, {ts[-1]}]")
    return ts
