"""Continuous-time consistency training, sCT (Lu & Song 2024), on FFJORD's 8 Gaussians: 1- and 2-step generation,
a few minutes on 2 CPU cores.

Trig path (TrigFlow), the network F_θ a "v" prediction, MLP 3×256 with time features of 10·t (not 1000·t: the loss
differentiates the network in time, see flowgen/methods/consistency.py), Adam 1e-3 with cosine decay, batch 256, 4000
steps; σ_d = 1 (flowgen's unit noise), times from the paper's proposal ln(σ_d·tan s) ~ N(−1.0, 1.4²) (the time
sampler "edm" with p_mean = −1.0 − ln σ_d), tangent warm-up over 1000 steps, tangent normalisation c = 0.1, no learned
adaptive weight. Samples with the consistency sampler in 1 step (1 NFE) using the EMA (0.999);
``--config.sample.num_steps=2`` for 2 steps (re-noised at the paper's intermediate time s = 1.1).
Measured (exact W2 of 1000 samples over the data-vs-data floor, ``tests/test_learning.py``; seeds 0, 1, 2): 1 NFE
0.83, 0.77, 0.93; 2 NFE 0.93, 0.87, 1.00; training 24 s on 2 CPU cores (40-50 s on a shared machine). With a
constant learning rate seed 1 was 1.18 (1 NFE) and 1.45 (2 NFE): the decay removes most of the seed-to-seed spread.
For distillation (sCD) set ``method.kwargs.mode = "scd"`` and ``method.kwargs.teacher`` to the workdir of a model
trained on the trig path (e.g. this config with ``method.name = "flow_matching"`` and ``loss.target = "v"``).
Variant ``small`` (``--config=configs/toy2d_consistency.py:small``): 50 steps, for smoke tests.
"""

from flowgen.train.config import load_config_module


def get_config(variant: str = ""):
    if variant not in ("", "small"):
        raise ValueError(f"unknown variant {variant!r} of toy2d_consistency; valid: '' or 'small'")
    # toy2d_rf's MLP 3×256, Adam, batch 256 and its small variant's schedule
    c = load_config_module(__file__, "toy2d_rf").get_config(variant)
    c.data.name = "8gaussians"
    c.path.name = "trig"
    c.loss.target = "v"
    c.model.kwargs = {"hidden": 256, "depth": 3, "time_scale": 10.0}
    c.method.name = "consistency"
    c.method.kwargs = {"mode": "sct", "sigma_d": 1.0, "warmup_steps": 1000, "tangent_norm": 0.1,
                       "intermediate_times": (1.1,)}
    c.loss.time_sampler = "edm"
    c.loss.time_sampler_options = {"p_mean": -1.0, "p_std": 1.4}
    c.optim.schedule = "cosine"
    if not variant:
        c.train.update({"num_steps": 4000, "log_every": 500, "checkpoint_every": 4000, "sample_every": 4000})
    c.sample.solver, c.sample.num_steps = "consistency", 1
    return c
