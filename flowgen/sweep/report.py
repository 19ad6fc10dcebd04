"""The sweep's report, derived from the cell files (rewritten on every run; the cells are the results).

    results.csv            one row per (model, solver, NFE budget, guidance): the model's ablation knobs (one column
                           per overridden training config key, e.g. ``path.name``), settings, measured NFE and forward
                           passes, each metric's mean and std over seeds, seeds, samples per seed, reference, floor,
                           sampling and compile seconds
    results.md             a table per metric (rows: model (its knobs) × solver, columns: NFE budget; mean ± std over
                           seeds, the measured NFE where it differs from the budget), then the floors and settings,
                           and the failed models with their log files
    nfe_vs_<metric>.png    one panel per solver (shared axes), one curve per model (marker + line style + colour), log
                           NFE, error bars = std over seeds, the metric's floor as a dotted line
    samples_<model>.png    the first 64 samples of the largest-budget cell of the first solver (seed 0); 2-D samples
                           drawn over points of the data (grey)
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict

import numpy as np

CSV_COLUMNS = ("model", "data", "trained_path", "path", "target", "solver", "options", "grid", "guidance",
               "nfe_budget", "steps", "nfe", "forward_passes", "t_start", "t_end", "num_samples", "seeds")
MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))


def scored_data(name: str, row: dict) -> str:
    """The data metric ``name`` scores for a row's model (``metrics.scored_data``: a latent model's image metrics
    score its decoded images): the second half of the key of ``metrics``."""
    from flowgen.sweep import metrics

    return metrics.scored_data(name, row["data"], row.get("decoded_data"))


def metric_of(metrics: dict, name: str, row: dict):
    """The Metric ``name`` of a row's model."""
    return metrics[(name, scored_data(name, row))]


def _mean_std(values):
    v = np.array([np.nan if x is None else x for x in values], np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(rows: list[dict], metric_names, knobs: dict | None = None) -> list[dict]:
    """Seeds folded: one dict per (model, series, budget, guidance), in the rows' order; ``knobs``
    ({model: {key: value}}) adds each model's ablation knobs as columns."""
    knobs = knobs or {}
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["series"], r["nfe_budget"], r["guidance"])].append(r)
    out = []
    for (_, series, _, _), rs in groups.items():
        first = rs[0]
        agg = {k: first.get(k) for k in CSV_COLUMNS if k in first}
        agg["decoded_data"] = first.get("decoded_data")
        agg.update(knobs.get(first["model"], {}))
        agg.update(series=series, seeds=len(rs), status=first["status"], options=first["options"] or "")
        if first["status"] == "done":
            nfes = sorted({r["nfe"] for r in rs})
            agg.update(nfe=nfes[0] if len(nfes) == 1 else "/".join(map(str, nfes)),
                       sampling_seconds=float(np.mean([r["sampling_seconds"] for r in rs])),
                       compile_seconds=float(np.sum([r["compile_seconds"] for r in rs])))
            for name in metric_names:
                agg[f"{name}_mean"], agg[f"{name}_std"] = _mean_std([r["metrics"][name] for r in rs])
        else:
            agg["minimum_nfe"] = first.get("minimum_nfe")
        out.append(agg)
    return out


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


#: Fitted orders use the budgets whose metric is above this (below it round-off, not the solver, dominates).
ORDER_FLOOR = {"float64": 1e-10, "float32": 1e-5}


def fitted_orders(table: list[dict], name: str, floor: float, points: int = 3) -> dict:
    """(model, series) -> −slope of log ``name`` against log measured NFE over the ``points`` largest budgets whose
    value exceeds ``floor`` (None where fewer than 2 remain): the convergence order of a deterministic solver."""
    out = {}
    for model, series in dict.fromkeys((r["model"], r["series"]) for r in table):
        pts = sorted((r["nfe"], r[f"{name}_mean"]) for r in table
                     if (r["model"], r["series"]) == (model, series) and r["status"] == "done"
                     and isinstance(r["nfe"], int) and np.isfinite(r[f"{name}_mean"]) and r[f"{name}_mean"] > floor)
        pts = pts[-points:]
        out[(model, series)] = None if len(pts) < 2 else float(
            -np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])
    return out


def _knob_text(v) -> str:
    return "-" if v is None else (_fmt(v) if isinstance(v, float) else str(v))


