"""The torchcfm side of ``tong_2d.py``: the authors' own library on the same batches, scored on the same points.

Runs in its own environment (torch, torchcfm and POT; never a flowgen dependency), after ``tong_2d.py`` has written
``WORKDIR/protocol/``:

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 torchcfm==1.0.7 pot
    /tmp/torchvenv/bin/python experiments/reproductions/tong_2d_torchcfm.py --workdir results/tong_2d --steps 2000

For every (task, method, seed) it trains torchcfm's ``MLP(dim=2, w=64, time_varying=True)`` with torchcfm's
matcher (``ConditionalFlowMatcher``, ``ExactOptimalTransportConditionalFlowMatcher``,
``SchrodingerBridgeConditionalFlowMatcher(ot_method="exact")``, ``TargetConditionalFlowMatcher``; 2-RF as the
authors' runner does it: the first half I-CFM, then the same network on pairs (x₀, Euler-100 of the frozen first
stage) drawn on the fly) with AdamW(1e-3, weight decay 1e-5), on the protocol's training batches (the Gaussian
source drawn by torch with the run's seed), and writes the Euler-100 trajectory of the evaluation points to
``runs/<task>/<method>/torchcfm-<seed>-<steps>.npz`` with the training wall time. ``tong_2d.py --report`` scores
both libraries' trajectories with the same code. A run already written is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torchcfm import conditional_flow_matching as cfm
from torchcfm.models.models import MLP

METHODS = ("icfm", "otcfm", "sbcfm", "fm", "2rf")


def matcher(method: str, sigma: float):
    return {"icfm": lambda: cfm.ConditionalFlowMatcher(sigma=sigma),
            "2rf": lambda: cfm.ConditionalFlowMatcher(sigma=sigma),
            "otcfm": lambda: cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=sigma),
            "sbcfm": lambda: cfm.SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="exact"),
            "fm": lambda: cfm.TargetConditionalFlowMatcher(sigma=sigma)}[method]()


@torch.no_grad()
def euler(net, x0: torch.Tensor, steps: int, keep: bool = False):
    times = torch.linspace(0.0, 1.0, steps + 1)
    x, xs = x0, [x0]
    for k in range(steps):
        t = torch.full((x.shape[0], 1), float(times[k]))
        x = x + (times[k + 1] - times[k]) * net(torch.cat([x, t], dim=-1))
        if keep:
            xs.append(x)
    return torch.stack(xs) if keep else x


def train(method, data, steps, sigma, batch, euler_steps, seed):
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (torchcfm's plan sampler draws from numpy's global generator)
    net = MLP(dim=2, w=64, time_varying=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    fm = matcher(method, sigma)
    x1_all = torch.from_numpy(data["train_x1"])
    x0_all = torch.from_numpy(data["train_x0"]) if "train_x0" in data else None
    frozen = None
    for step in range(steps):
        if method == "2rf" and step == steps // 2:
            frozen = copy.deepcopy(net).eval()
        x1 = x1_all[step]
        x0 = x0_all[step] if x0_all is not None else torch.randn(batch, 2)
        if frozen is not None:
            x1 = euler(frozen, x0, euler_steps)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = net(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="results/tong_2d")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--seeds", default="42,43,44,45,46")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.workdir)
    meta = json.loads((root / "protocol" / "protocol.json").read_text())
    tasks = args.tasks.split(",") if args.tasks else list(meta["w2_squared"])
    for seed in map(int, args.seeds.split(",")):
        for task in tasks:
            for method in args.methods.split(","):
                if method == "fm" and task.split("-")[0] != "N":
                    continue                 # Lipman et al.'s path needs a Gaussian source
                out = root / "runs" / task / method / f"torchcfm-{seed}-{args.steps}.npz"
                if out.exists():
                    continue
                data = dict(np.load(root / "protocol" / f"{task}-{seed}-{args.steps}.npz"))
                start = time.perf_counter()
                net = train(method, data, args.steps, meta["sigma"], meta["batch"], meta["euler_steps"], seed)
                seconds = time.perf_counter() - start
                positions = euler(net, torch.from_numpy(data["eval_x0"]), meta["euler_steps"], keep=True).numpy()
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp.npz")
                np.savez(tmp, positions=positions, train_seconds=seconds,
                         params=sum(p.numel() for p in net.parameters()))
                os.replace(tmp, out)
                print(f"{task} {method} seed {seed}: {args.steps / seconds:.0f} steps/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
