"""Sampler compile time against NFE: a ``lax.scan`` sampler must compile as fast for 1000 steps as for 10.

    python benchmarks/compile_time.py                   # euler, heun, dpmpp_2m at NFE 10, 100, 1000
    python benchmarks/compile_time.py --repeats 5 --solvers euler

Setup: ``flowgen.networks.MLP(hidden=256, depth=3)`` velocity model on the linear path, parameters passed with
``params=``, a small batch (``--batch``, default 64: the compiled program's size does not depend on the batch,
and a small batch keeps the steady-state run, which the cross-check subtracts, short). For heun (2 calls per
step) NFE n means n/2 steps.

Every measurement builds a fresh model function (a new ``lambda``), so ``fg.sample``'s jit cache, keyed on the
model, misses and the sampler is traced, lowered and compiled anew. Three figures per measurement:

  * **compile** (the headline): trace + lowering to MLIR + XLA backend compile of the sampler program, summed
    from JAX's own ``jax.monitoring`` duration events (``/jax/core/compile/jaxpr_trace_duration``,
    ``.../jaxpr_to_mlir_module_duration``, ``.../backend_compile_duration``) recorded during the first call.
    The sampler program is the function with the longest backend compile in that call (``_sample_jit``).
  * **first − steady**: wall time of the first call minus the median of ``--steady-reps`` later calls of the
    same function: everything a first call costs beyond a warm one, including the small eager-op compiles
    that a grid length not seen before triggers on the host (reported separately as "other compiles",
    summed from the same events).

  * **AOT**: ``jax.jit(lambda params, noise: fg.sample(fresh_model, ..., noise=noise, params=params)[0])``
    timed as ``.lower(...)`` (tracing, including the host-side grid work and its eager compiles, plus
    lowering) and ``.compile()`` (XLA) separately. The optimized HLO text of that compiled program (its
    length and its number of ``while`` loops) is a noise-free check that the program does not grow with NFE.

The headline uses the events because they isolate the sampler program from host-side work; the other two
are independent cross-checks through the public API.

Every measurement starts from ``jax.clear_caches()`` (so each is a first call in the same state: without it,
compile times drift upwards as a process accumulates executables). ``--keep-caches`` skips it: then each
measurement is a first call in a process that has already sampled, as in a sweep over NFE, where any host-side
work that compiled again for a new grid length would show up in "first − steady" and "other compiles" (it does
not: host-side grid work runs at one fixed shape, ``flowgen.paths.schedules.HOST_CHUNK``).
Measurements are interleaved and counterbalanced (repeat r runs every solver and NFE
once, in reverse order on odd repeats) and the median over ``--repeats`` is reported (and, for the headline,
the minimum: compile work is deterministic, so on a shared machine the minimum is the least disturbed
measurement). ratio = compile(NFE 1000) / compile(NFE 10); target <= 1.5. Writes
``results/benchmarks/compile_time-<UTC time>.json`` (never overwrites) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import flowgen as fg  # noqa: E402
from flowgen.networks import MLP  # noqa: E402

PATH = "linear"
TARGET = "velocity"
PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


class Recorder:
    """Collects JAX's compile-phase duration events while ``active``."""

    def __init__(self):
        self.active = False
        self.events: list[tuple[str, str, float]] = []
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event in PHASES:
            name = str(kwargs.get("fun_name", "?"))
            if name.startswith("jit(") and name.endswith(")"):
                name = name[4:-1]
            self.events.append((PHASES[event], name, float(duration)))

    def summarize(self) -> dict:
        per_fn: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for phase, name, duration in self.events:
            per_fn[name][phase] += duration
        if not any(c["compile"] for c in per_fn.values()):
            raise RuntimeError("no XLA compile was recorded: the sampler came from a cache")
        sampler = max(per_fn, key=lambda n: per_fn[n]["compile"])
        s = per_fn[sampler]
        other = {n: sum(c.values()) for n, c in per_fn.items() if n != sampler}
        return {
            "sampler_fn": sampler, "trace_s": s["trace"], "lower_s": s["lower"],
            "xla_compile_s": s["compile"], "compile_s": s["trace"] + s["lower"] + s["compile"],
            "other_s": sum(other.values()),
            "other_compiles": sum(1 for p, n, _ in self.events if p == "compile" and n != sampler),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpmpp_2m"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steady-reps", type=int, default=5)
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-caches", action="store_true",
                        help="do not jax.clear_caches() before each measurement (a process that has sampled before)")
    parser.add_argument("--out-dir", default=None, help=f"default {common.RESULTS_DIR}")
    args = parser.parse_args(argv)

    env = common.environment()
    print(f"compile_time: MLP(hidden={args.hidden}, depth={args.depth}), batch {args.batch} x {args.dim}, "
          f"path={PATH}; {env['backend']} ({env['device_kind']}, {env['cpu_count']} CPUs), jax {env['jax']}",
          flush=True)
    started = common.now_utc()
    mlp = MLP(hidden=args.hidden, depth=args.depth)
    key_noise, key_init = jax.random.split(jax.random.key(args.seed))
    noise = jax.random.normal(key_noise, (args.batch, args.dim), jnp.float32)
    params = mlp.init(key_init, noise[:2], jnp.zeros(2))

    def fresh_model():
        return lambda p, x, t: mlp.apply(p, x, t)      # a new function object: a jit cache miss

    def call(model, solver, steps):
        return fg.sample(model, PATH, target=TARGET, solver=solver, num_steps=steps, noise=noise,
                         params=params)

    calls_per_step = {s: int(call(fresh_model(), s, 2)[1]["nfe"]) // 2 for s in args.solvers}  # also warms up
    recorder = Recorder()
    samples = collections.defaultdict(list)
    configs = [(nfe, solver) for nfe in args.nfe for solver in args.solvers if nfe % calls_per_step[solver] == 0]
    for repeat in range(args.repeats):
        for nfe, solver in configs if repeat % 2 == 0 else configs[::-1]:
            steps = nfe // calls_per_step[solver]
            model = fresh_model()
            if not args.keep_caches:
                jax.clear_caches()
            gc.collect()
            recorder.events.clear()
            recorder.active = True
            first = common.time_call(lambda model=model, solver=solver, steps=steps:
                                     call(model, solver, steps)[0])
            recorder.active = False
            m = recorder.summarize()
            _, info = call(model, solver, steps)
            if int(info["nfe"]) != nfe:
                raise RuntimeError(f"{solver}: {steps} steps made {int(info['nfe'])} calls, not {nfe}")
            steady = common.median([common.time_call(lambda model=model, solver=solver, steps=steps:
                                                     call(model, solver, steps)[0])
                                    for _ in range(args.steady_reps)])
            aot_model = fresh_model()
            if not args.keep_caches:
                jax.clear_caches()
            gc.collect()
            fn = jax.jit(lambda p, x, model=aot_model, solver=solver, steps=steps: fg.sample(
                model, PATH, target=TARGET, solver=solver, num_steps=steps, noise=x, params=p)[0])
            start = time.perf_counter()
            lowered = fn.lower(params, noise)
            lowered_at = time.perf_counter()
            compiled = lowered.compile()
            aot_lower, aot_compile = lowered_at - start, time.perf_counter() - lowered_at
            hlo = compiled.as_text() or ""
            m |= {"repeat": repeat, "first_call_s": first, "steady_s": steady,
                  "first_minus_steady_s": first - steady, "aot_lower_s": aot_lower,
                  "aot_compile_s": aot_compile, "aot_total_s": aot_lower + aot_compile,
                  "hlo_chars": len(hlo), "hlo_while_loops": hlo.count(" while(")}
            samples[(solver, nfe)].append(m)
            print(f"  [{repeat}] {solver:>9s} NFE {nfe:5d} ({steps:4d} steps): compile "
                  f"{m['compile_s'] * 1e3:7.1f} ms (trace {m['trace_s'] * 1e3:.1f}, lower "
                  f"{m['lower_s'] * 1e3:.1f}, XLA {m['xla_compile_s'] * 1e3:.1f}); first − steady "
                  f"{m['first_minus_steady_s'] * 1e3:7.1f} ms; other compiles {m['other_compiles']} "
                  f"({m['other_s'] * 1e3:.1f} ms); AOT lower {aot_lower * 1e3:.1f} + compile "
                  f"{aot_compile * 1e3:.1f} ms", flush=True)

    rows = []
    for (solver, nfe), ms in samples.items():
        med = lambda k, ms=ms: common.median([m[k] for m in ms])
        rows.append({"solver": solver, "nfe": nfe, "num_steps": nfe // calls_per_step[solver],
                     **{k: med(k) for k in ("compile_s", "trace_s", "lower_s", "xla_compile_s",
                                             "first_minus_steady_s", "steady_s", "aot_lower_s",
                                             "aot_compile_s", "aot_total_s")},
                     "compile_min_s": min(m["compile_s"] for m in ms),
                     "hlo_chars": ms[0]["hlo_chars"], "hlo_while_loops": ms[0]["hlo_while_loops"],
                     "other_s": med("other_s"), "other_compiles": ms[0]["other_compiles"],
                     "all": ms})
    ratios = []
    lo, hi = min(args.nfe), max(args.nfe)
    for solver in args.solvers:
        by_nfe = {r["nfe"]: r for r in rows if r["solver"] == solver}
        if lo in by_nfe and hi in by_nfe:
            ratios.append({
                "solver": solver, "nfe_low": lo, "nfe_high": hi,
                "compile_ratio": by_nfe[hi]["compile_s"] / by_nfe[lo]["compile_s"],
                "compile_min_ratio": by_nfe[hi]["compile_min_s"] / by_nfe[lo]["compile_min_s"],
                "xla_compile_ratio": by_nfe[hi]["xla_compile_s"] / by_nfe[lo]["xla_compile_s"],
                "first_minus_steady_ratio": (by_nfe[hi]["first_minus_steady_s"]
                                             / by_nfe[lo]["first_minus_steady_s"]),
                "aot_ratio": by_nfe[hi]["aot_total_s"] / by_nfe[lo]["aot_total_s"],
                "hlo_size_ratio": by_nfe[hi]["hlo_chars"] / max(by_nfe[lo]["hlo_chars"], 1),
            })

    table = common.markdown_table(
        ["solver", "NFE", "steps", "compile (ms)", "min (ms)", "trace (ms)", "lower (ms)", "XLA compile (ms)",
         "first − steady (ms)", "other compiles (ms, count)", "AOT lower + compile (ms)",
         "optimized HLO (chars, while loops)"],
        [[r["solver"], r["nfe"], r["num_steps"], r["compile_s"] * 1e3, r["compile_min_s"] * 1e3,
          r["trace_s"] * 1e3, r["lower_s"] * 1e3, r["xla_compile_s"] * 1e3, r["first_minus_steady_s"] * 1e3,
          f"{r['other_s'] * 1e3:.4g} ({r['other_compiles']})",
          f"{r['aot_lower_s'] * 1e3:.4g} + {r['aot_compile_s'] * 1e3:.4g}",
          f"{r['hlo_chars']}, {r['hlo_while_loops']}"] for r in rows],
    )
    ratio_table = common.markdown_table(
        ["solver", f"compile ratio {hi}/{lo}", "ratio of minima", "XLA-only ratio", "first − steady ratio",
         "AOT ratio", "HLO size ratio", f"≤ {args.target}"],
        [[r["solver"], r["compile_ratio"], r["compile_min_ratio"], r["xla_compile_ratio"],
          r["first_minus_steady_ratio"], r["aot_ratio"], r["hlo_size_ratio"],
          "yes" if r["compile_ratio"] <= args.target else "no"]
         for r in ratios],
    )
    print("\n" + table + "\n\n" + ratio_table)
    out = common.write_json("compile_time", {
        "benchmark": "compile_time", "started_utc": started, "finished_utc": common.now_utc(),
        "config": vars(args) | {"path": PATH, "target_prediction": TARGET, "dtype": "float32"},
        "compile_definition": "trace + lower + XLA compile of the sampler program, from jax.monitoring "
                              "events of the first call with a fresh model function; median over repeats",
        "environment": env, "rows": rows, "ratios": ratios, "markdown": table + "\n\n" + ratio_table,
    }, args.out_dir)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
