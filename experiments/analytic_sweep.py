"""NFE vs. quality of every solver on the exact 2-D 8-Gaussian mixture: a table (CSV/Markdown/JSON) and a plot.

    python -m experiments.analytic_sweep                            # default sweep (~2 min on 2 CPU cores)
    python -m experiments.analytic_sweep --quick --out /tmp/sweep   # a few seconds
    python experiments/analytic_sweep.py --paths linear:noise,ve --solvers rk4,ddim:eta=1 --steps 4,16,64

The model is the exact posterior of ``fg.analytic.GaussianMixture.circle()`` on each path, so every error measured
is the solver's own (discretisation, and for stochastic samplers their own noise). Everything runs in float64.
For each (path, target, solver, steps) the row holds:

  nfe, forward_passes   measured by the sampler (``info``), never computed from the step count
  t_start, t_end        the ends of the grid the sampler really used (``info["grid"]``)
  ode_rmse              deterministic solvers only: RMS over all coordinates of ``x − x_ref``, where ``x_ref`` solves
                        the probability-flow ODE (velocity of the exact posterior) from the same start σ(t₀)·noise
                        over the same [t₀, t_N], with scipy's DOP853 at rtol = atol = 1e-11 (the run checks it
                        against a 1e-13 solve and against flowgen's dopri5 at 1e-10, see results.json)
  sw2                   sliced Wasserstein-2 distance to fresh samples of the mixture (128 random directions); its
                        Monte-Carlo noise floor (true samples vs. other true samples) is reported once per table
  nll_gap               mean(−log p(x)) − mean(−log p(true samples)) under the exact data density
  seconds               wall time of the sampler call, tracing and compilation included (they dominate here)

Paths are given as ``name`` or ``name:target`` (default target: velocity for linear/trig, noise for VP/VE).
Solvers are given as ``name`` or ``name:option=value[:option=value]`` (e.g. ``ddim:eta=1``); stochastic ones get a
key. Each runs on the path's default interval unless the sampler refuses it for that solver/target (a ValueError,
e.g. an SDE whose diffusion is infinite where α = 0); then that combination starts at t = 1e-3. Adaptive solvers
(``solver.adaptive``, e.g. dopri5) are swept over tolerances (``--tolerances``, set with ``solver.with_tolerance``)
instead of step counts; their ``steps`` is the number of accepted steps. Nothing here depends on a solver's name:
a solver registered in ``fg.solvers.SOLVERS`` is swept like the built-in ones.

Step counts: powers of 2 chosen per solver (from ``solver.calls_per_step``) so that the NFE spans 2..256 (every
other one for stochastic solvers, whose curves are noisy). Compilation, one per (solver, steps), dominates the run
time; the paths run in parallel processes (``--jobs``, default min(2, CPU cores)).

Results go to ``--out`` (default results/analytic_sweep): results.csv, results.md, results.json (with the
environment) and nfe_vs_error.png (top: ode_rmse of the deterministic solvers, with fitted orders; bottom: sw2 of all
solvers and its noise floor). Existing results are never overwritten unless ``--overwrite`` is passed: the run goes
into a new timestamped subdirectory of ``--out`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flowgen as fg  # noqa: E402
from experiments.report import (  # noqa: E402
    REFERENCE_TOL,
    RESULT_FILES,
    environment,
    fmt,
    markdown,
    plot,
    resolve_out_dir,
    write_results,
)
from flowgen.evals.sample_metrics import sliced_w2  # noqa: E402
from flowgen.sweep import spec as sweep_spec  # noqa: E402
from flowgen.sweep.spec import SolverSpec  # noqa: E402

DEFAULT_OUT = "results/analytic_sweep"
DEFAULT_PATHS = ("linear", "vp_linear")
DEFAULT_TARGETS = {"linear": "velocity", "trig": "velocity", "custom": "velocity", "vp_linear": "noise",
                   "vp_cosine": "noise", "sub_vp": "noise", "ve": "noise"}
# Besides every solver in fg.solvers.SOLVERS with its default options: the stochastic variants of DDIM and EDM.
EXTRA_DEFAULT_SOLVERS = ("ddim:eta=1", "edm_stochastic:s_churn=10")
DEFAULT_TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
CANDIDATE_STEPS = tuple(2**k for k in range(13))
LATE_T_START = 1e-3
NUM_DIRECTIONS = 128

QUICK = {"paths": "linear", "solvers": "euler,heun,rk4,dpmpp_2m,euler_maruyama", "steps": "8,16,32",
         "tolerances": "1e-3", "num_samples": 256}

# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def parse_solver(text: str) -> SolverSpec:
    return sweep_spec.parse_solver(text, allow_adaptive=True)      # dopri5 sweeps its tolerance here


def parse_path(text: str) -> tuple[str, str]:
    name, _, target = text.strip().partition(":")
    fg.paths.get(name)                             # raises a ValueError naming the valid paths
    target = target or DEFAULT_TARGETS.get(name, "velocity")
    fg.paths.check_target(target)
    return name, target


def _csv_list(text: str, convert):
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.analytic_sweep",
        description="NFE-vs-quality sweep of every flowgen solver on the exact 2-D 8-Gaussian mixture.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results already in --out (otherwise a new timestamped subdirectory is used)")
    p.add_argument("--paths", default=None,
                   help=f"comma-separated path[:target] (default {','.join(DEFAULT_PATHS)}; targets default to "
                        "velocity for linear/trig and noise for VP/VE paths)")
    p.add_argument("--solvers", default=None,
                   help="comma-separated name[:option=value...] (default: every solver in fg.solvers.SOLVERS, "
                        f"plus {', '.join(EXTRA_DEFAULT_SOLVERS)})")
    p.add_argument("--steps", default=None,
                   help="comma-separated step counts for every solver (default: powers of 2 chosen per solver so "
                        "that the NFE spans --min-nfe..--max-nfe; every other one for stochastic solvers)")
    p.add_argument("--min-nfe", type=int, default=2, help="lower NFE bound for the default step counts (2)")
    p.add_argument("--max-nfe", type=int, default=256, help="upper NFE bound for the default step counts (256)")
    p.add_argument("--tolerances", default=None,
                   help="comma-separated tolerances for adaptive solvers, e.g. dopri5's rtol = atol (default "
                        f"{','.join(f'{t:g}' for t in DEFAULT_TOLERANCES)})")
    p.add_argument("--grid", default=None, choices=fg.solvers.grids.GRIDS,
                   help="grid kind for every fixed-step solver (default: the sampler's per-solver default)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per configuration (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, the true samples and the SDE noise")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes, one per path (default: min(2, CPU cores); 1 with --quick)")
    p.add_argument("--no-plot", action="store_true", help="skip nfe_vs_error.png")
    p.add_argument("--quick", action="store_true",
                   help="a very small sweep for tests (explicit flags still win): " + json.dumps(QUICK))
    args = p.parse_args(argv)

    quick = QUICK if args.quick else {}
    paths = args.paths or quick.get("paths") or ",".join(DEFAULT_PATHS)
    solvers = args.solvers or quick.get("solvers") or ",".join([*fg.solvers.SOLVERS, *EXTRA_DEFAULT_SOLVERS])
    steps = args.steps or quick.get("steps")
    tolerances = args.tolerances or quick.get("tolerances")
    try:
        args.paths = _csv_list(paths, parse_path)
        args.solvers = _csv_list(solvers, parse_solver)
        args.steps = None if steps is None else _csv_list(steps, int)
        args.tolerances = list(DEFAULT_TOLERANCES) if tolerances is None else _csv_list(tolerances, float)
    except (ValueError, argparse.ArgumentTypeError) as e:
        p.error(str(e))
    if args.jobs is None:
        args.jobs = 1 if args.quick else max(1, min(2, os.cpu_count() or 1))
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.num_samples is None:
        args.num_samples = quick.get("num_samples", 4000)
    if not args.paths or not args.solvers:
        p.error("need at least one path and one solver")
    if args.steps is not None and any(n < 1 for n in args.steps):
        p.error(f"--steps must be integers >= 1; got {args.steps}")
    if any(not (0 < t < 1) for t in args.tolerances):
        p.error(f"--tolerances must lie in (0, 1); got {args.tolerances}")
    if args.num_samples < 2:
        p.error("--num-samples must be at least 2")
    return args


# --------------------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    target: str
    spec: SolverSpec
    steps: int | None          # None for adaptive solvers
    tol: float | None          # adaptive solvers' tolerance (``Solver.with_tolerance``)

    def solver(self) -> fg.solvers.Solver:
        solver = self.spec.build()
        return solver if self.tol is None else solver.with_tolerance(self.tol)


def make_configs(args) -> list[Config]:
    configs = []
    for path, target in args.paths:
        for spec in args.solvers:
            solver = spec.build()
            if solver.adaptive:
                configs += [Config(path, target, spec, None, tol) for tol in args.tolerances]
                continue
            if args.steps is not None:
                steps = [n for n in args.steps if n >= solver.min_steps]
            else:
                cost = solver.calls_per_step     # used only to choose step counts; the NFE reported is measured
                steps = [n for n in CANDIDATE_STEPS
                         if args.min_nfe <= cost * n <= args.max_nfe and n >= solver.min_steps]
                if solver.stochastic:     # noisy curves, no convergence order to fit: every other point suffices
                    steps = steps[::-1][::2][::-1]
            configs += [Config(path, target, spec, n, None) for n in steps]
    return configs


# --------------------------------------------------------------------------------------------------------------
# Reference solution and metrics
# --------------------------------------------------------------------------------------------------------------
class Reference:
    """Probability-flow ODE endpoints of the exact model from ``σ(t₀)·noise``, one scipy DOP853 solve per interval.

    All samples are integrated as one system (the error norm covers every coordinate). Intervals whose ends agree
    to 1e-12 share a solve (e.g. a log-SNR grid and an EDM grid that both start at σ/α = 80).
    """

    def __init__(self, gmm, path, noise: jax.Array, tol: float = REFERENCE_TOL):
        self.path, self.noise, self.tol = path, noise, tol
        self.n, self.d = noise.shape
        velocity = gmm.model(path, "velocity")
        n, d = self.n, self.d
        self._f = jax.jit(lambda t, y: velocity(y.reshape(n, d), jnp.full((n,), t)).reshape(-1))
        self._cache: list[tuple[float, float, np.ndarray]] = []
        self.solves: list[dict] = []

    def start(self, t0: float) -> jax.Array:
        """The sampler's own starting point (fg.sample: ``σ(t₀)·noise``, computed the same way)."""
        return self.path.sigma(jnp.asarray(t0, self.noise.dtype)).astype(self.noise.dtype) * self.noise

    def solve(self, t0: float, t1: float, tol: float) -> tuple[np.ndarray, int]:
        from scipy.integrate import solve_ivp

        y0 = np.asarray(self.start(t0), np.float64).reshape(-1)
        sol = solve_ivp(lambda t, y: np.asarray(self._f(t, y)), (t0, t1), y0, method="DOP853", rtol=tol, atol=tol)
        if sol.status != 0:
            raise RuntimeError(f"reference solve on [{t0}, {t1}] failed: {sol.message}")
        return sol.y[:, -1].reshape(self.n, self.d), int(sol.nfev)

    def endpoint(self, t0: float, t1: float) -> np.ndarray:
        for a, b, x in self._cache:
            if abs(a - t0) <= 1e-12 and abs(b - t1) <= 1e-12:
                return x
        start = time.perf_counter()
        x, nfev = self.solve(t0, t1, self.tol)
        self._cache.append((t0, t1, x))
        self.solves.append({"t_start": t0, "t_end": t1, "rtol": self.tol, "atol": self.tol, "nfev": nfev,
                            "seconds": round(time.perf_counter() - start, 3)})
        return x


