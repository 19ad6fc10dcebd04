"""Exact minibatch OT-CFM: training steps/s of flowgen's command line (coupling ``ot``, solvers emd, scipy, auction)
beside torchcfm's ExactOptimalTransportConditionalFlowMatcher (POT's EMD), and the assignment alone.

    python benchmarks/ot_coupling.py --torch-python /work/torchvenv/bin/python

flowgen: ``python -m flowgen.main --config=benchmarks/ot_coupling_config.py:<solver>`` (configs/toy2d_rf.py with
data 8gaussians, MLP 3×64, coupling ot) at each batch size, its closing summary's steps/s without checkpoint pauses.
torchcfm: ``benchmarks/ot_coupling_torch.py`` (torchcfm's MLP 3×64, Adam) at 1 and 2 torch threads, the better one.
Every contender is a fresh process; all run in ``--rounds`` rounds, order rotated each round; medians are reported,
with the load average beside every figure and the matmul peak (``common.matmul_peak_gflops``) before and after.
The assignment alone: each solver as the coupling calls it (jitted: the host solvers through their callback) on the
squared costs of the same 8-Gaussian / N(0, I) batch, medians of interleaved calls, and each one's excess total
cost over scipy's optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
SUMMARY = re.compile(r"; ([\d.]+) steps/s without them")


def load() -> float:
    return os.getloadavg()[0]


def _run(cmd, timeout=1200) -> str:
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def flowgen_rate(solver: str, batch: int, steps: int, per_call: int) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        text = _run([sys.executable, "-m", "flowgen.main", f"--config=benchmarks/ot_coupling_config.py:{solver}",
                     f"--workdir={workdir}", f"--config.data.batch_size={batch}",
                     f"--config.train.num_steps={steps}", f"--config.train.steps_per_call={per_call}",
                     f"--config.train.log_every={steps}", f"--config.train.checkpoint_every={steps}"])
    return float(SUMMARY.search(text).group(1))


def torch_rate(python: str, batch: int, steps: int, threads: int) -> float:
    text = _run([python, "benchmarks/ot_coupling_torch.py", "--batch", str(batch), "--steps", str(steps),
                 "--threads", str(threads)])
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])["steps_per_s"]


def assignment_times(batches, solvers, reps: int) -> dict:
    import jax
    import numpy as np
    import scipy.optimize

    from flowgen import couplings
    from flowgen.data.toy import toy_batch

    out = {}
    for b in batches:
        x = np.asarray(toy_batch("8gaussians", 0, 1, b))
        cost = couplings.squared_cost(x, jax.random.normal(jax.random.key(b), (b, 2)))
        fns = {s: jax.jit(couplings.ASSIGNMENT_SOLVERS[s]) for s in solvers}
        for fn in fns.values():
            fn(cost).block_until_ready()
        times = {**{s: [] for s in solvers}, "load": []}
        for _ in range(reps):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(cost).block_until_ready()
                times[name].append(time.perf_counter() - t)
            times["load"].append(load())
        c64 = np.asarray(cost, np.float64)
        r, j = scipy.optimize.linear_sum_assignment(c64)
        out[b] = {k: float(np.median(v)) for k, v in times.items()}
        for name, fn in fns.items():
            p = np.asarray(fn(cost))
            out[b][f"{name} excess"] = float(c64[np.arange(b), p].sum() / c64[r, j].sum() - 1)
        print(b, out[b], file=sys.stderr, flush=True)
    return out


def main(argv=None):
    sys.path.insert(0, REPO)
    from benchmarks.common import environment, markdown_table, matmul_peak_gflops, median, now_utc, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="128,512,1024")
    p.add_argument("--steps", default="400,60,20", help="flowgen/torchcfm steps per run at each batch size")
    p.add_argument("--auction-steps", default="100,10,10", help="steps of the (slower) auction runs (≥ 2 calls)")
    p.add_argument("--solvers", default="emd,emd+host2,scipy,auction",
                   help="flowgen's assignment solvers to run; SOLVER+hostN: solved on the host ahead of the step in "
                        "N threads (coupling_options.host_threads)")
    p.add_argument("--steps-per-call", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--assign-reps", type=int, default=5)
    p.add_argument("--torch-python", default=None, help="a Python with torch + torchcfm + POT (else no torchcfm)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    steps = dict(zip(batches, (int(s) for s in a.steps.split(",")), strict=True))
    auction_steps = dict(zip(batches, (int(s) for s in a.auction_steps.split(",")), strict=True))

    result = {"date": now_utc(), "environment": environment(), "args": vars(a)}
    peak = [matmul_peak_gflops()]
    print(f"{now_utc()} load {load():.2f} matmul peak {peak[0]:.0f} GFLOP/s", flush=True)
    solvers = a.solvers.split(",")
    bare = list(dict.fromkeys(s.partition("+host")[0] for s in solvers))     # the assignment solvers themselves
    assign = assignment_times(batches, bare, a.assign_reps)
    result["assignment_s"] = assign
    print("\nAssignment alone (median of interleaved calls, ms; excess total cost over scipy's optimum):\n")
    print(markdown_table(["batch", *(f"{s} ms" for s in bare), *(f"{s} excess" for s in bare), "load"],
                         [[b, *(1e3 * v[s] for s in bare), *(f"{v[s + ' excess']:.1e}" for s in bare),
                           v["load"]] for b, v in assign.items()]))

    if not a.skip_training:
        contenders = {f"flowgen {s}": (lambda b, s=s: flowgen_rate(
            s, b, (auction_steps if s.startswith("auction") else steps)[b], a.steps_per_call)) for s in solvers}
        if a.torch_python:
            for threads in (1, 2):
                contenders[f"torchcfm {threads}t"] = (
                    lambda b, th=threads: torch_rate(a.torch_python, b, steps[b], th))
        names = list(contenders)
        rates = {(n, b): [] for n in names for b in batches}
        loads = {(n, b): [] for n in names for b in batches}
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for b in batches:
                for n in order:
                    rates[n, b].append(contenders[n](b))
                    loads[n, b].append(load())
                    print(f"round {r} batch {b} {n}: {rates[n, b][-1]:.2f} steps/s (load {loads[n, b][-1]:.2f})",
                          file=sys.stderr, flush=True)
        peak.append(matmul_peak_gflops())
        rows, table = [], {}
        for b in batches:
            med = {n: median(rates[n, b]) for n in names}
            row = {"batch": b, **{n: med[n] for n in names},
                   "load": median([x for n in names for x in loads[n, b]])}
            if a.torch_python:
                best = max(("torchcfm 1t", "torchcfm 2t"), key=med.get)
                row["torchcfm best"] = med[best]
                for s in solvers:
                    row[f"{s} / torchcfm"] = med[f"flowgen {s}"] / med[best]
            rows.append(row)
            table[b] = {"rates": {n: rates[n, b] for n in names}, "loads": {n: loads[n, b] for n in names}}
        result["training"] = {"rows": rows, "runs": table}
        print(f"\nOT-CFM training steps/s (medians of {a.rounds} interleaved rounds; matmul peak "
              f"{peak[0]:.0f} → {peak[-1]:.0f} GFLOP/s):\n")
        headers = list(rows[0])
        print(markdown_table(headers, [[r[h] for h in headers] for r in rows]))
    result["matmul_peak_gflops"] = peak
    print("\nwrote", write_json("ot_coupling", result, a.out_dir))


if __name__ == "__main__":
    main()
