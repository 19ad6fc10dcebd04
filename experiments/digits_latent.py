"""Latent versus pixel flow matching on the embedded 8×8 digits at equal NFE: ``configs/digits_latent.py`` (rectified
flow on the 4×4×2 latents of a KL autoencoder trained on the digits) and its ``pixel`` variant (the same MLP,
optimiser and schedule on the 64 pixels). The latent model's samples are decoded before digits-FID and the legible
fraction (``flowgen.sweep.metrics.scored_data``); the floor is that of real held-out digits.

    python -m flowgen.autoencoders.train --dataset flowgen_digits --out results/digits_ae
    python -m flowgen.latents --dataset flowgen_digits --autoencoder results/digits_ae \\
        --out results/digits_latents --resolution 8 --protocol stored --no_flips
    python -m flowgen.main --mode=sweep --config=experiments/digits_latent.py --workdir=results/digits_latent

Run from the repository root (the latent dataset is ``results/digits_latents``, the config's default). Euler and
Heun at NFE 2–32, 1000 samples, two seeds; the sweep trains both models (about a minute together on 2 CPU cores).
"""

import os

import ml_collections

from flowgen.train.config import load_config_module


def _recipe(variant: str):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_latent.py")
    return load_config_module(path, "digits_latent").get_config(variant)


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"unknown variant {variant!r} of digits_latent; valid: ''")
    c = ml_collections.ConfigDict()
    c.title = "Latent vs pixel rectified flow on 8×8 digits (one MLP recipe; latents of a digits KL autoencoder)"
    c.models = {"pixel": {"train": _recipe("pixel")}, "latent": {"train": _recipe("")}}
    c.solvers = ("euler", "heun")
    c.nfe = (2, 4, 8, 16, 32)
    c.guidance = (None,)
    c.seeds = (0, 1)
    c.metrics = ("digits_fid", "legible")
    c.num_samples = 1000
    c.grid = ""
    c.skip_unreachable = True
    return c