class Metrics:
    """Distribution metrics against one fixed set of true samples (and their noise floor from a second set)."""

    def __init__(self, gmm, key: jax.Array, num: int, seed: int, dtype=jnp.float64, floor_repeats: int = 8):
        k_true, *k_others = jax.random.split(key, 1 + max(floor_repeats, 0))
        self.gmm = gmm
        self.true = np.asarray(gmm.sample(k_true, num, dtype))
        dirs = np.random.default_rng(seed).standard_normal((NUM_DIRECTIONS, gmm.dim))
        self.directions = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        self.true_nll = self.mean_nll(self.true)
        # The metrics' own Monte-Carlo noise: the same metrics for other sets of true samples of the same size
        # (a solver that transported the noise exactly would score about this), mean and std over a few sets.
        self.floor = None
        if floor_repeats >= 2:
            others = [np.asarray(gmm.sample(k, num, dtype)) for k in k_others]
            sw2 = np.array([self.sw2(o) for o in others])
            nll = np.array([abs(self.nll_gap(o)) for o in others])
            self.floor = {"sw2": float(sw2.mean()), "sw2_std": float(sw2.std(ddof=1)),
                          "nll_gap": float(nll.mean()), "nll_gap_std": float(nll.std(ddof=1)),
                          "repeats": floor_repeats}

    def mean_nll(self, x: np.ndarray) -> float:
        return float(-jnp.mean(self.gmm.log_prob(jnp.asarray(x))))

    def sw2(self, x: np.ndarray) -> float:
        return sliced_w2(x, self.true, self.directions)

    def nll_gap(self, x: np.ndarray) -> float:
        return self.mean_nll(x) - self.true_nll if np.all(np.isfinite(x)) else math.nan


