"""Reproduction, in shape: Liu, Gong & Liu 2023 ("Flow Straight and Fast"), Table 1 — reflow straightens the flow and
makes one-step generation work; distillation improves it further.

    python -m experiments.reproductions.liu_reflow                    # both sweeps, ~10 min on 2 CPU cores
    python -m experiments.reproductions.liu_reflow --workdir results/liu_reflow

Runs ``experiments/toy2d_reflow.py`` (8 Gaussians: exact W2 to held-out data) and ``experiments/digits_reflow.py``
(8×8 digits: digits-FID, pixel Fréchet distance) with the sweep runner (resumable: a second run recomputes nothing),
then writes ``liu_reflow.md`` next to this file (or to ``--report``): the paper's CIFAR-10 numbers beside ours, the
straightness of every k-RF, and a verdict per claim. The paper trains far larger models on CIFAR-10; the comparison
is of shape (who beats whom, in which direction), not of values. The spread is over sampling seeds only (one
training run per model).

Claims checked (each "holds", "does not hold" or "undecided" when the difference is within 2 standard errors of
the seeds, or one seed):
  1. straightness falls with k: S(1-RF) > S(2-RF) > S(3-RF);
  2. one step gets much better with reflow: 1-step quality of 2-RF beats 1-RF's;
  3. a second reflow helps one step further: 3-RF beats 2-RF at 1 step (the paper: 12.21 → 8.15);
  4. distillation helps one step: 2-RF + distill beats 2-RF at 1 step (the paper: 12.21 → 4.85).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flowgen.sweep import runner  # noqa: E402

#: Measured wall time of both sweeps from scratch (the report's run may have resumed them).
FROM_SCRATCH = "from scratch 4.8 min on 2 CPU cores, 2026-12-06"
#: Liu et al. 2023, Table 1 (CIFAR-10, unconditional, FID of 50k samples at one Euler step), as we read it.
PAPER_FID_ONE_STEP = {"1-rf": 378, "2-rf": 12.21, "3-rf": 8.15, "2-rf-distill": 4.85, "3-rf-distill": 5.21}


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_seed(rows, model, series, nfe, metric):
    return {r["seed"]: r["metrics"][metric] for r in rows if (r["model"], r["series"], r["nfe_budget"]) ==
            (model, series, nfe) and r["status"] == "done" and r["metrics"].get(metric) is not None}


def _stat(values: dict) -> tuple[float, float]:
    v = np.array(list(values.values()), np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _verdict(better: dict, worse: dict) -> str:
    """Paired over seeds: "holds" if mean(better − worse) + 2·se < 0, "does not hold" if mean − 2·se > 0."""
    seeds = sorted(set(better) & set(worse))
    d = np.array([better[s] - worse[s] for s in seeds], np.float64)
    if len(d) < 2:
        return "undecided (one seed)"
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    return "holds" if mean + 2 * se < 0 else "does not hold" if mean - 2 * se > 0 else "undecided"


def _fmt(m, s):
    return f"{m:.3g}" if not np.isfinite(s) else f"{m:.3g} ± {s:.2g}"


def _floor(metric: str, rows) -> float:
    """What real data of the cells' size score (the sweep metric's floor)."""
    from flowgen.sweep.metrics import METRICS

    first = next(r for r in rows if r["status"] == "done")
    return METRICS[metric](first["data"], first["num_samples"]).floor


def report(results: dict, seconds: float) -> str:
    lines = ["# Reproduction, in shape: Liu et al. 2023, Table 1 (reflow and distillation)", "",
             "**Paper** (CIFAR-10, DDPM++ U-Net, 1-RF trained 800k steps, 2-RF and 3-RF fine-tuned on 4M pairs, FID of "
             "50k samples at one Euler step, their Table 1 as we read it): 1-RF 378, 2-RF 12.21, 3-RF 8.15, 2-RF + "
             "distill 4.85, 3-RF + distill 5.21.", "",
             "**Ours**: `experiments/toy2d_reflow.py` (MLP 3×256, 3000 steps per model, 20,000 pairs) and "
             "`experiments/digits_reflow.py` (the main command's MLP, 1200 steps per model rather than its 6000, "
             "10,000 pairs); every k-RF trains from scratch on its teacher's pairs (RK4, 32 steps); one training run "
             "per model, spread over "
             "sampling seeds. Straightness: Liu et al.'s S of each model's ODE (RK4, 64 steps from the same noise). "
             f"Wall time of this run: {seconds / 60:.1f} min ({FROM_SCRATCH}; a second run recomputes nothing).",
             ""]
    claims = []
    for label, (rows, metric, seeds_note) in results.items():
        models = ("1-rf", "2-rf", "3-rf", "2-rf-distill", "3-rf-distill")
        present = [m for m in models if any(r["model"] == m for r in rows)]
        one = {m: _by_seed(rows, m, "one_step" if "distill" in m else "euler", 1, metric) for m in present}
        straight = {m: _by_seed(rows, m, "euler", 1, "straightness") for m in present if "distill" not in m}
        few = {m: _by_seed(rows, m, "euler", 4, metric) for m in present if "distill" not in m}
        floor = _floor(metric, rows)
        lines += [f"## {label}: {metric} ({seeds_note}; real data score {floor:.3g})", "",
                  "| model | paper FID, 1 step | ours, 1 step | ours, 4 Euler steps | straightness |",
                  "|---|---|---|---|---|"]
        for m in present:
            s = _fmt(*_stat(straight[m])) if m in straight and straight[m] else "-"
            f4 = _fmt(*_stat(few[m])) if m in few and few[m] else "-"
            lines.append(f"| {m} | {PAPER_FID_ONE_STEP[m]} | {_fmt(*_stat(one[m]))} | {f4} | {s} |")
        lines.append("")
        checks = [("straightness falls with k: S(2-RF) < S(1-RF)", straight["2-rf"], straight["1-rf"]),
                  ("straightness falls with k: S(3-RF) < S(2-RF)", straight["3-rf"], straight["2-rf"]),
                  ("2-RF beats 1-RF at 1 step", one["2-rf"], one["1-rf"]),
                  ("3-RF beats 2-RF at 1 step", one["3-rf"], one["2-rf"]),
                  ("2-RF + distill beats 2-RF at 1 step", one["2-rf-distill"], one["2-rf"])]
        for text, better, worse in checks:
            claims.append((label, text, _verdict(better, worse)))
    lines += ["## Verdicts", "", "| data | claim | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in claims]
    lines += ["", "Differences in scale that bear on the verdicts: on 8 Gaussians a 2-RF already samples at the "
              "data's own W2 floor in one step, so a third reflow or a student has nothing left to gain there; on "
              "digits every k-RF and student is a 1200-step model trained from scratch on 10,000 pairs of its "
              "teacher, where the paper fine-tunes each from its teacher on 4M pairs, so errors accumulate with k "
              "here (straightness still falls) while the paper's 1-step FID keeps improving.", ""]
    lines += ["", "Paired over sampling seeds (the same noise for every model): holds if mean + 2·s.e. < 0. "
              "Straightness is a property of each model's ODE; with the same noise its seed-to-seed spread is small, "
              "so its verdicts are decided by sampling noise only, not by training noise (one run per model).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="results/liu_reflow")
    parser.add_argument("--report", default=str(Path(__file__).with_suffix(".md")))
    parser.add_argument("--quick", action="store_true", help="the experiments' quick variants (tests)")
    args = parser.parse_args(argv)
    variant = "quick" if args.quick else ""
    start = time.time()
    results = {}
    for label, name, metric in (("8 Gaussians", "toy2d_reflow", "w2"), ("8×8 digits", "digits_reflow", "digits_fid")):
        config = _experiment(name).get_config(variant)
        out = runner.run(config, str(Path(args.workdir) / name), progress=False)
        if out["failed"]:
            raise SystemExit(f"{name}: models failed: {[f.task.model for f in out['failed']]}")
        seeds = f"seeds {list(config.seeds)}, {config.num_samples} samples"
        results[label] = (out["rows"], metric, seeds)
    text = report(results, time.time() - start)
    Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
