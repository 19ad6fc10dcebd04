"""A trained model as a value: ``load_model(workdir)`` → everything ``fg.sample`` needs, read-only.

    model = fg.load_model("workdirs/digits_rf")                    # the slowest EMA of the newest good checkpoint
    x, info = fg.sample(model.apply, model.path, target=model.target, params=model.params, solver="heun",
                        num_steps=16, key=key, shape=(64, *model.element_shape))
    x, info = fg.sample(model.fn, model.path, target=model.target, ...)     # the same, parameters bound

The network, path and target are rebuilt from the run's saved ``config.json``; the parameters come from the newest
checkpoint that restores and verifies its checksum. A step that fails is skipped (logged), never moved or deleted:
loading writes nothing into the workdir (the training loop is what quarantines bad steps).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained network with its sampling facts.

    apply(params, x_t, t[, cond]) → prediction of ``target`` (shape of x_t); ``fn(x_t, t[, cond])`` has ``params``
    bound. ``num_classes`` is None for an unconditional model, else the label count, and ``null_label`` (=
    num_classes) is the "no label" input for classifier-free guidance.
    """

    apply: Any
    params: Any
    path: Any
    target: str
    num_classes: int | None
    null_label: int | None
    element_shape: tuple[int, ...]
    data_name: str
    step: int
    params_name: str
    workdir: str
    config: ml_collections.ConfigDict

    @functools.cached_property
    def fn(self):
        return functools.partial(self.apply, self.params)


def element_shape(data_cfg) -> tuple[int, ...]:
    """Shape of one example of the run's dataset, without opening the data."""
    from flowgen.data import toy

    if data_cfg.name in toy.TOY_DATASETS:
        return (2,)
    from flowgen.data import pipeline

    return tuple(pipeline.dataset_spec(data_cfg.name).image_shape)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's ``config.json`` (written by the training loop) as a ConfigDict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a flowgen training workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _select(state, params: str):
    if params == "params":
        return "params", state.params
    if params == "ema":
        if not state.ema:
            raise ValueError("params='ema' but the run kept no EMA; use params='params'")
        name = max(state.ema, key=lambda n: float(n.split("_", 1)[1]))          # the slowest EMA
        return name, state.ema[name]
    if params in state.ema:
        return params, state.ema[params]
    raise ValueError(f"params={params!r} is not one of: params, ema, {', '.join(sorted(state.ema))}")


def load_model(workdir: str | os.PathLike, params: str = "ema", step: int | None = None) -> TrainedModel:
    """The model of a training workdir, from its newest good checkpoint (or the newest good one at or before
    ``step``). ``params``: "ema" (the slowest EMA), "params" (the raw parameters) or an EMA key like "ema_0.999".

    Raises FileNotFoundError if the workdir has no config or no checkpoint that restores and verifies.
    """
    from flowgen import paths as paths_lib
    from flowgen.train import config as config_lib
    from flowgen.train import sharding as sharding_lib
    from flowgen.train.checkpoint import Checkpointer
    from flowgen.train.model import build_network, make_apply_fns
    from flowgen.train.optim import ema_decays, make_optimizer
    from flowgen.train.step import init_state

    workdir = os.path.abspath(os.fspath(workdir))
    config = saved_config(workdir)
    config_lib.validate(config)
    valid = ["params", "ema", *(f"ema_{d:g}" for d in ema_decays(config.ema))]
    if params not in valid:
        raise ValueError(f"params={params!r} is not one of: {', '.join(valid)}")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no checkpoints in {workdir}: train first")

    shape = element_shape(config.data)
    num_classes = config.model.num_classes or None
    path = paths_lib.get(config.path.name, **config.path.kwargs.to_dict())
    module = build_network(config.model, num_classes)
    _, sample_apply = make_apply_fns(module, path, config.model.precond, config.model.sigma_data)
    optimizer, _ = make_optimizer(config.optim, config.train.num_steps)
    example = (jnp.zeros((1, *shape)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32) if num_classes else None)
    abstract = jax.eval_shape(lambda k: init_state(module.init(k, *example), optimizer, ema_decays(config.ema)),
                              jax.random.key(0))
    mesh = sharding_lib.make_mesh(1)
    replicated = sharding_lib.replicated(mesh)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)

    checkpointer = Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints, async_save=False)
    try:
        steps = [s for s in checkpointer.all_steps() if step is None or s <= step]
        # Loading only reads: a damaged step is skipped, never moved (training's restore quarantines it).
        restored = checkpointer.restore(abstract, max(steps), quarantine=False) if steps else None
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint of {workdir} restores and verifies (steps tried: {steps})")
    found_step, state, _ = restored
    name, chosen = _select(state, params)
    return TrainedModel(apply=sample_apply, params=chosen, path=path, target=config.loss.target,
                        num_classes=num_classes, null_label=num_classes, element_shape=shape,
                        data_name=config.data.name, step=int(found_step), params_name=name, workdir=workdir,
                        config=config)
