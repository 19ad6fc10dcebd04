"""What the ImageNet 256×256 latent recipes share (``imagenet256_dit.py``, ``imagenet256_sit.py``,
``imagenet256_meanflow.py``); not a recipe itself (a leading underscore keeps it out of the smoke tests' glob).

Data: ImageNet's 1,281,167 training images, ADM centre crop to 256×256, encoded once by the SD 1.x autoencoder
``sd-vae-ft-mse`` into 32×32×4 posterior means and stds of each image and its mirror (``python -m flowgen.latents
--protocol=adm``, docs/latent.md); training draws ``z = (mean + std·ε)·0.18215`` and one of the two copies afresh
every step, as DiT and SiT encode each (randomly flipped) image every step. The declared shape and class count are
checked against the folder's ``provenance.json`` when the run is built.

Network: DiT-XL/2 (``DIT_PRESETS["XL/2"]``: depth 28, hidden 1152, 16 heads, patch 2), class-conditional on the 1000
classes with the null label 1000 for classifier-free guidance (labels dropped with probability 0.1 in training).
Optimiser as DiT and SiT: AdamW, constant learning rate 1e-4, β = (0.9, 0.999), no weight decay, no warm-up, no
gradient clipping; batch 256; EMA 0.9999; samples from the EMA.

Variant ``small``: seeded mock latents (``data.mock``) of shape 8×8×4 in 10 classes, a DiT of width 32 and depth 2,
2 training steps, batch 8: a smoke run that needs no data and no autoencoder.
"""

from flowgen.networks import DIT_PRESETS
from flowgen.train.config import LATENTS, base_config

IMAGENET_TRAIN_IMAGES = 1_281_167
LATENTS_DIR = "latents/imagenet256_sd-vae-ft-mse"     # the --out of the encoding command (docs/latent.md)
LATENT_SHAPE = (32, 32, 4)
NUM_CLASSES = 1000
VARIANTS = ("", "small")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(repr(v) for v in VARIANTS)}")


def steps_for_epochs(epochs: int, batch_size: int = 256) -> int:
    """Training steps of ``epochs`` passes over ImageNet's training set at ``batch_size``, rounded down."""
    return epochs * IMAGENET_TRAIN_IMAGES // batch_size


def base(variant: str = ""):
    """The shared settings, at full size, or at smoke-test size for ``variant="small"``."""
    check_variant(variant)
    c = base_config()
    c.data.name = LATENTS
    c.data.kwargs = {"dir": LATENTS_DIR, "shape": LATENT_SHAPE, "num_classes": NUM_CLASSES}
    c.data.batch_size = 256
    c.model.name = "dit"
    c.model.kwargs = dict(DIT_PRESETS["XL/2"])
    c.model.num_classes = NUM_CLASSES
    c.loss.label_dropout = 0.1
    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.optim.grad_clip = 0.0
    c.ema.decays = (0.9999,)
    c.train.log_every = 100
    c.train.checkpoint_every = 50_000
    c.train.sample_every = 50_000
    c.sample.num_samples = 64        # the training grids; FID: --mode=sample with --config.sample.num_samples=50000
    c.sample.ema = "ema"
    c.sample.guidance = 1.5
    if variant == "small":
        shrink(c)
    return c


def dit_steps(c, variant: str = "") -> None:
    """DiT's and SiT's step counts: 7M training steps (DiT-XL/2's longest run) and 250 sampling steps on a uniform
    grid; for ``variant="small"`` 2 and 4 (as ``shrink``). The solver is each recipe's own."""
    c.train.num_steps = 7_000_000
    c.sample.num_steps = 250
    c.sample.grid = "uniform"
    if variant == "small":
        c.train.num_steps = 2
        c.sample.num_steps = 4


def shrink(c) -> None:
    """Smoke-test size: mock latents 8×8×4 in 10 classes, a tiny DiT, 2 steps."""
    c.data.mock = True
    c.data.kwargs = {"shape": (8, 8, 4), "num_classes": 10}
    c.data.batch_size = 8
    c.model.kwargs = {"hidden": 32, "depth": 2, "num_heads": 2, "patch_size": 2}
    c.model.num_classes = 10
    c.ema.decays = (0.99,)
    c.train.num_steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.sample_every = 2
    c.sample.num_steps = 4
    c.sample.num_samples = 8
