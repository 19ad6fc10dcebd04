"""Latent flow matching on the embedded 8×8 digits, the CPU-sized version of latent diffusion (Rombach et al. 2022):
rectified flow (linear path, velocity target) on the 4×4×2 latents of a small KL autoencoder trained on the digits,
samples decoded to images for grids and digits-FID. Unconditional MLP (hidden 512, depth 3), Adam 2e-3, EMA 0.99,
batch 128, 1500 steps; samples: Heun, 8 steps (16 NFE), from the EMA. Notebook 6 runs the whole chain and compares
it with the same recipe in pixel space (variant ``pixel``) at equal NFE.

The latents come from two commands (about 80 s and 8 s on a 2-core CPU), then training (about 30 s)::

    python -m flowgen.autoencoders.train --dataset flowgen_digits --out results/digits_ae
    python -m flowgen.latents --dataset flowgen_digits --autoencoder results/digits_ae \\
        --out results/digits_latents --resolution 8 --protocol stored --no_flips
    python -m flowgen.main --config=configs/digits_latent.py --workdir=results/digits_latent

(``--no_flips``: a mirrored digit is not a digit.) Another folder: ``--config.data.kwargs.dir=...``.
Variants: ``pixel``: the same network, optimiser and schedule on the 8×8 pixels; ``small``: mock latents of the same
shape, 4 steps (smoke test).
"""

from flowgen.train.config import base_config

VARIANTS = ("", "pixel", "small")
LATENT_SHAPE = (4, 4, 2)


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(repr(v) for v in VARIANTS)}")
    c = base_config()
    c.data.name = "latents"
    c.data.kwargs = {"dir": "results/digits_latents", "shape": LATENT_SHAPE, "num_classes": 10}
    c.data.batch_size = 128
    c.model.name = "mlp"
    c.model.kwargs = {"hidden": 512, "depth": 3}
    c.path.name = "linear"
    c.loss.target = "velocity"
    c.optim.lr = 2e-3
    c.ema.decays = (0.99,)
    c.train.num_steps = 1500
    c.train.log_every = 250
    c.train.checkpoint_every = 1500
    c.train.sample_every = 1500
    c.sample.solver = "heun"
    c.sample.num_steps = 8
    c.sample.num_samples = 100
    if variant == "pixel":
        c.data.name = "flowgen_digits"
        c.data.kwargs = {}
    if variant == "small":
        c.data.mock = True
        c.data.kwargs = {"shape": LATENT_SHAPE, "num_classes": 10}
        c.data.batch_size = 16
        c.model.kwargs = {"hidden": 32, "depth": 2}
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.checkpoint_every = 2
        c.train.sample_every = 4
        c.sample.num_steps = 2
        c.sample.num_samples = 16
    return c
