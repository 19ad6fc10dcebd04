"""Shortcut model (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models") on CelebA 64×64
pixels, unconditional, 1 to 128 steps from one network.

Published (CelebA-HQ 256 in the SD-VAE's latent space, DiT-B/2, FID-50k, the paper's Table 2 as we read it): 20.5 at 1
step, 13.8 at 4 steps, 6.9 at 128 steps. Recipe (the authors' JAX code, kvfrans/shortcut-models, read, not copied):
DiT-B (hidden 768, depth 12, 12 heads, MLP ratio 4) with the step size d as a second time input; a quarter of each
batch trains self-consistency (``self_consistency_fraction = 0.25``), the rest flow matching at d = 0; step sizes
down to 1/128 (``levels = 7``), the self-consistency target from the EMA (``target_params = "ema"``); AdamW lr 1e-4,
weight decay 0.1; EMA 0.999; batch 64; 410k steps. Sampler: the method's own, ``num_steps`` ∈ {1, 2, 4, …, 128}.

Departures, stated: pixels, not latents (flowgen's SD-VAE is the latent-space issue's): CelebA's faces are cropped to
140×140 and resized to 64×64 (as score_sde), and DiT-B/4 on 64×64×3 gives the same 256 tokens as the paper's
DiT-B/2 on 32×32×4 latents; so the published FIDs are a reference point, not a target this config is known to reach.
Variant ``small``: a tiny DiT for smoke runs (2 steps, batch 8) on TFDS's mock data (``data.mock``), offline.
"""

from flowgen.networks import DIT_PRESETS
from flowgen.train.config import base_config


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r}; valid: '' or 'small'")
    c = base_config()
    c.data.name = "celeb_a"
    c.data.batch_size = 64
    c.model.name = "dit"
    c.model.kwargs = {**DIT_PRESETS["B/4"]}
    c.path.name = "linear"
    c.loss.target = "velocity"
    c.method.name = "shortcut"
    c.method.kwargs = {"self_consistency_fraction": 0.25, "levels": 7, "target_params": "ema"}
    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.1
    c.ema.decays = (0.999,)
    c.train.num_steps = 410_000
    c.train.log_every = 500
    c.train.checkpoint_every = 10_000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 50_000
    c.sample.solver = "shortcut"
    c.sample.num_steps = 1
    c.sample.num_samples = 64
    if variant == "small":
        c.data.batch_size = 8
        c.data.mock = True
        c.model.kwargs = {"hidden": 64, "depth": 2, "num_heads": 2, "patch_size": 8}
        c.train.update({"num_steps": 2, "log_every": 1, "checkpoint_every": 2, "sample_every": 2})
        c.optim.warmup_steps = 1
        c.sample.num_steps, c.sample.num_samples = 2, 8
    return c
