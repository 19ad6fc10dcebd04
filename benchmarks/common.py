"""Shared helpers for the benchmark scripts: timing, side-by-side rounds with a worker subprocess, environment record,
Markdown tables, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn``, including waiting for every array it returns."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def matmul_gflops(n: int, chain: int = 1, reps: int = 5) -> float:
    """Float32 GFLOP/s of ``chain`` chained (n × n) @ (n × n) products in one jitted program (2·n³·chain FLOPs),
    best of ``reps`` timed calls after one warm-up call. The multiplier is orthogonal, so values stay bounded."""
    w = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))[0], jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x, w: jax.lax.fori_loop(0, chain, lambda i, x: x @ w, x))
    time_call(lambda: f(x, w))
    return 2 * n**3 * chain / min(time_call(lambda: f(x, w)) for _ in range(reps)) / 1e9


def matmul_peak_gflops() -> float:
    """The machine's float32 large-matmul peak: the best of 1024³ (8 chained) and 2048³ (4 chained), best of 10.

    One 2048³ product timed 5 times read 130 GFLOP/s in one run and 208 a few minutes later on the same machine;
    two shapes and longer, more repeats make the figure stable (callers may also take it before and after).
    """
    return max(matmul_gflops(1024, 8, 10), matmul_gflops(2048, 4, 10))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    """``uptime``'s line (load averages over 1, 5 and 15 minutes): print it before and after every measurement."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {load_average()}"


def start_worker(python: str, script: str, *args: str) -> tuple[subprocess.Popen, dict]:
    """Start ``python -c script *args``, a worker timing the other side of a comparison (e.g. PyTorch, which is no
    flowgen dependency), and wait until it is ready; returns the process and the JSON line it printed.

    The worker's protocol: once warmed up it prints one JSON line (what it runs: versions, threads); then, for every
    line it reads on stdin, it runs once and prints the seconds that took; it exits when stdin is closed.
    """
    worker = subprocess.Popen([python, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    return worker, json.loads(worker.stdout.readline())


def interleaved_rounds(run: Callable[[], object], worker: subprocess.Popen | None,
                       rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of ``rounds`` rounds alternating one call of ``run`` (``time_call``) and one run of ``worker`` (see
    ``start_worker``), so a shared machine's drift hits both alike; then closes the worker. Without a worker: ``run``
    alone, and the second list is empty."""
    run_s, worker_s = [], []
    for _ in range(rounds):
        run_s.append(time_call(run))
        if worker:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            worker_s.append(float(worker.stdout.readline()))
    if worker:
        worker.stdin.close()
        worker.wait(timeout=60)
    return run_s, worker_s


def environment() -> dict:
    """What the numbers depend on: versions, backend, devices, CPU count, git commit."""
    import flax
    import jaxlib
    import numpy as np

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                 timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    device = jax.devices()[0]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>-<UTC timestamp>.json``; never overwrites an existing file."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        path = out_dir / (f"{name}-{stamp}.json" if attempt == 0 else f"{name}-{stamp}-{attempt}.json")
        try:
            with open(path, "x") as f:          # "x": fail rather than overwrite
                json.dump(payload, f, indent=2)
                f.write("\n")
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free file name for {name} in {out_dir}")


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
