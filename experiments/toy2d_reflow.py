"""Reflow and distillation on FFJORD's 8 Gaussians: Liu, Gong & Liu 2023's k-rectified flows, side by side.

    python -m flowgen.main --mode=sweep --config=experiments/toy2d_reflow.py --workdir=results/toy2d_reflow

Models, trained in order (``teacher``: a model trains on the pairs of the one before it, ``flowgen.reflow``):

    1-rf           rectified flow on the data (configs/toy2d_rf.py on 8 Gaussians, time features 10·t)
    2-rf           flow matching on 1-rf's pairs (x₀, Φ(x₀)) with the coupling ``given``
    3-rf           the same on 2-rf's pairs
    2-rf-distill   one-step distillation of 2-rf (``method.name = "distill"``): its own sampler ``one_step``

Each pair set: ``PAIRS`` pairs from the teacher's EMA by RK4 at 32 steps (128 NFE). Every k-RF trains from scratch
for the same number of steps (Liu et al. fine-tune from the teacher; from scratch keeps the models independent).
Euler at NFE 1, 2, 4 and 16 (the distilled model at 1); metrics: exact W2 (optimal assignment) to held-out data
and Liu et al.'s straightness of each model's ODE (RK4, 64 steps). The expected table, as in Liu et al.'s Table 1:
straightness falls with k (1-rf → 2-rf → 3-rf) and the 1-NFE W2 improves with it; the distilled model is best at 1.

Measured (2026-12-06, 3 min 5 s on 2 shared CPU cores; 1000 samples; W2 floor between two data sets 0.33):

    model          straightness   W2 at NFE 1   NFE 2   NFE 16
    1-rf           1.66           2.67          0.92    0.288
    2-rf           0.00084        0.300         0.291   0.283
    3-rf           0.00075        0.321         0.312   0.303
    2-rf-distill   -              0.309 (its one step)

Variant ``quick``: fewer steps, pairs and samples (the tests' version).
"""

import os

import ml_collections

from flowgen.sweep import launch

STEPS = 3000
PAIRS = 20000


def _rf(steps: int, method: str = "flow_matching"):
    """configs/toy2d_rf.py on 8 Gaussians with time features of 10·t, ``steps`` steps, no samples while training."""
    from flowgen.train.config import load_config_module

    c = load_config_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                        "toy2d_rf.py"), "toy2d_rf").get_config()
    c.data.name = "8gaussians"
    c.model.kwargs = {"hidden": 256, "depth": 3, "time_scale": 10.0}
    c.method.name = method
    c.train.update({"num_steps": steps, "log_every": 500, "checkpoint_every": steps, "sample_every": 0})
    return c


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"unknown variant {variant!r} of toy2d_reflow; valid: '' or 'quick'")
    steps, num_pairs = (STEPS, PAIRS) if not variant else (300, 2048)
    pairs = {"num_pairs": num_pairs, "solver": "rk4", "num_steps": 32, "seed": 1}
    c = ml_collections.ConfigDict()
    c.title = "Reflow on 8 Gaussians: k-rectified flows and a distilled 2-RF (Liu et al. 2023, Table 1)"
    c.models = {
        "1-rf": {"train": _rf(steps)},
        "2-rf": {"train": _rf(steps), "teacher": "1-rf", "pairs": pairs},
        "3-rf": {"train": _rf(steps), "teacher": "2-rf", "pairs": pairs},
        "2-rf-distill": {"train": _rf(steps, "distill"), "teacher": "2-rf", "pairs": pairs, "solvers": ("one_step",)},
    }
    c.launcher = launch.defaults()
    c.solvers = ("euler",)
    c.nfe = (1, 2, 4, 16)
    c.seeds = (0, 1, 2)
    c.metrics = ("w2", "straightness")
    c.num_samples = 1000
    c.grid = "uniform"
    c.skip_unreachable = True
    if variant == "quick":
        c.nfe = (1, 4)
        c.seeds = (0,)
        c.num_samples = 256
    return c
