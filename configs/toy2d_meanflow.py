"""MeanFlow (Geng et al. 2025) on FFJORD's 8 Gaussians: one-step generation, a few minutes on 2 CPU cores.

Linear path, MLP 3×256 with the interval h = r − t as a second time input and time features of 10·t (not 1000·t:
the loss differentiates the network in time, see flowgen/methods/meanflow.py), Adam 1e-3, batch 256, 4000 steps;
(t, r) logit-normal (the paper's (−0.4, 1) in its time direction, m = +0.4 in ours), 25% of each batch with r ≠ t,
adaptive loss weighting p = 0.5, c = 1e-3. Samples with the method's own sampler in 1 jump (1 NFE) using the EMA
(0.999); ``--config.sample.num_steps=2`` for 2 jumps.
Variant ``small`` (``--config=configs/toy2d_meanflow.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "8gaussians"
    c.data.batch_size = 256
    c.model.name = "mlp"
    c.model.kwargs = {"hidden": 256, "depth": 3, "time_scale": 10.0}
    c.path.name = "linear"
    c.method.name = "meanflow"
    c.method.kwargs = {"ratio": 0.25, "p": 0.5, "c": 1e-3}
    c.loss.target = "velocity"
    c.loss.time_sampler = "logit_normal"
    c.loss.time_sampler_options = {"m": 0.4, "s": 1.0}
    c.train.num_steps = 4000
    c.train.log_every = 500
    c.train.checkpoint_every = 4000
    c.train.sample_every = 4000
    c.sample.solver = "meanflow"
    c.sample.num_steps = 1
    if variant == "small":
        c.train.num_steps = 50
        c.train.log_every = 10
        c.train.checkpoint_every = 25
        c.train.sample_every = 50
        c.sample.num_samples = 256
        c.optim.warmup_steps = 10
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of toy2d_meanflow; valid: '' or 'small'")
    return c
