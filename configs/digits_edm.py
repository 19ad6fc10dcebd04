"""EDM (Karras et al. 2022) on the 8×8 digits: preconditioned denoiser (c_skip, c_out, c_in, c_noise; σ_data = 0.5),
data target, training noise levels ln σ ~ N(−1.2, 1.2²), loss weight λ(σ) = (σ² + σ_data²)/(σ·σ_data)². EDM's σ is
our σ/α on any path; on the linear path σ/α = (1 − t)/t covers (0, ∞), so EDM's sampler runs exactly as published:
the ρ = 7 grid from σ = 80 to 0.002, then a plain Euler step to σ = 0 — 18 steps cost 35 NFE. Adam 2e-4,
EMA 0.999; batch 128, 4000 steps.
Variant ``small``: a tiny U-Net, 4 steps.
"""

from flowgen.train.config import load_config_module

_base = load_config_module(__file__, "digits_rf")


def get_config(variant: str = ""):
    c = _base.unconditional(_base.get_config(variant))
    c.path.name = "linear"
    c.model.precond = "edm"
    c.model.sigma_data = 0.5
    c.loss.target = "data"
    c.loss.weighting = "edm"
    c.loss.time_sampler = "edm"
    c.sample.solver = "edm_stochastic"
    c.sample.grid = "edm"
    c.sample.num_steps = 2 if variant == "small" else 18
    return c
