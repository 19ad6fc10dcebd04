"""Text-to-image rectified flow with the MM-DiT of Stable Diffusion 3 (Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis"): the recipe's shape at SD3-medium size.

Network: ``MMDIT_PRESETS["sd3-medium"]``, the released SD3-medium transformer (diffusers' transformer/config.json of
stabilityai/stable-diffusion-3-medium-diffusers: depth 24, 24 heads of 64 = hidden 1536, patch 2, 16 latent channels,
sample_size 128, pos_embed_max_size 192, no QK-norm): 2,028,328,000 parameters, exactly diffusers'
``SD3Transformer2DModel`` count for that configuration (tests/test_networks_mmdit.py; ``--mode=describe`` prints it).
The paper's scaling rule hidden = 64·depth with depth heads holds for it.

Data: 128×128×16 latents (1024² images through SD3's 16-channel autoencoder) with precomputed text embeddings in a
``text_embeddings`` folder (``flowgen.data.text``; point ``data.data_dir`` at it): the context is 77 CLIP tokens
(CLIP-L/14 768 ‖ CLIP-G/14 1280 = 2048 columns, zero-padded to 4096) followed by 256 T5-XXL tokens (4096), i.e.
(333, 4096), and the pooled vector is CLIP-L ‖ CLIP-G pooled, 2048 — the shapes diffusers' StableDiffusion3Pipeline
builds (``max_sequence_length`` 256). The null caption is zeros, as a dropped or absent encoder is represented in
SD3 (diffusers' pipeline feeds zeros for an absent T5; see flowgen.data.text). No text encoder runs in training.

Training: rectified flow, i.e. the linear path with the velocity target, and the paper's logit-normal time
sampling with m = 0, s = 1 ("rf/lognorm(0.00, 1.00)"); captions dropped for classifier-free guidance
(``loss.label_dropout``). Sampling as diffusers' SD3 pipeline defaults: Euler, 28 steps, guidance 7.0 (its scheduler
also shifts the time grid by 3.0, which flowgen's grids do not offer: the uniform grid is used).
Not from the paper: the optimiser, batch size, learning-rate schedule, EMA and step count below are flowgen's
settings (AdamW 1e-4, 1000 warm-up steps, batch 256, EMA 0.9999, bfloat16 compute with remat); the paper's
values could not be verified here and are not restated.

Variant ``small``: a tiny MM-DiT on the embedded digits, each class captioned "a handwritten <digit>" by the shipped
caption set (``data.captions = "digits"``), 4 steps (smoke test). Variant ``digits``: the same network, 64 wide with
4 heads, trained 800 steps (about 40 s on 2 CPU cores); its samples follow their captions (docs/mmdit.md).
"""

from flowgen.networks import MMDIT_PRESETS
from flowgen.train.config import base_config

VARIANTS = ("", "small", "digits")


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "text_embeddings"
    c.data.data_dir = ""            # a folder of x.npy, context.npy, pooled.npy (flowgen.data.text.write_text_folder)
    c.data.kwargs = {"shape": (128, 128, 16), "context_len": 333, "context_dim": 4096, "pooled_dim": 2048}
    c.data.batch_size = 256
    c.model.name = "mmdit"
    c.model.kwargs = {**MMDIT_PRESETS["sd3-medium"], "remat": True}
    c.model.dtype = "bfloat16"
    c.path.name = "linear"
    c.loss.target = "velocity"
    c.loss.time_sampler = "logit_normal"
    c.loss.time_sampler_options = {"m": 0.0, "s": 1.0}
    c.loss.label_dropout = 0.1
    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 1000
    c.optim.grad_clip = 1.0
    c.ema.decays = (0.9999,)
    c.train.num_steps = 500_000
    c.train.log_every = 100
    c.train.checkpoint_every = 5000
    c.train.sample_every = 0        # samples are latents: decode them with the autoencoder to look at them
    c.sample.solver = "euler"
    c.sample.num_steps = 28
    c.sample.guidance = 7.0
    c.sample.num_samples = 16
    if variant == "small":
        small(c)
    elif variant == "digits":
        digits(c)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; valid: '', 'small' or 'digits'")
    return c


def small(c):
    """A tiny MM-DiT on the captioned digits: trains on a CPU."""
    c.data.name = "flowgen_digits"
    c.data.data_dir = ""
    c.data.kwargs = {}
    c.data.captions = "digits"
    c.data.batch_size = 32
    c.model.kwargs = {"hidden": 32, "depth": 2, "num_heads": 2, "patch_size": 2, "sample_size": 8,
                      "pos_embed_max_size": 4}
    c.model.dtype = "float32"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.ema.decays = (0.99,)
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.train.sample_every = 4
    c.sample.num_steps = 4
    c.sample.guidance = 2.0
    c.sample.num_samples = 20
    return c


def digits(c):
    """The captioned digits learned in about 40 s on 2 CPU cores: samples at guidance 2, one row per caption."""
    small(c)
    c.data.batch_size = 64
    c.model.kwargs = {**c.model.kwargs, "hidden": 64, "num_heads": 4}
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.ema.decays = (0.995,)
    c.train.num_steps = 800
    c.train.log_every = 200
    c.train.checkpoint_every = 800
    c.train.sample_every = 800
    c.sample.solver = "heun"
    c.sample.num_steps = 16
    c.sample.num_samples = 80
    return c