@functools.lru_cache(maxsize=4)
def make_metrics(num_samples: int, seed: int) -> Metrics:
    """The metrics of a run (the same in every process: they depend only on the seed); call under float64."""
    gmm = fg.analytic.GaussianMixture.circle()
    return Metrics(gmm, jax.random.split(jax.random.key(seed), 3)[1], num_samples, seed)


# --------------------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------------------
def _grid_name(solver, grid) -> str:
    return "adaptive" if solver.adaptive else grid or solver.default_grid


def run_config(cfg: Config, model, noise, key, grid, reference: Reference, metrics: Metrics) -> dict:
    solver = cfg.solver()
    kwargs = dict(target=cfg.target, solver=solver, num_steps=cfg.steps, noise=noise,
                  key=key if solver.stochastic else None, grid=None if solver.adaptive else grid)
    late_start = None
    start = time.perf_counter()
    try:
        x, info = fg.sample(model, cfg.path, **kwargs)
    except ValueError as e:     # the sampler refuses the path's default interval for this solver/target
        late_start = str(e)
        start = time.perf_counter()
        try:
            x, info = fg.sample(model, cfg.path, t_start=LATE_T_START, **kwargs)
        except ValueError as again:
            raise ValueError(f"{cfg.path}:{cfg.target} {cfg.spec.label} steps={cfg.steps}: the sampler refused the "
                             f"default interval ({e}) and t_start={LATE_T_START} ({again})") from again
    jax.block_until_ready((x, info))
    seconds = time.perf_counter() - start

    x = np.asarray(x, np.float64)
    ts = np.asarray(info["grid"], np.float64)
    t0, t1 = float(ts[0]), float(ts[-1])
    finite = bool(np.all(np.isfinite(x)))
    steps = int(info["num_steps"])           # an unfinished adaptive solve raised in fg.sample (eager call)
    ode_rmse = None
    if not solver.stochastic:
        ref = reference.endpoint(t0, t1)
        ode_rmse = float(np.sqrt(np.mean((x - ref) ** 2))) if finite else math.nan
    options = ", ".join(f"{k}={v}" for k, v in cfg.spec.options)
    if cfg.tol is not None:
        options = ", ".join(filter(None, [options, f"tol={cfg.tol:g}"]))
    return {
        "path": cfg.path, "target": cfg.target, "solver": solver.name, "options": options,
        "grid": _grid_name(solver, grid), "steps": steps, "nfe": int(info["nfe"]),
        "forward_passes": int(info["forward_passes"]), "t_start": t0, "t_end": t1, "ode_rmse": ode_rmse,
        "sw2": metrics.sw2(x), "nll_gap": metrics.nll_gap(x), "seconds": seconds,
        "series": cfg.spec.label, "stochastic": bool(solver.stochastic), "late_start": late_start is not None,
        "finite": finite, "late_start_reason": late_start,
    }


