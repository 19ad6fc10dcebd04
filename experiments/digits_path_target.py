"""Path × prediction-target ablation on the embedded 8×8 digits (Lipman et al. 2023; Ma et al. 2024, SiT): the
linear (rectified-flow), VP (linear β) and trig (GVP) paths × velocity, noise (ε) and score targets, one network and
budget, swept over NFE with the fixed-step solvers.

    python -m flowgen.main --mode=sweep --config=experiments/digits_path_target.py --workdir=results/digits_path_target

Every point is ``digits_model``'s recipe (``experiments/digits_nfe.py``: MLP 512×3, batch 128, Adam 2e-3, EMA
0.995, 1200 steps) with its path and target changed and each target's usual loss: velocity and noise with their
plain objectives (``weighting = "uniform"``: the flow-matching loss, the DDPM ε-loss), score with denoising score
matching's λ(t) = σ² (``weighting = "snr"``: w_x = SNR, i.e. the ε-loss again). Every path runs on t ∈ [0, 0.999]
(the VP path's default end: the score target is infinite where σ = 0), training and sampling alike, and every model
samples from t = 1e-3 (noise and score do not determine the data where α = 0). Nine models, trained with the
ablation launcher (``launcher.name = "processes"`` runs two at once); Euler, Heun and DPM-Solver++(2M) at NFE 2–64,
two seeds, 1000 samples; digits-FID, the pixel Fréchet distance and the legible fraction.
``experiments/reproductions/path_target.md`` reads the table against the papers' ordering.

Variant ``quick``: 60 steps per model, NFE 4, one seed, 200 samples (tests).
"""

import os

import ml_collections

from flowgen.sweep import launch
from flowgen.train.config import load_config_module


def _recipe(num_steps: int):
    c = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_nfe.py"),
                           "digits_nfe").digits_model("linear", "velocity", num_steps)
    c.train.sample_every = 0
    c.path.kwargs = {"t_max": 0.999}      # every path ends where the VP path does: the score is finite there
    return c


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"unknown variant {variant!r} of digits_path_target; valid: '' or 'quick'")
    c = ml_collections.ConfigDict()
    c.title = "Path × target on 8×8 digits: linear / VP / trig × velocity / noise / score, one network and budget"
    c.ablation = {
        "base": _recipe(1200 if not variant else 60),
        "product": {"path": {"name": ("linear", "vp_linear", "trig")}},
        "zip": {"loss": {"target": ("velocity", "noise", "score"), "weighting": ("uniform", "uniform", "snr")}},
        # noise and score predictions do not determine x_data where α = 0: every model samples from t = 1e-3
        "options": {"t_start": 1e-3},
    }
    c.launcher = launch.defaults()
    c.solvers = ("euler", "heun", "dpmpp_2m")
    c.nfe = (2, 4, 8, 16, 32, 64)
    c.seeds = (0, 1)
    c.metrics = ("digits_fid", "pixel_fd", "legible")
    c.num_samples = 1000
    c.grid = ""
    c.skip_unreachable = True
    if variant == "quick":
        c.nfe, c.seeds, c.num_samples = (4,), (0,), 200
    return c
