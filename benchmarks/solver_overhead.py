"""Sampler overhead: time of ``fg.sample`` / (NFE × time of one jitted forward pass of the network).

    python benchmarks/solver_overhead.py               # MLP(256, depth 3), 10,000 2-D points, float32
    python benchmarks/solver_overhead.py --nfe 10 100 1000 --solvers euler --rounds 9

The network is ``flowgen.networks.MLP(hidden, depth)`` predicting velocity on the linear path; its parameters
go to ``fg.sample(..., params=...)`` as a traced argument. For each solver and NFE (network calls per sample,
checked against ``info["nfe"]``; steps = NFE / calls per step) it reports

    ratio = time(fg.sample) / (NFE × time(one jitted forward pass on the same batch))

A ratio of 1 means the sampler costs exactly its network calls; the target is <= 1.05.

Protocol. Everything is compiled and run once before timing. Then ``--rounds`` rounds are run; each round
times one sample call bracketed by ``--fwd-reps`` forward passes before and after it (the round's forward
time is the mean of the two medians), and the round's ratio uses that round's forward time, so a machine
whose speed drifts (shared CPUs, turbo) affects both sides alike. Reported: medians over rounds (``ratio``)
and, as a check robust to interference, min(sample) / (NFE × min(forward)). Every timing waits for the result
(``jax.block_until_ready``); the forward pass gets t as a traced (batch,) array.

Where the time goes (unless ``--no-baseline``):
  * ``ideal_scan``: a hand-written, jitted ``lax.scan`` of NFE Euler steps of the same network: the floor for
    NFE network calls in one compiled program; ratio(solver) − ratio(ideal_scan) is the sampler's own cost.
  * Fixed cost per call: ``fg.sample`` minus ``ideal_scan`` on a tiny batch (``--small-batch``, default 8),
    where the network costs next to nothing: the host-side work of a call (validation, grid, dispatch).

Writes ``results/benchmarks/solver_overhead-<UTC time>.json`` (never overwrites); prints Markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import flowgen as fg  # noqa: E402
from flowgen.networks import MLP  # noqa: E402

PATH = "linear"
TARGET = "velocity"


def ideal_scan(apply):
    """jit'd Euler loop written by hand: ``x ← x + (t1 − t0)·u(x, t0)`` under ``lax.scan``."""

    @jax.jit
    def run(params, x, grid):
        def body(x, times):
            t0, t1 = times
            u = apply(params, x, jnp.broadcast_to(t0, (x.shape[0],)))
            return x + (t1 - t0) * u, None

        return jax.lax.scan(body, x, (grid[:-1], grid[1:]))[0]

    return run


def calls_per_step(model, params, solver, noise) -> int:
    _, info = fg.sample(model, PATH, target=TARGET, solver=solver, num_steps=2, noise=noise, params=params)
    return int(info["nfe"]) // 2


