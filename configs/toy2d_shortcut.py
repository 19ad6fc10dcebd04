"""Shortcut models (Frans et al. 2024) on FFJORD's 8 Gaussians: 1 to 128 steps from one network, a few minutes on
2 CPU cores.

Linear path, MLP 3×256 with the step size d as a second time input, Adam 1e-3, batch 256, 4000 steps; a quarter of
each batch trains self-consistency (2d from 1 down to 1/64, targets from the online parameters), the rest flow
matching at d = 0.
Samples with the method's own sampler in 1 jump (1 NFE) using the EMA (0.999); ``--config.sample.num_steps=2`` (or
4, 8, … 128) for more.
Variant ``small`` (``--config=configs/toy2d_shortcut.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "8gaussians"
    c.data.batch_size = 256
    c.model.name = "mlp"
    c.model.kwargs = {"hidden": 256, "depth": 3}
    c.path.name = "linear"
    c.method.name = "shortcut"
    # Targets from the online parameters (under stop-gradient): on a run this short the EMA (0.999) lags by ~1000
    # steps at each of the 7 levels of the recursion, and 1-NFE samples come out 2.4x worse (W2 ratio 2.08 vs 0.86).
    c.method.kwargs = {"self_consistency_fraction": 0.25, "levels": 7, "target_params": "params"}
    c.loss.target = "velocity"
    c.train.num_steps = 4000
    c.train.log_every = 500
    c.train.checkpoint_every = 4000
    c.train.sample_every = 4000
    c.sample.solver = "shortcut"
    c.sample.num_steps = 1
    if variant == "small":
        c.train.num_steps = 50
        c.train.log_every = 10
        c.train.checkpoint_every = 25
        c.train.sample_every = 50
        c.sample.num_samples = 256
        c.optim.warmup_steps = 10
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of toy2d_shortcut; valid: '' or 'small'")
    return c
