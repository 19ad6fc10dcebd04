"""DDPM-style ε-prediction (Ho et al. 2020) on the VP SDE with linear β (Song et al. 2021) on the 8×8 digits:
noise target, uniform t on [0, 1 − 1e-3], "snr" weighting (= the plain ε-loss), unconditional U-Net; Adam 2e-4,
grad clip 1, EMA 0.999; batch 128, 4000 steps. Samples: DPM-Solver++(2M) on the logSNR grid, 20 steps (20 NFE).
Variant ``small``: a tiny U-Net, 4 steps.
"""

from flowgen.train.config import load_config_module

_base = load_config_module(__file__, "digits_rf")


def get_config(variant: str = ""):
    c = _base.unconditional(_base.get_config(variant))
    c.path.name = "vp_linear"
    c.loss.target = "noise"
    c.loss.weighting = "snr"
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "logsnr"
    c.sample.num_steps = 2 if variant == "small" else 20
    return c