def check_reference(reference: Reference, model_exact, path_name: str, target: str) -> dict:
    """How good is the reference? Compare one interval's solve with a 1e-13 solve and with flowgen's dopri5."""
    t0, t1, ref = reference._cache[0] if reference._cache else (None, None, None)
    if ref is None:
        return {}
    tight, nfev = reference.solve(t0, t1, 1e-13)
    x, info = fg.sample(model_exact, path_name, target=target, solver="dopri5", noise=reference.noise,
                        t_start=t0, t_end=t1, solver_options=dict(rtol=1e-10, atol=1e-10, max_steps=100_000))
    x = np.asarray(x)
    return {
        "t_start": t0, "t_end": t1,
        "max_abs_vs_scipy_1e-13": float(np.max(np.abs(ref - tight))),
        "rmse_vs_scipy_1e-13": float(np.sqrt(np.mean((ref - tight) ** 2))),
        "max_abs_flowgen_dopri5_1e-10_vs_scipy_1e-13": float(np.max(np.abs(x - tight))),
        "rmse_flowgen_dopri5_1e-10_vs_scipy_1e-13": float(np.sqrt(np.mean((x - tight) ** 2))),
        "flowgen_dopri5_nfe": int(info["nfe"]),
    }


def convergence_orders(rows: list[dict], floor: float = 1e-9, last: int = 4) -> list[dict]:
    """Fitted order −d log(ode_rmse)/d log(NFE) per series over its ``last`` largest-NFE points above ``floor``."""
    out = []
    keys = dict.fromkeys((r["path"], r["target"], r["series"]) for r in rows if r["ode_rmse"] is not None)
    for path, target, series in keys:
        pts = sorted((r["nfe"], r["ode_rmse"]) for r in rows
                     if (r["path"], r["target"], r["series"]) == (path, target, series)
                     and r["ode_rmse"] is not None and np.isfinite(r["ode_rmse"]) and r["ode_rmse"] > floor)
        pts = pts[-last:]
        order = None
        if len(pts) >= 2 and pts[0][0] != pts[-1][0]:
            nfe, err = np.log(np.array(pts, np.float64)).T
            order = float(-np.polyfit(nfe, err, 1)[0])
        out.append({"path": path, "target": target, "series": series, "order": order,
                    "nfe_range": [pts[0][0], pts[-1][0]] if pts else None})
    return out


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------
def sweep_path(path_name: str, target: str, configs: list[Config], num_samples: int, seed: int, grid: str | None,
               check: bool) -> dict:
    """Every configuration of one path/target (one process may run each path): rows, reference solves, check."""
    with jax.enable_x64(True):
        gmm = fg.analytic.GaussianMixture.circle()
        k_noise, k_true, k_solver = jax.random.split(jax.random.key(seed), 3)
        noise = jax.random.normal(k_noise, (num_samples, gmm.dim), jnp.float64)
        metrics = make_metrics(num_samples, seed)
        path = fg.paths.get(path_name)
        model = gmm.model(path, target)    # one object per path/target: the sampler's jit cache keys on it
        reference = Reference(gmm, path, noise)
        rows = []
        for cfg in configs:
            row = run_config(cfg, model, noise, k_solver, grid, reference, metrics)
            rows.append(row)
            print(f"[{path_name}:{target} {len(rows)}/{len(configs)}] {cfg.spec.label:<28} steps={row['steps']:<4} "
                  f"nfe={row['nfe']:<4} ode_rmse={fmt('', row['ode_rmse']):<9} sw2={row['sw2']:.3g} "
                  f"({row['seconds']:.2f} s)", file=sys.stderr, flush=True)
        # Once per run (a few seconds): how accurate is the reference?
        checked = check_reference(reference, model, path_name, target) if check else None
        return {"rows": rows, "solves": reference.solves, "check": checked}


