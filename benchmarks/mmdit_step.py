"""MM-DiT training step: the fraction of the machine's matmul peak it reaches (model FLOPs utilisation on a CPU).

    python benchmarks/mmdit_step.py                                    # hidden 384, depth 4, 32×32×16 latents
    python benchmarks/mmdit_step.py --hidden 1536 --depth 24 --size 64 --batch 32 --dtype bfloat16   # an accelerator

The step is ``configs/sd3_mmdit.py``'s (rectified flow, logit-normal times, caption dropout, AdamW, EMA) on seeded
mock text-conditioned latents (``data.mock``) of the given size, with a smaller MM-DiT (``--hidden``, ``--depth``,
heads of 64; patch 2; ``--context_len`` × ``--context_dim`` context, ``--pooled_dim`` pooled vector). FLOPs per step
are XLA's cost analysis of the compiled step (forward, backward, optimiser and EMA: what the hardware executes,
attention included, no remat). The step is compiled and run twice, then ``--rounds`` rounds of ``--steps``
consecutive steps are timed; reported: the median seconds per step, achieved GFLOP/s and that over the machine's
float32 matmul peak (``common.matmul_peak_gflops``: a large square matmul, what a dense layer can reach here), with
``uptime``'s load before and after. On a GPU or TPU the same ratio against the chip's datasheet bf16 peak
(``--peak_tflops``) is the MFU. Writes ``results/benchmarks/mmdit_step-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
from fewstep_step_cost import uptime  # noqa: E402

from flowgen.train.run import Run  # noqa: E402
from flowgen.train.step import make_train_step  # noqa: E402


def config(args):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sd3_mmdit.py")
    spec = importlib.util.spec_from_file_location("sd3_mmdit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("")
    c.data.mock = True
    c.data.kwargs = {"shape": (args.size, args.size, 16), "context_len": args.context_len,
                     "context_dim": args.context_dim, "pooled_dim": args.pooled_dim}
    c.data.batch_size = args.batch
    c.model.kwargs = {"hidden": args.hidden, "depth": args.depth, "num_heads": args.hidden // 64, "patch_size": 2,
                      "sample_size": args.size, "pos_embed_max_size": args.size // 2, "remat": False}
    c.model.dtype = args.dtype
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="latent side (16 channels)")
    parser.add_argument("--context_len", type=int, default=128)
    parser.add_argument("--context_dim", type=int, default=512)
    parser.add_argument("--pooled_dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the chip's datasheet peak for --dtype (accelerators); default: the measured matmul peak")
    args = parser.parse_args()
    if args.hidden % 64:
        raise SystemExit(f"error: --hidden {args.hidden} must be a multiple of 64 (heads of 64)")

    load_before = uptime()
    peak = args.peak_tflops * 1e3 if args.peak_tflops else common.matmul_peak_gflops()
    run = Run.from_config(config(args))
    step = jax.jit(make_train_step(run.loss_fn(), run.optimizer, run.schedule, run.decays))
    batch = {k: jax.random.normal(jax.random.key(i), v.shape, v.dtype)
             for i, (k, v) in enumerate(run.abstract_batch().items())}
    key = jax.random.key(1)
    state = run.init_state()
    compiled = step.lower(state, batch, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    for _ in range(2):
        state, _ = compiled(state, batch, key)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.rounds):
        holder = {}

        def go(holder=holder, s=state):
            for _ in range(args.steps):
                s, metrics = compiled(s, batch, key)
            holder["s"] = s
            return s, metrics

        times.append(common.time_call(go) / args.steps)
        state = holder["s"]
    sec = common.median(times)
    achieved = flops / sec / 1e9
    tokens = (args.size // 2) ** 2
    print(f"load before: {load_before}")
    print(f"MM-DiT hidden {args.hidden}, depth {args.depth}, {params:,} parameters; {tokens} image + "
          f"{args.context_len} text tokens, batch {args.batch}, {args.dtype}, {jax.devices()[0].device_kind}")
    print(common.markdown_table(
        ["FLOPs / step (XLA)", "s / step (median)", "GFLOP/s", "peak GFLOP/s", "fraction of peak"],
        [[f"{flops:.4g}", f"{sec:.4f}", f"{achieved:.1f}", f"{peak:.1f}", f"{achieved / peak:.3f}"]]))
    print(f"rounds (s/step): {', '.join(f'{t:.4f}' for t in times)}")
    load_after = uptime()
    print(f"load after: {load_after}")
    common.write_json("mmdit_step", {"args": vars(args), "params": params, "flops_per_step": flops,
                                     "seconds_per_step": times, "median": sec, "gflops": achieved,
                                     "peak_gflops": peak, "fraction": achieved / peak, "load_before": load_before,
                                     "load_after": load_after, "environment": common.environment()})


if __name__ == "__main__":
    main()
