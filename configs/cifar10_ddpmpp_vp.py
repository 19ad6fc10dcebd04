"""CIFAR-10, VP SDE with DDPM++ (continuous), after Song et al. 2021 (score_sde's vp/cifar10_ddpmpp_continuous).

Published with this model family: DPM-Solver 4.70 FID at 10 NFE and 2.87 at 20 NFE on score_sde's VP checkpoint
(Lu et al. 2022, 50k samples, unconditional). Recipe: VP path, linear β 0.1→20, ε-prediction with the
plain ε-loss ("snr" weighting), t uniform on [0, 1 − 1e-5] (score_sde's ε = 1e-5 for training); score_sde's DDPM++
U-Net (``UNET_PRESETS["ddpmpp_cifar10"]``, 61,804,419 parameters as in score_sde: ch 128, ch_mult 1-2-2-2,
4 residual blocks, attention at 16×16, BigGAN-style residual up/down-sampling, dropout 0.1, skip rescaling);
Adam 2e-4, 5000 warm-up steps, grad clip 1, EMA 0.9999; batch 128; random flips; 1.3M steps.
Sampler: DPM-Solver++(2M), logSNR grid, 20 steps (20 NFE).
Variant ``small``: a tiny U-Net for smoke runs on TFDS's mock data (``data.mock``), offline.
"""

from flowgen.networks import UNET_PRESETS
from flowgen.train.config import load_config_module

_rf = load_config_module(__file__, "cifar10_rf")


def get_config(variant: str = ""):
    c = _rf.get_config()
    c.model.kwargs = dict(UNET_PRESETS["ddpmpp_cifar10"])
    c.path.name = "vp_linear"
    c.path.kwargs = {"t_max": 1.0 - 1e-5}
    c.loss.target = "noise"
    c.loss.weighting = "snr"
    c.ema.decays = (0.9999,)
    c.train.num_steps = 1_300_000
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "logsnr"
    c.sample.num_steps = 20
    c.sample.ema = "ema_0.9999"
    if variant == "small":
        _rf.shrink_for_smoke_test(c)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; valid: '' or 'small'")
    return c
