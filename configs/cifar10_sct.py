"""CIFAR-10 continuous-time consistency training, sCT (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models"), unconditional.

Published: FID 2.97 at 1 step and 2.06 at 2 steps (sCT, CIFAR-10, the paper's Table 1). Recipe (the paper's §4-5 and
its appendix as we read them): TrigFlow (the trig path; F_θ a "v" prediction, ``flowgen/methods/consistency.py``)
with σ_d = 0.5, proposal times ln(σ_d·tan s) ~ N(−1.0, 1.4²) (the time sampler "edm" with p_mean = −1.0 − ln 0.5),
tangent normalisation c = 0.1, tangent warm-up over 10k steps; the DDPM++ U-Net (``UNET_PRESETS["ddpmpp_cifar10"]``:
ch 128, ch_mult 1-2-2-2, 4 residual blocks, attention at 16×16) with dropout 0.2 and time features of 0.02·s
(the paper's positional embedding scale, on TrigFlow's s = (π/2)(1 − t)); Adam lr 1e-3, β = (0.9, 0.99), ε = 1e-8;
batch 512; 400k steps; random flips. Sampler: the method's own, 2 steps (re-noised at s = 1.1), from the EMA.

Departures, stated: no learned adaptive weighting w_φ(s) and no adaptive double normalisation in the U-Net (see the
method's docstring); the paper decays the learning rate as 1/√(step/t_ref) — flowgen's schedules are constant or
cosine, so constant here; EMA by a fixed decay 0.9999 (the paper's power-function EMA not reproduced); the step count
and EMA are ours where the paper is not specific.
Variant ``small``: a tiny U-Net for smoke runs (2 steps, batch 8) on TFDS's mock data (``data.mock``), offline.
"""

import math

from flowgen.networks import UNET_PRESETS
from flowgen.train.config import load_config_module

_rf = load_config_module(__file__, "cifar10_rf")
SIGMA_D = 0.5


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r}; valid: '' or 'small'")
    c = _rf.get_config()
    c.data.batch_size = 512
    time_scale = 0.02 * math.pi / 2          # 0.02·s per unit of TrigFlow time, s = (π/2)(1 − t)
    c.model.kwargs = {**UNET_PRESETS["ddpmpp_cifar10"], "dropout": 0.2, "time_scale": time_scale}
    c.path.name = "trig"
    c.loss.target = "v"
    c.loss.time_sampler = "edm"
    c.loss.time_sampler_options = {"p_mean": -1.0 - math.log(SIGMA_D), "p_std": 1.4}
    c.method.name = "consistency"
    c.method.kwargs = {"mode": "sct", "sigma_d": SIGMA_D, "warmup_steps": 10_000, "tangent_norm": 0.1,
                       "intermediate_times": (1.1,)}
    c.optim.lr = 1e-3
    c.optim.b2 = 0.99
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 0.0
    c.ema.decays = (0.9999,)
    c.train.num_steps = 400_000
    c.sample.solver = "consistency"
    c.sample.num_steps = 2
    c.sample.ema = "ema"
    if variant == "small":
        _rf.shrink_for_smoke_test(c)
        c.model.kwargs = {**c.model.kwargs, "time_scale": time_scale}
        c.method.kwargs = {**c.method.kwargs, "warmup_steps": 1}
        c.sample.solver, c.sample.num_steps = "consistency", 2
    return c