def measure(args) -> dict:
    mlp = MLP(hidden=args.hidden, depth=args.depth)
    key_noise, key_init = jax.random.split(jax.random.key(args.seed))
    noise = jax.random.normal(key_noise, (args.batch, args.dim), jnp.float32)
    small = noise[: args.small_batch]
    params = mlp.init(key_init, noise[:2], jnp.zeros(2))
    model = lambda p, x, t: mlp.apply(p, x, t)   # one function object: fg.sample's jit cache hits
    fwd = jax.jit(model)
    t_fwd = jnp.full((args.batch,), 0.5, jnp.float32)
    forward = lambda: fwd(params, noise, t_fwd)
    common.time_call(forward)
    common.time_call(forward)

    ideal = ideal_scan(model)

    def sampler(solver, steps, x):
        x, _ = fg.sample(model, PATH, target=TARGET, solver=solver, num_steps=steps, noise=x, params=params)
        return x

    rows, breakdown = [], []

    def forward_time():
        return common.median([common.time_call(forward) for _ in range(args.fwd_reps)])

    def timed_rounds(run):
        fwd_times, run_times = [], []
        for _ in range(args.rounds):
            before = forward_time()
            run_times.append(common.time_call(run))
            fwd_times.append(0.5 * (before + forward_time()))
        return fwd_times, run_times

    def row(name, nfe, steps, fwd_times, run_times, measured_nfe):
        ratios = [r / (nfe * f) for r, f in zip(run_times, fwd_times, strict=True)]
        result = {
            "solver": name, "nfe": nfe, "num_steps": steps, "measured_nfe": measured_nfe,
            "sample_s": common.median(run_times), "forward_s": common.median(fwd_times),
            "ratio": common.median(ratios),
            "ratio_of_minima": min(run_times) / (nfe * min(fwd_times)),
            "sample_s_all": run_times, "forward_s_all": fwd_times, "ratio_all": ratios,
        }
        print(f"  {name:>10s} NFE {nfe:5d}: sample {result['sample_s'] * 1e3:9.2f} ms, forward "
              f"{result['forward_s'] * 1e3:7.3f} ms, ratio {result['ratio']:.4f} "
              f"(min/min {result['ratio_of_minima']:.4f})", flush=True)
        return result

    for nfe in args.nfe:
        if not args.no_baseline:
            grid = jnp.linspace(0.0, 1.0, nfe + 1, dtype=jnp.float32)
            run = lambda grid=grid: ideal(params, noise, grid)
            common.time_call(run)
            rows.append(row("ideal_scan", nfe, nfe, *timed_rounds(run), nfe))
        for solver in args.solvers:
            cps = calls_per_step(model, params, solver, small)
            if nfe % cps:
                print(f"  skip {solver} at NFE {nfe}: not a multiple of its {cps} calls per step")
                continue
            steps = nfe // cps
            run = functools.partial(sampler, solver, steps, noise)
            _, info = fg.sample(model, PATH, target=TARGET, solver=solver, num_steps=steps, noise=noise,
                                params=params)
            measured = int(info["nfe"])
            if measured != nfe:
                raise RuntimeError(f"{solver} with {steps} steps made {measured} calls, expected {nfe}")
            common.time_call(run)
            rows.append(row(solver, nfe, steps, *timed_rounds(run), measured))
            if not args.no_baseline:
                grid = jnp.linspace(0.0, 1.0, nfe + 1, dtype=jnp.float32)
                small_sample = functools.partial(sampler, solver, steps, small)
                small_ideal = lambda grid=grid: ideal(params, small, grid)
                common.time_call(small_sample)
                common.time_call(small_ideal)
                ts, ti = [], []
                for _ in range(args.small_reps):
                    ts.append(common.time_call(small_sample))
                    ti.append(common.time_call(small_ideal))
                fixed = common.median(ts) - common.median(ti)
                breakdown.append({
                    "solver": solver, "nfe": nfe, "small_batch": args.small_batch,
                    "sample_small_s": common.median(ts), "ideal_small_s": common.median(ti),
                    "fixed_cost_s": fixed, "fixed_share_of_sample": fixed / rows[-1]["sample_s"],
                })

    return {"rows": rows, "breakdown": breakdown}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpmpp_2m"])
    parser.add_argument("--rounds", type=int, default=7, help="timed sample calls per configuration")
    parser.add_argument("--fwd-reps", type=int, default=5, help="forward passes timed per round")
    parser.add_argument("--small-batch", type=int, default=8)
    parser.add_argument("--small-reps", type=int, default=21)
    parser.add_argument("--no-baseline", action="store_true", help="skip ideal_scan and the fixed-cost table")
    parser.add_argument("--target", type=float, default=1.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help=f"default {common.RESULTS_DIR}")
    args = parser.parse_args(argv)

    env = common.environment()
    print(f"solver_overhead: MLP(hidden={args.hidden}, depth={args.depth}), {args.batch} x {args.dim} "
          f"float32, path={PATH}, target={TARGET}; {env['backend']} ({env['device_kind']}, "
          f"{env['cpu_count']} CPUs), jax {env['jax']}", flush=True)
    started = common.now_utc()
    result = measure(args)

    table = common.markdown_table(
        ["solver", "NFE", "steps", "sample (ms)", "forward (ms)", "ratio", "ratio min/min", f"≤ {args.target}"],
        [[r["solver"], r["nfe"], r["num_steps"], r["sample_s"] * 1e3, r["forward_s"] * 1e3, r["ratio"],
          r["ratio_of_minima"], "yes" if r["ratio"] <= args.target else "no"] for r in result["rows"]],
    )
    print("\n" + table)
    if result["breakdown"]:
        print(f"\nFixed cost per call (batch {args.small_batch}: fg.sample − hand-written scan):\n")
        print(common.markdown_table(
            ["solver", "NFE", "fg.sample (ms)", "ideal_scan (ms)", "fixed cost (ms)",
             f"share of sample time at batch {args.batch}"],
            [[b["solver"], b["nfe"], b["sample_small_s"] * 1e3, b["ideal_small_s"] * 1e3,
              b["fixed_cost_s"] * 1e3, f"{100 * b['fixed_share_of_sample']:.2f} %"]
             for b in result["breakdown"]],
        ))
    out = common.write_json("solver_overhead", {
        "benchmark": "solver_overhead", "started_utc": started, "finished_utc": common.now_utc(),
        "config": vars(args) | {"path": PATH, "target": TARGET, "dtype": "float32"},
        "ratio_definition": "median over rounds of sample_s / (nfe * forward_s), forward_s = mean of the "
                            "median forward times just before and just after that round's sample call",
        "environment": env, **result, "markdown": table,
    }, args.out_dir)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
