"""torchcfm's OT-CFM training loop, the reference for ``benchmarks/ot_coupling.py`` (run it with a Python that has
torch, torchcfm and POT; torch is never a flowgen dependency).

ExactOptimalTransportConditionalFlowMatcher (POT's exact EMD on the squared costs, pairs drawn from the plan),
torchcfm's MLP (3 hidden layers of ``--width``, SELU, time as an input), Adam 1e-3, x₀ ~ N(0, I), x₁ from torchcfm's
8 Gaussians. Prints one JSON line: {"steps_per_s": ..., "threads": ...} over ``--steps`` steps after ``--warmup``.
"""

import argparse
import json
import time

import torch
from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
from torchcfm.models.models import MLP
from torchcfm.utils import sample_8gaussians


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MLP(dim=2, w=a.width, time_varying=True)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)

    def step():
        opt.zero_grad()
        x0, x1 = torch.randn(a.batch, 2), sample_8gaussians(a.batch)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = torch.mean((model(torch.cat([xt, t[:, None]], dim=-1)) - ut) ** 2)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    print(json.dumps({"steps_per_s": a.steps / (time.perf_counter() - start), "threads": a.threads, "loss": loss}))


if __name__ == "__main__":
    main()
