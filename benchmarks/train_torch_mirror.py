"""A PyTorch eager mirror of ``configs/toy2d_rf.py``, for comparison only (torch is never a flowgen dependency).

The same model, objective, optimiser and data as ``train_minimal_jax.py`` (see its docstring), written in plain
PyTorch: fresh data drawn each step, ``clip_grad_norm_`` → ``Adam`` with a linear warm-up (``LambdaLR``) → an EMA
updated with ``torch._foreach_lerp_``. Run it with an interpreter that has torch, e.g. a separate virtual
environment:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/train_torch_mirror.py --steps 2000

Prints one JSON line ``{"steps_per_s": ...}`` measured after 20 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

HIDDEN, DEPTH, DIM, BATCH, LR, WARMUP, EMA = 256, 3, 2, 256, 1e-3, 100, 0.999


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        half = HIDDEN // 2
        self.register_buffer("freqs", 1000.0 * torch.exp(-math.log(10_000.0) * torch.arange(half) / half))
        self.time = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN))
        self.inp = nn.Linear(DIM, HIDDEN)
        self.hidden = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(DEPTH - 1))
        self.out = nn.Linear(HIDDEN, DIM)

    def forward(self, x, t):
        args = t[:, None] * self.freqs
        h = self.inp(x) + self.time(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        for layer in self.hidden:
            h = layer(nn.functional.silu(h))
        return self.out(nn.functional.silu(h))


def circle_batch(gen):
    comp = torch.randint(0, 8, (BATCH,), generator=gen)
    angle = comp * (2 * math.pi / 8)
    means = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return means + 0.5 * torch.randn(BATCH, DIM, generator=gen)


def run(steps: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = MLP()
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / WARMUP, 1.0))

    def step():
        x_data = circle_batch(gen)
        noise = torch.randn(BATCH, DIM, generator=gen)
        t = torch.rand(BATCH, generator=gen)
        x_t = t[:, None] * x_data + (1 - t[:, None]) * noise
        loss = torch.mean((model(x_t, t) - (x_data - noise)) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(model.parameters()), 1 - EMA)
        return loss

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = float(loss)
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "steps": steps, "loss": loss, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.steps, args.threads)))


if __name__ == "__main__":
    main()
