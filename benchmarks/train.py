"""Training throughput: steps/s and examples/s of the real train step (jit, shardings, donation) for the 2-D MLP
(batch 256) and the digits U-Net (batch 128), with compile time reported separately and memory per step
(XLA's compiled memory analysis). Prints a Markdown table and writes results/benchmarks/train-<UTC time>.json.

    python benchmarks/train.py [--steps 200] [--configs toy2d_rf,digits_rf]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from flowgen.train import loop, sharding  # noqa: E402
from flowgen.train.step import jit_train_step, make_train_step  # noqa: E402


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def measure(name: str, steps: int, data_dir: str) -> dict:
    config = load_config(name)
    config.data.data_dir = data_dir
    setup = loop.build(config)
    mesh = setup.mesh
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    state = jax.jit(setup.init_fn, out_shardings=setup.state_sharding)(setup.keys[0])
    step_fn = jit_train_step(make_train_step(setup.loss_fn, setup.optimizer, setup.schedule, setup.decays),
                             setup.state_sharding, batch_sh, repl)
    batches = [sharding.global_batch(setup.data.next(), batch_sh) for _ in range(8)]
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batches[0], setup.keys[1]).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    state, m = compiled(state, batches[0], setup.keys[1])
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = compiled(state, batches[i % len(batches)], setup.keys[1])
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return {
        "config": name, "batch": config.data.batch_size, "params": params, "compile_s": compile_s,
        "steps_per_s": steps / dt, "examples_per_s": steps * config.data.batch_size / dt,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "argument_bytes": getattr(mem, "argument_size_in_bytes", None),
        "output_bytes": getattr(mem, "output_size_in_bytes", None), "final_loss": float(m["loss"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--configs", default="toy2d_rf,digits_rf")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "results", "data"))
    args = parser.parse_args(argv)
    rows = [measure(name, args.steps, args.data_dir) for name in args.configs.split(",")]
    print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}\n")
    print("| config | batch | params | compile s | steps/s | examples/s | temp MB/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        temp = r["temp_bytes"] / 2**20 if r["temp_bytes"] is not None else float("nan")
        print(f"| {r['config']} | {r['batch']} | {r['params']:,} | {r['compile_s']:.2f} | {r['steps_per_s']:.1f} | "
              f"{r['examples_per_s']:.0f} | {temp:.1f} |")
    out_dir = os.path.join(REPO, "results", "benchmarks")
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(out_dir, f"train-{stamp}.json"), "x") as f:
        json.dump({"rows": rows, "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                   "platform": platform.platform(), "steps": args.steps}, f, indent=2)


if __name__ == "__main__":
    main()
