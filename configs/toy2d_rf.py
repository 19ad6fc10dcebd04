"""Rectified flow (Liu et al. 2023) on the 2-D 8-Gaussian circle: the default config, 15–20 s on 2 CPU cores.

Linear path, velocity target, uniform t, independent coupling, MLP 3×256, Adam 1e-3, batch 256, 2000 steps.
Samples with Heun at 32 steps (64 NFE) using the EMA (0.999) parameters.
Variant ``small`` (``--config=configs/toy2d_rf.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.data.name = "circle"
    c.data.batch_size = 256
    c.model.name = "mlp"
    c.model.kwargs = {"hidden": 256, "depth": 3}
    c.path.name = "linear"
    c.loss.target = "velocity"
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000  # with the samples: an orbax save costs ~0.1 s of CPU (see benchmarks/README.md)
    c.train.sample_every = 1000
    if variant == "small":
        c.train.num_steps = 50
        c.train.log_every = 10
        c.train.checkpoint_every = 25
        c.train.sample_every = 50
        c.sample.num_samples = 256
        c.sample.num_steps = 8
        c.optim.warmup_steps = 10
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of toy2d_rf; valid: '' or 'small'")
    return c
