"""Few-step generation on the embedded 8×8 digits: MeanFlow, sCT, shortcut, 2-RF + distillation beside the main
command's rectified flow and VP models, at NFE 1, 2, 4 (and the multi-step solvers up to 64 for reference).

    python -m flowgen.main --mode=sweep --config=experiments/digits_fewstep.py --workdir=results/digits_fewstep

One network family and budget: ``digits_model``'s recipe of experiments/digits_nfe.py, the MLP on the 64 pixels
(hidden 512, depth 3), batch 128, Adam 2e-3 with 100 warm-up steps, gradient clip 1, EMA 0.995, ``STEPS`` steps for
every model trained from data (the main command trains the same MLP 6000 steps) (a MeanFlow
or shortcut step costs about 1.5× a flow-matching step: ``benchmarks/fewstep_step_cost.py``). The few-step methods
(and the models trained on pairs) take time features of 10·t instead of 1000·t: MeanFlow's loss differentiates the
network in time (``flowgen/methods/meanflow.py``), and the others use the same network for a like-for-like table.

    rf             rectified flow (``digits_model``'s recipe): euler, heun, dpmpp_2m at every NFE
    vp             VP with linear β, ε-prediction (the same recipe): ddim, dpmpp_2m
    meanflow       MeanFlow (Geng et al. 2025): its own sampler, 1 jump per NFE
    shortcut       shortcut model (Frans et al. 2024): its own sampler, a power of two of jumps
    sct            continuous-time consistency training (Lu & Song 2024) on TrigFlow (the trig path, σ_d = 0.5 as
                   the paper for data in [−1, 1], proposal times ln(σ_d·tan s) ~ N(−1.0, 1.4²), tangent warm-up over
                   a quarter of the run, normalisation c = 0.1): its own sampler, 1 or 2 steps
    2-rf           rectified flow on ``PAIRS`` pairs of rf (RK4, 32 steps): euler
    2-rf-distill   one-step distillation of 2-rf on its pairs (Liu et al. 2023): one call

The pairs' cost is extra compute for 2-rf and its student (a teacher's ODE solve per pair) and is stated with them.
Metrics: digits-FID (classifier features) and the pixel Fréchet distance, 1000 samples, two seeds.

Variant ``quick``: 60 steps per model, 512 pairs, NFE 1 and 4, 200 samples, one seed (the tests' version).
"""

import math
import os

import ml_collections

from flowgen.sweep import launch
from flowgen.train.config import load_config_module

STEPS = 1200
PAIRS = 10000
NFE = (1, 2, 4, 8, 16, 32, 64)


def _digits_model(path: str, target: str, num_steps: int):
    """experiments/digits_nfe.py's ``digits_model`` (the main command trains the same MLP 6000 steps)."""
    return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_nfe.py"),
                              "digits_nfe").digits_model(path, target, num_steps)


def few_step_model(method: str, num_steps: int, **method_kwargs):
    """The recipe with time features of 10·t and ``method`` (its default options unless given)."""
    c = _digits_model("linear", "velocity", num_steps)
    c.model.kwargs = {"hidden": 512, "depth": 3, "time_scale": 10.0}
    c.method.name = method
    c.method.kwargs = method_kwargs
    c.train.sample_every = 0
    if method == "meanflow":
        c.loss.time_sampler = "logit_normal"
        c.loss.time_sampler_options = {"m": 0.4, "s": 1.0}
    if method == "consistency":        # TrigFlow: the trig path, F_θ a "v" prediction, the paper's proposal times
        c.path.name = "trig"
        c.loss.target = "v"
        c.loss.time_sampler = "edm"
        c.loss.time_sampler_options = {"p_mean": -1.0 - math.log(method_kwargs["sigma_d"]), "p_std": 1.4}
    return c


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"unknown variant {variant!r} of digits_fewstep; valid: '' or 'quick'")
    steps, num_pairs = (STEPS, PAIRS) if not variant else (60, 512)
    pairs = {"num_pairs": num_pairs, "solver": "rk4", "num_steps": 32, "seed": 1}
    c = ml_collections.ConfigDict()
    c.title = "Few-step generation on 8×8 digits: MeanFlow, sCT, shortcut, 2-RF + distillation vs. RF and VP"
    c.models = {
        "rf": {"train": _digits_model("linear", "velocity", steps), "solvers": ("euler", "heun", "dpmpp_2m")},
        "vp": {"train": _digits_model("vp_linear", "noise", steps), "solvers": ("ddim", "dpmpp_2m")},
        "meanflow": {"train": few_step_model("meanflow", steps), "solvers": ("meanflow",)},
        "shortcut": {"train": few_step_model("shortcut", steps), "solvers": ("shortcut",)},
        "sct": {"train": few_step_model("consistency", steps, mode="sct", sigma_d=0.5, warmup_steps=steps // 4),
                "solvers": ("consistency",)},
        "2-rf": {"train": few_step_model("flow_matching", steps), "teacher": "rf", "pairs": pairs,
                 "solvers": ("euler",)},
        "2-rf-distill": {"train": few_step_model("distill", steps), "teacher": "2-rf", "pairs": pairs,
                         "solvers": ("one_step",)},
    }
    c.launcher = launch.defaults()
    c.solvers = ("euler",)
    c.nfe = NFE
    c.guidance = (None,)
    c.seeds = (0, 1)
    c.metrics = ("digits_fid", "pixel_fd")
    c.num_samples = 1000
    c.grid = ""
    c.skip_unreachable = True
    c.plot_layout = "single"            # each model has its own samplers: one panel, a curve per model and sampler
    if variant == "quick":
        c.nfe = (1, 4)
        c.seeds = (0,)
        c.num_samples = 200
    return c
