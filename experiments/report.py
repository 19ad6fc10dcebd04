"""Writing the analytic sweep's results: Markdown table, CSV/JSON, the NFE-vs-error plot, and the environment."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

import flowgen as fg

RESULT_FILES = ("results.csv", "results.md", "results.json", "nfe_vs_error.png")
COLUMNS = ("path", "target", "solver", "options", "grid", "steps", "nfe", "forward_passes", "t_start", "t_end",
           "ode_rmse", "sw2", "nll_gap", "seconds")
CSV_COLUMNS = COLUMNS + ("series", "stochastic", "late_start", "finite")


REFERENCE_TOL = 1e-11

def fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, (int, np.integer)) or isinstance(v, str):
        return str(v)
    if key in ("t_start", "t_end"):
        return f"{v:.6g}"
    if key == "seconds":
        return f"{v:.2f}"
    return f"{v:.3g}"


def markdown(rows: list[dict], env: dict, floor: dict, orders: list[dict], total_seconds: float) -> str:
    lines = [
        "# NFE vs. quality on the exact 2-D 8-Gaussian mixture",
        "",
        f"{env['num_samples']} samples per row, seed {env['seed']}, {env['dtype']}, jax {env['jax']} on "
        f"{env['backend']}; total {total_seconds:.1f} s. ode_rmse: RMS distance to the exact ODE endpoint from the "
        "same noise (deterministic solvers). sw2: sliced W2 to true samples. nll_gap: mean NLL of the samples "
        "minus that of true samples.",
        "",
        f"Monte-Carlo noise floor (true vs. other true samples of the same size, mean ± std over {floor['repeats']} "
        f"sets): sw2 = {floor['sw2']:.3g} ± {floor['sw2_std']:.2g}, |nll_gap| = {floor['nll_gap']:.3g} ± "
        f"{floor['nll_gap_std']:.2g}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in COLUMNS) + " |" for r in rows]
    if orders:
        lines += ["", "Fitted convergence order of ode_rmse in NFE (largest-NFE points above 1e-9):", "",
                  "| path | target | solver | order | NFE range |", "|---|---|---|---|---|"]
        lines += [f"| {o['path']} | {o['target']} | {o['series']} | {fmt('order', o['order'])} | "
                  f"{'-' if o['nfe_range'] is None else '{}-{}'.format(*o['nfe_range'])} |" for o in orders]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], floor: dict, orders: list[dict], filename: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = list(dict.fromkeys((r["path"], r["target"]) for r in rows))
    series = list(dict.fromkeys(r["series"] for r in rows))
    names = list(dict.fromkeys(r["solver"] for r in rows))          # variants share their solver's colour
    name_color = dict(zip(names, _palette(len(names)), strict=True))
    solver_of = {r["series"]: r["solver"] for r in rows}
    colors = {s: name_color[solver_of[s]] for s in series}
    markers = {s: m for s, m in zip(series, "osD^v<>phX*P8Hd" * 4, strict=False)}
    fig = Figure(figsize=(5.6 * len(panels) + 3.2, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False)
    order_of = {(o["path"], o["target"], o["series"]): o["order"] for o in orders}
    for j, (path, target) in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        for s in series:
            pts = sorted((r["nfe"], r["ode_rmse"], r["sw2"], r["stochastic"]) for r in rows
                         if (r["path"], r["target"], r["series"]) == (path, target, s))
            if not pts:
                continue
            nfe = [p[0] for p in pts]
            style = dict(color=colors[s], marker=markers.get(s, "o"), ms=4, lw=1.3,
                         ls="--" if pts[0][3] else "-")
            if not pts[0][3]:
                order = order_of.get((path, target, s))
                label = s if order is None else f"{s} (p≈{order:.2f})"
                top.loglog(nfe, [p[1] for p in pts], label=label, **style)
            bottom.loglog(nfe, [p[2] for p in pts], **style)
        bottom.axhline(floor["sw2"], color="0.3", ls=":", lw=1.5)
        bottom.axhspan(floor["sw2"] - floor["sw2_std"], floor["sw2"] + floor["sw2_std"], color="0.5", alpha=0.15, lw=0)
        bottom.text(bottom.get_xlim()[0] * 1.1, floor["sw2"] * 1.08, "Monte-Carlo noise floor", fontsize=8,
                    color="0.3", va="bottom")
        top.set_title(f"{path} ({target}): ODE endpoint error")
        top.set_ylabel("RMSE to exact ODE endpoint")
        bottom.set_title(f"{path} ({target}): distance to the data distribution")
        bottom.set_ylabel("sliced W2 to true samples")
        for ax in (top, bottom):
            ax.set_xlabel("NFE (measured)")
            ax.grid(True, which="both", alpha=0.25)
        top.legend(fontsize=7, loc="lower left", title="deterministic (fitted order)", title_fontsize=7)
    handles = [Line2D([], [], color=colors[s], marker=markers.get(s, "o"), ms=4,
                      ls="--" if any(r["stochastic"] for r in rows if r["series"] == s) else "-", label=s)
               for s in series]
    handles.append(Line2D([], [], color="0.3", ls=":", label="noise floor (true vs. true, ± std)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="solver (dashed: stochastic)",
               title_fontsize=8)
    fig.suptitle("NFE vs. error on the exact 2-D 8-Gaussian mixture")
    fig.savefig(filename, dpi=110)


def _palette(n: int):
    """n distinct colours: tab10, then the lighter halves of tab20."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    colors = [tab10(i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]
    return [colors[i % len(colors)] for i in range(n)]


def resolve_out_dir(out: str | Path, overwrite: bool) -> Path:
    """``out``, or a new timestamped subdirectory of it when ``out`` already holds results and not ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} exists and is not a directory")
    if out.is_dir() and not overwrite and any((out / name).exists() for name in RESULT_FILES):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        new, i = out / stamp, 1
        while new.exists():
            new, i = out / f"{stamp}-{i}", i + 1
        print(f"note: {out} already holds results; writing into {new} (pass --overwrite to replace them)",
              file=sys.stderr)
        out = new
    elif overwrite:                                  # no stale file (e.g. a plot with --no-plot) survives
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def environment(args) -> dict:
    import scipy

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "jax": jax.__version__, "jaxlib": _version("jaxlib"),
        "numpy": np.__version__, "scipy": scipy.__version__, "flowgen": fg.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "dtype": "float64", "num_samples": args.num_samples, "seed": args.seed,
        "git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain")),
        "argv": list(sys.argv),
    }


def _version(dist: str):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_results(out: Path, rows, env, floor, orders, checks, solves, args, total_seconds, md: str) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(md)
    payload = {
        "environment": env, "noise_floor": floor, "total_seconds": total_seconds,
        "args": {"paths": [f"{p}:{t}" for p, t in args.paths], "solvers": [s.label for s in args.solvers],
                 "steps": args.steps, "tolerances": args.tolerances, "grid": args.grid,
                 "min_nfe": args.min_nfe, "max_nfe": args.max_nfe, "quick": args.quick, "jobs": args.jobs},
        "reference": {"method": "scipy.integrate.solve_ivp DOP853", "rtol": REFERENCE_TOL, "atol": REFERENCE_TOL,
                      "solves": solves, "checks": checks},
        "convergence_orders": orders, "columns": list(COLUMNS), "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(_json_safe(payload), indent=1) + "\n")
