"""Cost of one training step of the few-step methods relative to flow matching, side by side in one run.

    python benchmarks/fewstep_step_cost.py                       # MLP 3×256, batch 256, 2-D data
    python benchmarks/fewstep_step_cost.py --hidden 512 --batch 1024 --rounds 9
    python benchmarks/fewstep_step_cost.py --network digits_unet --batch 128   # configs/digits_rf.py's U-Net, 8×8×1

Each method is built from the same config (``Run.from_config``: MLP(hidden, depth), Adam, one EMA) and its whole
jitted train step (loss, gradient, optimiser, EMA; ``make_train_step``) is timed. MeanFlow and shortcut networks have
one more time embedder (the extra time input: 2·(H² + H) parameters) — the networks differ by exactly that, which on a
small MLP is a large share of its FLOPs; the row ``fm_extra_embedder`` (flow matching on the larger network) separates
the two costs.

Protocol. Every step is compiled and run first. Then ``--rounds`` rounds; in each, every method runs ``--steps``
consecutive steps (timed together, waiting for the result), in a rotated order, so a drifting shared machine affects
all alike. Reported: the median seconds per step over rounds and its ratio to flow matching's, also the ratio of
the per-method minimum (robust to interference). ``uptime``'s load is printed before and after, and the machine's
float32 matmul peak (``common.matmul_peak_gflops``) before.

sCT (``consistency``) runs on its own path and prediction (trig, "v"; the time sampler "edm") on the same network
with no extra time input: one JVP of the stop-gradient network on the whole batch, one forward and one backward of
the online network: about (3 + 2)/3 ≈ 1.7 on the network alone.

What the ratio should be: flow matching is one forward and one backward pass of the batch. MeanFlow runs a JVP
(forward + tangent, about 2 forwards) on the r ≠ t fraction ρ of the batch and a plain forward on the rest, then a
backward through the primal only: about 1 + ρ forward-equivalents more than flow matching's ~3 → (3 + ρ)/3 ≈ 1.1
for ρ = 1/4 on the network alone. Shortcut models add two target forwards (no backward) on the self-consistency
fraction f: about (3 + 2f)/3 ≈ 1.2 for f = 1/4. On a small MLP fixed per-step costs (optimiser, EMA, dispatch) dilute
both ratios towards 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from flowgen.train.config import base_config  # noqa: E402
from flowgen.train.run import Run  # noqa: E402
from flowgen.train.step import make_train_step  # noqa: E402

#: label -> (method, options). "fm_extra_embedder" is MeanFlow at ratio 0, p 0: flow matching exactly (as
#: tests/test_methods_fewstep.py proves) on the network with the extra time embedder, so that the ratios to it isolate
#: what the methods themselves cost from what the larger network costs.
METHODS = {
    "flow_matching": ("flow_matching", {}),
    "fm_extra_embedder": ("meanflow", {"ratio": 0.0, "p": 0.0}),
    "meanflow": ("meanflow", {"ratio": 0.25, "p": 0.5}),
    "shortcut": ("shortcut", {"self_consistency_fraction": 0.25, "target_params": "ema"}),
    "consistency (sCT)": ("consistency", {"mode": "sct", "warmup_steps": 1000}),
}
#: The network settings: (data name, element shape, model name, kwargs).
NETWORKS = {
    "mlp": ("8gaussians", (2,), "mlp", None),
    "digits_unet": ("flowgen_digits", (8, 8, 1), "unet",
                    {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 2, "attn_resolutions": (4,), "dropout": 0.1}),
}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def build_step(method: str, options: dict, network: str, hidden: int, depth: int, batch: int):
    data_name, shape, model, kwargs = NETWORKS[network]
    c = base_config()
    c.data.name = data_name
    c.data.batch_size = batch
    c.model.name = model
    c.model.kwargs = kwargs or {"hidden": hidden, "depth": depth}
    c.method.name = method
    c.method.kwargs = options
    if method == "consistency":
        c.path.name, c.loss.target, c.loss.time_sampler = "trig", "v", "edm"
    run = Run.from_config(c)
    step = jax.jit(make_train_step(run.loss_fn(), run.optimizer, run.schedule, run.decays))
    state = run.init_state()
    data = jax.random.normal(jax.random.key(0), (batch, *shape))
    key = jax.random.key(1)

    def many(state, n):
        for _ in range(n):
            state, metrics = step(state, {"x": data}, key)
        return state, metrics

    state, _ = many(state, 2)                      # compile and warm up
    jax.block_until_ready(state)
    return many, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=tuple(NETWORKS), default="mlp")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="consecutive steps timed together")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"load before: {uptime()}")
    peak = common.matmul_peak_gflops()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s on {jax.devices()[0].device_kind} ({os.cpu_count()} CPUs)")
    steps = {label: build_step(m, o, args.network, args.hidden, args.depth, args.batch)
             for label, (m, o) in METHODS.items()}
    states = {m: s for m, (_, s) in steps.items()}
    times = {m: [] for m in METHODS}
    names = list(METHODS)
    for r in range(args.rounds):
        for m in names[r % len(names):] + names[:r % len(names)]:
            many = steps[m][0]
            holder = {}

            def go(m=m, many=many, holder=holder):
                holder["s"], metrics = many(states[m], args.steps)
                return holder["s"], metrics

            times[m].append(common.time_call(go) / args.steps)
            states[m] = holder["s"]
    med = {m: np.median(times[m]) for m in METHODS}
    low = {m: np.min(times[m]) for m in METHODS}
    rows = [[m, med[m] * 1e3, med[m] / med["flow_matching"], low[m] / low["flow_matching"],
             med[m] / med["fm_extra_embedder"]] for m in METHODS]
    net = f"MLP {args.depth}×{args.hidden}" if args.network == "mlp" else f"{args.network} {NETWORKS[args.network][3]}"
    print(f"{net}, batch {args.batch}, {args.rounds} rounds of {args.steps} steps")
    print(common.markdown_table(["method", "ms/step (median)", "ratio to FM (median)", "ratio to FM (min)",
                                 "ratio to FM on the same net (median)"], rows))
    print(f"load after: {uptime()}")


if __name__ == "__main__":
    main()