def main(argv=None) -> Path:
    """Run the sweep; returns the directory the results were written to."""
    args = parse_args(argv)
    start = time.perf_counter()
    out = resolve_out_dir(args.out, args.overwrite)
    configs = make_configs(args)
    groups = [(p, t, [c for c in configs if (c.path, c.target) == (p, t)]) for p, t in args.paths]
    jobs = min(args.jobs, len(groups))
    work = [(p, t, cs, args.num_samples, args.seed, args.grid, i == 0 and not args.quick)
            for i, (p, t, cs) in enumerate(groups)]
    print(f"{len(configs)} configurations on {len(groups)} path(s), {jobs} process(es)", file=sys.stderr)
    if jobs > 1:      # one process per path: compilation, which dominates, is single-threaded
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(sweep_path, *zip(*work, strict=True)))
    else:
        results = [sweep_path(*w) for w in work]
    rows = [row for r in results for row in r["rows"]]
    solves = {f"{p}:{t}": r["solves"] for (p, t, _), r in zip(groups, results, strict=True)}
    checks = {f"{p}:{t}": r["check"] for (p, t, _), r in zip(groups, results, strict=True) if r["check"]}
    with jax.enable_x64(True):
        floor = make_metrics(args.num_samples, args.seed).floor
    orders = convergence_orders(rows)
    env = environment(args)
    env["jobs"] = jobs
    if not args.no_plot:
        plot(rows, floor, orders, out / "nfe_vs_error.png")
    total = time.perf_counter() - start
    md = markdown(rows, env, floor, orders, total)
    write_results(out, rows, env, floor, orders, checks, solves, args, total, md)
    print(md)
    written = [name for name in RESULT_FILES if (out / name).exists()]
    print(f"wrote {out}/{{{','.join(written)}}} in {total:.1f} s", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
