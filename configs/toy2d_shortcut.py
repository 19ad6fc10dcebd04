"""Shortcut models (Frans et al. 2024) on FFJORD's 8 Gaussians: 1 to 128 steps from one network, a few minutes on
2 CPU cores.

Linear path, MLP 3×256 with the step size d as a second time input, Adam 1e-3, batch 256, 4000 steps; a quarter of
each batch trains self-consistency (2d from 1 down to 1/64, targets from the online parameters), the rest flow
matching at d = 0.
Samples with the method's own sampler in 1 jump (1 NFE) using the EMA (0.999); ``--config.sample.num_steps=2`` (or
4, 8, … 128) for more.
Variant ``small`` (``--config=configs/toy2d_shortcut.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import load_config_module


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r} of toy2d_shortcut; valid: '' or 'small'")
    # toy2d_rf's MLP 3×256, linear path, velocity target, Adam, batch 256 and its small variant's schedule
    c = load_config_module(__file__, "toy2d_rf").get_config(variant)
    c.data.name = "8gaussians"
    c.method.name = "shortcut"
    # Targets from the online parameters (under stop-gradient): on a run this short the EMA (0.999) lags by ~1000
    # steps at each of the 7 levels of the recursion, and 1-NFE samples come out 2.4x worse (W2 ratio 2.08 vs 0.86).
    c.method.kwargs = {"self_consistency_fraction": 0.25, "levels": 7, "target_params": "params"}
    if not variant:
        c.train.update({"num_steps": 4000, "log_every": 500, "checkpoint_every": 4000, "sample_every": 4000})
    c.sample.solver, c.sample.num_steps = "shortcut", 1
    return c
