"""A 4-point toy ablation: {linear, VP} path × {velocity, data (x₀)} prediction on the 2-D 8-Gaussian circle, each
trained 200 steps from ``configs/toy2d_rf.py:small`` (a small MLP), then euler and heun at NFE 4, 8, 16 scored by
sliced W2.

    python -m flowgen.main --mode=sweep --config=experiments/toy2d_ablation.py --workdir=results/toy2d_ablation
    python -m flowgen.main --mode=sweep --config=experiments/toy2d_ablation.py --workdir=results/toy2d_ablation \\
        --config.launcher.name=processes --config.launcher.max_parallel=2

Variant ``quick`` (``--config=experiments/toy2d_ablation.py:quick``): a smaller network, no samples during training,
euler at NFE 4 only; the tests' and the docs' version (well under a minute of compute).

The models are named by their knobs (``loss.target=velocity,path.name=linear``, ...) and trained, resumably, in
WORKDIR/models/NAME; results.csv and results.md carry ``path.name`` and ``loss.target`` as columns.
"""

import ml_collections

from flowgen.sweep import launch


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"unknown variant {variant!r} of toy2d_ablation; valid: '' or 'quick'")
    c = ml_collections.ConfigDict()
    c.title = "Toy ablation: path × target on the 2-D circle (200 steps each)"
    c.ablation = {
        "base": "configs/toy2d_rf.py:small",
        "overrides": {"train": {"num_steps": 200, "log_every": 50, "checkpoint_every": 100, "sample_every": 200},
                      "model": {"kwargs": {"hidden": 64, "depth": 2}}, "data": {"batch_size": 128},
                      "optim": {"lr": 3e-3}},
        "product": {"path": {"name": ("linear", "vp_linear")}, "loss": {"target": ("velocity", "data")}},
        "options": {"params": "params"},   # the raw weights: after 200 steps an EMA (0.999) is still mostly its init
    }
    c.launcher = launch.defaults()          # local; e.g. --config.launcher.name=processes
    c.solvers = ("euler", "heun")
    c.nfe = (4, 8, 16)
    c.seeds = (0,)
    c.metrics = ("sliced_w2",)
    c.num_samples = 512
    c.grid = ""
    c.skip_unreachable = True
    if variant == "quick":
        c.ablation.overrides.train.sample_every = 0
        c.ablation.overrides.model.kwargs = {"hidden": 32, "depth": 1}
        c.solvers = ("euler",)
        c.nfe = (4,)
        c.num_samples = 256
    return c
