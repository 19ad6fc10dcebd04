"""Reflow pair generation (``flowgen.reflow.generate_pairs``) against its sampler alone, side by side in one run.

    python benchmarks/reflow_pairs.py                                   # the exact 8-Gaussian flow as the teacher
    python benchmarks/reflow_pairs.py --teacher results/digits_fewstep/models/rf --num_pairs 8192

``generate_pairs`` solves one chunk at a time (one jitted solve of the whole chunk, sharded over the devices),
writes each finished chunk to ``FILE.parts/`` (resumability) and the pairs file at the end. The baseline is the same
teacher's sampler on the same chunks (same noise, solver, steps), its result fetched to the host, nothing written.
The ratio is the cost of resumability and provenance; the target is ≈ 1 (no host round trip per solver step).

Protocol: both are compiled and run once first; then ``--rounds`` rounds in alternating order, each writing a fresh
file. Reported: median seconds, pairs per second and the ratio, with ``uptime``'s load before and after and the
machine's float32 matmul peak (``common.matmul_peak_gflops``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from flowgen import reflow  # noqa: E402


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="", help="a training workdir (default: the exact 8-Gaussian flow)")
    parser.add_argument("--num_pairs", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--solver", default="rk4")
    parser.add_argument("--num_steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    print(f"load before: {uptime()}")
    peak = common.matmul_peak_gflops()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s on {jax.devices()[0].device_kind} ({os.cpu_count()} CPUs)")
    teacher = reflow.workdir_teacher(args.teacher) if args.teacher else reflow.analytic_teacher("8gaussians")
    shape = teacher.element_shape
    chunks = -(-args.num_pairs // args.chunk)
    scratch = tempfile.mkdtemp()

    def write(tag):
        file = os.path.join(scratch, f"{tag}.npz")
        reflow.generate_pairs(teacher, file, num_pairs=args.num_pairs, solver=args.solver, num_steps=args.num_steps,
                              chunk=args.chunk)
        os.remove(file)

    def sampler_only():
        for i in range(chunks):
            x0 = teacher.source.sample(jax.random.fold_in(jax.random.key(0), i), (args.chunk, *shape), jnp.float32)
            x1, _ = teacher.sample(x0, None, jax.random.fold_in(jax.random.key(0), 2**30 + i), args.solver,
                                   args.num_steps, "uniform")
            np.asarray(jax.device_get(x1))

    write("warmup")
    sampler_only()
    times = {"generate_pairs": [], "sampler only": []}
    for r in range(args.rounds):
        order = ["generate_pairs", "sampler only"][:: 1 if r % 2 == 0 else -1]
        for name in order:
            times[name].append(common.time_call((lambda r=r: write(f"r{r}")) if name == "generate_pairs"
                                                else sampler_only))
    shutil.rmtree(scratch)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = [[k, med[k], args.num_pairs / med[k], med[k] / med["sampler only"]] for k in times]
    print(f"{args.num_pairs} pairs, chunks of {args.chunk}, {args.solver} at {args.num_steps} steps, "
          f"teacher {args.teacher or 'exact 8gaussians'}, {args.rounds} rounds")
    print(common.markdown_table(["", "seconds (median)", "pairs/s", "ratio to the sampler alone"], rows))
    print(f"load after: {uptime()}")


if __name__ == "__main__":
    main()
