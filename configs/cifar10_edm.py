"""CIFAR-10 unconditional EDM (Karras et al. 2022, config F for VP), published FID 1.97 at 35 NFE (18 Heun steps),
50k samples.

Recipe (EDM Table 1 and Appendix F): preconditioning with σ_data = 0.5; training σ: ln σ ~ N(−1.2, 1.2²); loss weight
λ(σ) = (σ² + σ_data²)/(σ·σ_data)²; EDM's DDPM++ U-Net (``UNET_PRESETS["edm_ddpmpp_cifar10"]``: ch 128,
ch_mult 2-2-2, 4 residual blocks, attention at 16×16, dropout 0.13; 55,732,739 parameters, EDM's 55,733,891 less
its 1,152 augmentation-label weights); Adam lr 1e-3, β = (0.9, 0.999), ε = 1e-8, learning-rate ramp-up over
10M images (19,531 steps at batch 512), EMA half-life 0.5M images (977 steps at batch 512); batch 512; 200M images
(390,625 steps); x-flips. Sampler: EDM's Heun on the ρ = 7 grid, 18 steps, σ ∈ [0.002, 80] then σ = 0 → 35 NFE.
The path is linear, where σ/α = (1 − t)/t spans EDM's whole σ range.
Departures, stated: no non-leaking geometric augmentation pipeline (EDM uses it with probability 0.12 on CIFAR-10);
EMA by a fixed decay matching the half-life rather than EDM's ramped schedule.
Variant ``small``: a tiny U-Net for smoke runs on TFDS's mock data (``data.mock``), offline.
"""

from flowgen.networks import UNET_PRESETS
from flowgen.train.config import load_config_module

_rf = load_config_module(__file__, "cifar10_rf")


def get_config(variant: str = ""):
    c = _rf.get_config()
    c.data.batch_size = 512
    c.model.kwargs = dict(UNET_PRESETS["edm_ddpmpp_cifar10"])
    c.model.precond = "edm"
    c.model.sigma_data = 0.5
    c.path.name = "linear"
    c.loss.target = "data"
    c.loss.weighting = "edm"
    c.loss.time_sampler = "edm"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 19_531
    c.optim.grad_clip = 0.0
    c.ema.decays = ()
    c.ema.half_life_steps = 977
    c.train.num_steps = 390_625
    c.sample.solver = "edm_stochastic"
    c.sample.grid = "edm"
    c.sample.num_steps = 18
    c.sample.ema = "ema"
    if variant == "small":
        _rf.shrink_for_smoke_test(c)
        c.ema.decays = (0.999,)
        c.ema.half_life_steps = 0
        c.sample.solver = "edm_stochastic"
        c.sample.grid = "edm"
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; valid: '' or 'small'")
    return c
