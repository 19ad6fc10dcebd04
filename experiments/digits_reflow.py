"""Reflow on the embedded 8×8 digits: 1-RF → 2-RF → 3-RF and the distilled 2-RF and 3-RF (Liu et al. 2023's Table 1
in shape, on digits instead of CIFAR-10).

    python -m flowgen.main --mode=sweep --config=experiments/digits_reflow.py --workdir=results/digits_reflow

Every model is ``digits_model``'s recipe (``experiments/digits_nfe.py``: MLP 512×3, batch 128, Adam 2e-3, EMA 0.995,
``STEPS`` steps, linear path, velocity); k-RF trains from scratch on ``PAIRS`` pairs of (k−1)-RF (RK4, 32 steps),
the distilled models (``method.name = "distill"``) on the pairs of the model they distil. Euler at NFE 1, 2, 4, 8
(one step for the distilled models), three seeds, 1000 samples; digits-FID, the pixel Fréchet distance and Liu et
al.'s straightness. ``experiments/reproductions/liu_reflow.py`` runs it beside the 2-D version and writes the report.

Variant ``quick``: 60 steps, 512 pairs, NFE 1, one seed, 200 samples (the tests' version).
"""

import os

import ml_collections

from flowgen.sweep import launch
from flowgen.train.config import load_config_module

STEPS = 1200
PAIRS = 10000


def recipe(num_steps: int, method: str = "flow_matching"):
    c = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_nfe.py"),
                           "digits_nfe").digits_model("linear", "velocity", num_steps)
    c.method.name = method
    c.train.sample_every = 0
    return c


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"unknown variant {variant!r} of digits_reflow; valid: '' or 'quick'")
    steps, num_pairs = (STEPS, PAIRS) if not variant else (60, 512)
    pairs = {"num_pairs": num_pairs, "solver": "rk4", "num_steps": 32, "seed": 1}
    c = ml_collections.ConfigDict()
    c.title = "Reflow on 8×8 digits: k-rectified flows and their one-step students (Liu et al. 2023, Table 1)"
    c.models = {
        "1-rf": {"train": recipe(steps)},
        "2-rf": {"train": recipe(steps), "teacher": "1-rf", "pairs": pairs},
        "3-rf": {"train": recipe(steps), "teacher": "2-rf", "pairs": pairs},
        "2-rf-distill": {"train": recipe(steps, "distill"), "teacher": "2-rf", "pairs": pairs,
                         "solvers": ("one_step",)},
        "3-rf-distill": {"train": recipe(steps, "distill"), "teacher": "3-rf", "pairs": pairs,
                         "solvers": ("one_step",)},
    }
    c.launcher = launch.defaults()
    c.solvers = ("euler",)
    c.nfe = (1, 2, 4, 8)
    c.seeds = (0, 1, 2)
    c.metrics = ("digits_fid", "pixel_fd", "straightness")
    c.num_samples = 1000
    c.grid = "uniform"
    c.skip_unreachable = True
    if variant == "quick":
        c.nfe, c.seeds, c.num_samples = (1,), (0,), 200
    return c
