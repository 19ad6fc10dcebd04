"""The run configuration: defaults shared by every ``configs/*.py`` and the checks made before anything runs.

A config file defines ``get_config(variant="")`` returning ``base_config()`` with its own values; ``variant="small"``
is its fast smoke-test version. Modules never receive the whole ConfigDict; ``loop.py`` unpacks it.
"""

from __future__ import annotations

import json

import ml_collections

from flowgen import couplings, losses
from flowgen import paths as paths_lib
from flowgen import solvers as solvers_lib
from flowgen.paths.time_samplers import TIME_SAMPLERS
from flowgen.train import optim
from flowgen.train.state import ema_name

MODELS = ("mlp", "unet", "dit")
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "circle"           # a toy set (flowgen.data.toy.TOY_DATASETS) or an image dataset
    c.data.kwargs = ml_collections.ConfigDict()   # the toy set's parameters (e.g. radius for "circle")
    c.data.data_dir = ""             # image datasets: where the ArrayRecord files are ("" = the TFDS default)
    c.data.batch_size = 256          # global batch, over all devices and hosts
    c.data.random_flip = False
    c.data.dequantize = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"hidden": 256, "depth": 3})
    c.model.num_classes = 0          # > 0: class-conditional, with null label num_classes for guidance
    c.model.dtype = "float32"        # compute dtype; parameters stay float32
    c.model.precond = "none"         # "edm": wrap the network in EDM's preconditioning (target must be "data")
    c.model.sigma_data = 0.5

    c.path = ml_collections.ConfigDict({"name": "linear", "kwargs": ml_collections.ConfigDict()})

    c.loss = ml_collections.ConfigDict()
    c.loss.target = "velocity"
    c.loss.weighting = "uniform"
    c.loss.time_sampler = "uniform"
    c.loss.time_sampler_options = ml_collections.ConfigDict()
    c.loss.coupling = "independent"
    c.loss.label_dropout = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 100
    c.optim.schedule = "constant"
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip = 1.0

    c.ema = ml_collections.ConfigDict({"decays": (0.999,), "half_life_steps": 0})

    c.mesh = ml_collections.ConfigDict({"fsdp": 1})

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.sample_every = 1000      # sample grid (PNG) + quick quality metric; 0 disables
    c.train.steps_per_call = 0       # steps fused in one compiled call (0: automatic); never changes the results

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "heun"
    c.sample.num_steps = 32
    c.sample.grid = "uniform"
    c.sample.num_samples = 1024
    c.sample.guidance = 0.0          # > 0 with a conditional model: classifier-free guidance weight
    c.sample.ema = "ema"             # sample with: "params", "ema" (the slowest EMA) or a key like "ema_0.999"
    return c


def load_config_module(config_file: str, name: str):
    """The config file ``name``.py next to ``config_file`` as a module, so that one config can build on another
    (config files are loaded by path, not as a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"flowgen_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _choice(value, valid, key):
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not one of: {', '.join(map(str, valid))}")


def validate(config) -> None:
    """Checks that need no data and no compilation; raise ValueError naming the key and the valid values."""
    _choice(config.model.name, MODELS, "model.name")
    _choice(config.model.dtype, DTYPES, "model.dtype")
    _choice(config.model.precond, ("none", "edm"), "model.precond")
    paths_lib.get(config.path.name, **config.path.kwargs.to_dict())
    paths_lib.check_target(config.loss.target)
    _choice(config.loss.weighting, losses.WEIGHTINGS, "loss.weighting")
    _choice(config.loss.time_sampler, tuple(TIME_SAMPLERS), "loss.time_sampler")
    _choice(config.loss.coupling, tuple(couplings.COUPLINGS), "loss.coupling")
    _choice(config.optim.name, optim.OPTIMIZERS, "optim.name")
    _choice(config.optim.schedule, optim.SCHEDULES, "optim.schedule")
    _choice(config.sample.solver, tuple(solvers_lib.SOLVERS), "sample.solver")
    if config.model.precond == "edm" and config.loss.target != "data":
        raise ValueError(f"model.precond='edm' predicts the data: set loss.target='data' (got {config.loss.target!r})")
    for key in ("train.num_steps", "data.batch_size", "train.log_every", "train.keep_checkpoints"):
        section, name = key.split(".")
        v = config[section][name]
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be an integer >= 1; got {v!r}")
    if not isinstance(config.train.steps_per_call, int) or config.train.steps_per_call < 0:
        raise ValueError(f"train.steps_per_call must be an integer >= 0 (0: automatic); got "
                         f"{config.train.steps_per_call!r}")
    if config.train.checkpoint_every < 0 or config.train.sample_every < 0:
        raise ValueError("train.checkpoint_every and train.sample_every must be >= 0 (0 disables)")
    decays = optim.ema_decays(config.ema)
    valid = ["params"] + (["ema"] + [ema_name(d) for d in decays] if decays else [])
    _choice(config.sample.ema, valid, "sample.ema")


# Keys that may change when a run is resumed (everything else must match the checkpoint's config): the schedule of
# the run and hyper-parameters that do not change the state's structure (e.g. a lower learning rate after a
# divergence). Changes are logged as warnings.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                  "train.keep_checkpoints", "sample", "optim.lr", "optim.warmup_steps", "optim.schedule",
                  "optim.min_lr_ratio", "optim.b1", "optim.b2", "optim.eps", "optim.weight_decay",
                  "train.steps_per_call")


def comparable(config) -> dict:
    d = json.loads(config.to_json())
    for key in RESUMABLE_KEYS:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def config_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two comparable configs."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "<missing>"), current.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} vs now {b!r}")
    return out