def markdown(spec, table: list[dict], metrics: dict, devices: int, failures=()) -> str:
    budgets = list(spec.nfe)
    knob_keys = list(getattr(spec, "knob_keys", ()))
    knob_head = "".join(f" {k} |" for k in knob_keys)
    lines = [f"# {spec.title}", "",
             f"{spec.num_samples} samples per cell and seed, seeds {list(spec.seeds)} (mean ± std over seeds; the "
             f"same noise for every solver and budget), {devices} device(s). Each cell runs the most steps whose "
             "measured NFE fits the budget; (n) gives the measured NFE where it is below the budget. Guidance: "
             f"{', '.join('none' if w is None else str(w) for w in spec.guidance)}.", ""]
    for name in spec.metrics:
        lines += [f"## {name}", ""]
        for (metric_name, data), metric in metrics.items():
            if metric_name == name:
                bias = "" if metric.floor_samples == spec.num_samples else (
                    f"; measured at {metric.floor_samples} samples, while cells use {spec.num_samples}: the "
                    "estimate depends on the sample count, so cells and floor differ by more than quality")
                lines.append(f"- {data}: {metric.description}; reference: {metric.reference}; floor "
                             f"{_fmt(metric.floor)} ({metric.floor_note}{bias}).")
        lines += ["", "| model |" + knob_head + " solver | guidance | " + " | ".join(f"NFE {b}" for b in budgets) +
                  " |", "|---|" + "---|" * len(knob_keys) + "---|---|" + "---|" * len(budgets)]
        keyed = {(r["model"], r["series"], r["guidance"], r["nfe_budget"]): r for r in table}
        for model, series, w in dict.fromkeys((r["model"], r["series"], r["guidance"]) for r in table):
            cells = []
            for b in budgets:
                r = keyed.get((model, series, w, b))
                if r is None:
                    cells.append("")
                elif r["status"] != "done":
                    cells.append(f"— (min {r.get('minimum_nfe')})")
                else:
                    text = f"{_fmt(r[f'{name}_mean'])} ± {_fmt(r[f'{name}_std'], 2)}"
                    cells.append(text + (f" ({r['nfe']})" if r["nfe"] != b else ""))
            first = next(r for r in table if r["model"] == model)
            knob_cells = "".join(f" {_knob_text(first.get(k))} |" for k in knob_keys)
            lines.append(f"| {model} |{knob_cells} {series} | {'-' if w is None else w} | " + " | ".join(cells) + " |")
        lines.append("")
        if any(m.fit_order for (n, _), m in metrics.items() if n == name):
            floor = ORDER_FLOOR[spec.dtype]
            lines += [f"Fitted orders of {name} (−slope of log {name} against log NFE over the 3 largest budgets "
                      f"above {floor:g}):", "", "| model | solver | order |", "|---|---|---|"]
            lines += [f"| {model} | {series} | {_fmt(order)} |"
                      for (model, series), order in fitted_orders(table, name, floor).items()]
            lines.append("")
    lines += ["## Settings per model", "", "| model | data | trained path | sampled path | target | steps per budget "
              "(solver: steps) |", "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in table):
        rs = [r for r in table if r["model"] == model]
        steps = "; ".join(f"{s}: {','.join(str(r['steps']) for r in rs if r['series'] == s and r['steps'])}"
                          for s in dict.fromkeys(r["series"] for r in rs))
        r0 = rs[0]
        data = r0["data"] if not r0.get("decoded_data") else f"{r0['data']} (decoded: {r0['decoded_data']})"
        lines.append(f"| {model} | {data} | {r0['trained_path']} | {r0['path']} | {r0['target']} | {steps} |")
    done = [r for r in table if r["status"] == "done"]
    lines += ["", f"Sampling {sum(r['sampling_seconds'] * r['seeds'] for r in done):.1f} s, compilation "
              f"{sum(r['compile_seconds'] for r in done):.1f} s in total (per cell in results.csv).", ""]
    if failures:
        lines += ["## Failed (not in the tables; the same command retries them)", "", "| model | stage | error | log |",
                  "|---|---|---|---|"]
        lines += [f"| {f.task.model} | {f.task.stage} | {f.message.replace('|', '/')} | {f.log} |" for f in failures]
        lines.append("")
    return "\n".join(lines)


def write_csv(path: str, table: list[dict], spec, metrics: dict) -> None:
    names = list(spec.metrics)
    columns = ["model", *getattr(spec, "knob_keys", ())] + list(CSV_COLUMNS[1:]) + ["status"] + \
        [f"{n}_{s}" for n in names for s in ("mean", "std")] + \
        [f"{n}_floor" for n in names] + [f"{n}_reference" for n in names] + ["sampling_seconds", "compile_seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in table:
            row = dict(r)
            for n in names:
                row[f"{n}_floor"] = metric_of(metrics, n, r).floor
                row[f"{n}_reference"] = metric_of(metrics, n, r).reference
            writer.writerow(row)


def plot(path: str, name: str, table: list[dict], metrics: dict, layout: str = "panels") -> None:
    """``layout="panels"``: one panel per (solver, guidance) with shared axes, one curve per model: models compare
    at a glance. ``"single"``: one panel, one curve per (model, solver): each model with its own samplers (few-step
    methods beside multi-step solvers)."""
    if layout == "single":
        table = [{**r, "model": f"{r['model']} · {r['series']}", "series": ""} for r in table]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in table))
    finite = [r for r in table if r["status"] == "done" and np.isfinite(r[f"{name}_mean"])]
    # panels with a finite value only (e.g. straightness is NaN for a method's own sampler: no empty panel)
    panels = list(dict.fromkeys((r["series"], r["guidance"]) for r in finite)) or [("", None)]
    fig = Figure(figsize=(4.6 * len(panels) + 2.5, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True, sharey=True)[0]
    colours = [f"C{i}" for i in range(10)]
    positive = all(r[f"{name}_mean"] > 0 for r in table if r["status"] == "done" and np.isfinite(r[f"{name}_mean"]))
    for ax, (s, w) in zip(axes, panels, strict=True):
        for i, model in enumerate(models):
            pts = sorted((r["nfe"], r[f"{name}_mean"], r[f"{name}_std"]) for r in table
                         if r["model"] == model and (r["series"], r["guidance"]) == (s, w) and r["status"] == "done"
                         and isinstance(r["nfe"], int) and np.isfinite(r[f"{name}_mean"]))
            if not pts:
                continue
            x, y, e = map(np.array, zip(*pts, strict=True))
            ax.errorbar(x, y, yerr=e, label=model, marker=MARKERS[i % len(MARKERS)],
                        ls=LINESTYLES[i % len(LINESTYLES)], color=colours[i % 10], ms=5, lw=1.3, capsize=3)
        for data in dict.fromkeys(scored_data(name, r) for r in table):
            metric = metrics[(name, data)]
            if metric.floor is not None and np.isfinite(metric.floor):
                ax.axhline(metric.floor, color="0.2", ls=":", lw=1.5, label=f"floor, {data} ({metric.floor_note})")
        ax.set_xscale("log", base=2)
        if positive:
            ax.set_yscale("log")
        ax.set_title(s if w is None else f"{s}, w={w}".lstrip(", "))
        ax.set_xlabel("NFE (measured model calls)")
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel(f"{name} (mean ± std over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=110)


def data_points(data: str, n: int = 2000) -> np.ndarray | None:
    """Points of a 2-D toy data set (drawn under 2-D samples); None for other data."""
    from flowgen.data import toy

    if data not in toy.TOY_DATASETS:
        return None
    return np.asarray(toy.toy_batch(data, 0, 0, n), np.float64)


def sample_grid(path: str, preview: list, title: str, data: np.ndarray | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(preview, np.float64)
    fig = Figure(figsize=(4, 4.3), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if x.ndim == 2:
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=2, color="0.75", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=6, color="C0", label="samples")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, loc="upper right")
    else:
        side = int(np.ceil(np.sqrt(len(x))))
        h, w, c = x.shape[1:]
        canvas = np.full((side * (h + 1) - 1, side * (w + 1) - 1, c), 0.5)        # 1-pixel grey gaps
        for i, img in enumerate(x):
            r, q = divmod(i, side)
            canvas[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = np.clip((img + 1) / 2, 0, 1)
        ax.imshow(canvas.squeeze(-1) if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
        ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=110)


def write(workdir: str, spec, rows: list[dict], metrics: dict, failures=(), write_files: bool = True) -> dict:
    """The table of ``rows`` and, if ``write_files`` (process 0 of a multi-process job), its files in ``workdir``:
    results.csv, results.md, one plot per metric, one sample grid per model."""
    knobs = {m.name: dict(m.knobs) for m in spec.models if getattr(m, "knobs", ())}
    table = aggregate(rows, spec.metrics, knobs)
    devices = max((r.get("devices", 1) for r in rows), default=1)
    md = markdown(spec, table, metrics, devices, failures)
    files = {"csv": os.path.join(workdir, "results.csv"), "md": os.path.join(workdir, "results.md")}
    if write_files:
        write_csv(files["csv"], table, spec, metrics)
        with open(files["md"], "w") as f:
            f.write(md)
    for name in spec.metrics if table else ():
        files[f"plot_{name}"] = os.path.join(workdir, f"nfe_vs_{name}.png")
        if write_files:
            plot(files[f"plot_{name}"], name, table, metrics, spec.plot_layout)
    for model in dict.fromkeys(r["model"] for r in rows):
        done = [r for r in rows if r["model"] == model and r["status"] == "done"]
        if done:
            pick = max((r for r in done if r["series"] == done[0]["series"] and r["seed"] == done[0]["seed"]),
                       key=lambda r: r["nfe"])
            files[f"samples_{model}"] = os.path.join(workdir, f"samples_{model}.png")
            if write_files:
                sample_grid(files[f"samples_{model}"], pick["preview"],
                            f"{model}: {pick['series']}, NFE {pick['nfe']}, seed {pick['seed']}",
                            data_points(pick["data"]) if np.asarray(pick["preview"]).ndim == 2 else None)
    orders = {name: fitted_orders(table, name, ORDER_FLOOR[spec.dtype]) for name in spec.metrics
              if any(m.fit_order for (n, _), m in metrics.items() if n == name)}
    return {"rows": rows, "table": table, "markdown": md, "files": files, "orders": orders}
