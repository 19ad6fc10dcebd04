"""CIFAR-10 MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling"), unconditional.

Published: FID 2.92 at 1 NFE (50k samples; the paper's Table 3, its U-Net of 55M parameters, no distillation and no
pre-training). Recipe, as the paper's CIFAR-10 settings are described by its authors' code (Gsunshine/py-meanflow,
read, not copied): EDM's DDPM++ U-Net (``UNET_PRESETS["edm_ddpmpp_cifar10"]``, 55.7M parameters) with dropout 0.2 and
the interval h = r − t as its second time input; (t, r) both logit-normal, (−2.0, 2.0) in the paper's time direction,
i.e. ``m = +2.0, s = 2.0`` in flowgen's (t = 0 noise); 75% of each batch with r ≠ t; adaptive weighting p = 0.75,
c = 1e-3; Adam lr 6e-4 with a warm-up of 200 epochs (9,766 steps at batch 1024); batch 1024; 16,000 epochs (781,250
steps); random horizontal flips. Sampler: the method's own, 1 jump (1 NFE), from the EMA.

Departures, stated: no EDM augmentation pipeline (the authors use it); EMA by a fixed decay 0.9999 (the authors' EMA
schedule not reproduced); time features of 1·t (not 1000·t: the loss differentiates the network in time, see
flowgen/methods/meanflow.py; the authors' EDM U-Net takes t ∈ [0, 1] directly).
Variant ``small``: a tiny U-Net for smoke runs (2 steps, batch 8) on TFDS's mock data (``data.mock``), offline.
"""

from flowgen.networks import UNET_PRESETS
from flowgen.train.config import load_config_module

_rf = load_config_module(__file__, "cifar10_rf")


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r}; valid: '' or 'small'")
    c = _rf.get_config()
    c.data.batch_size = 1024
    c.model.kwargs = {**UNET_PRESETS["edm_ddpmpp_cifar10"], "dropout": 0.2, "time_scale": 1.0}
    c.method.name = "meanflow"
    c.method.kwargs = {"ratio": 0.75, "p": 0.75, "c": 1e-3}
    c.loss.time_sampler = "logit_normal"
    c.loss.time_sampler_options = {"m": 2.0, "s": 2.0}
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 9766
    c.optim.grad_clip = 0.0
    c.ema.decays = (0.9999,)
    c.train.num_steps = 781_250
    c.sample.solver = "meanflow"
    c.sample.num_steps = 1
    c.sample.ema = "ema"
    if variant == "small":
        _rf.shrink_for_smoke_test(c)
        c.model.kwargs = {**c.model.kwargs, "time_scale": 1.0}
        c.sample.solver, c.sample.num_steps = "meanflow", 1
    return c
