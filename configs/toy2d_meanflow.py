"""MeanFlow (Geng et al. 2025) on FFJORD's 8 Gaussians: one-step generation, a few minutes on 2 CPU cores.

Linear path, MLP 3×256 with the interval h = r − t as a second time input and time features of 10·t (not 1000·t:
the loss differentiates the network in time, see flowgen/methods/meanflow.py), Adam 1e-3, batch 256, 4000 steps;
(t, r) logit-normal (the paper's (−0.4, 1) in its time direction, m = +0.4 in ours), 25% of each batch with r ≠ t,
adaptive loss weighting p = 0.5, c = 1e-3. Samples with the method's own sampler in 1 jump (1 NFE) using the EMA
(0.999); ``--config.sample.num_steps=2`` for 2 jumps.
Variant ``small`` (``--config=configs/toy2d_meanflow.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import load_config_module


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r} of toy2d_meanflow; valid: '' or 'small'")
    # toy2d_rf's MLP 3×256, linear path, velocity target, Adam, batch 256 and its small variant's schedule
    c = load_config_module(__file__, "toy2d_rf").get_config(variant)
    c.data.name = "8gaussians"
    c.model.kwargs = {"hidden": 256, "depth": 3, "time_scale": 10.0}
    c.method.name = "meanflow"
    c.method.kwargs = {"ratio": 0.25, "p": 0.5, "c": 1e-3}
    c.loss.time_sampler = "logit_normal"
    c.loss.time_sampler_options = {"m": 0.4, "s": 1.0}
    if not variant:
        c.train.update({"num_steps": 4000, "log_every": 500, "checkpoint_every": 4000, "sample_every": 4000})
    c.sample.solver, c.sample.num_steps = "meanflow", 1
    return c
