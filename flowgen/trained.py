"""A trained model as a value: ``load_model(workdir)`` → everything ``fg.sample`` needs, read-only.

    model = fg.load_model("workdirs/digits_rf")                    # the slowest EMA of the newest good checkpoint
    x, info = fg.sample(model.apply, model.path, target=model.target, params=model.params, solver="heun",
                        num_steps=16, key=key, shape=(64, *model.element_shape))
    x, info = fg.sample(model.fn, model.path, target=model.target, ...)     # the same, parameters bound

The network, path and target are rebuilt from the run's saved ``config.json`` (``Run.from_workdir``); the
parameters come from the newest
checkpoint that restores and verifies its checksum. A step that fails is skipped (logged), never moved or deleted:
loading writes nothing into the workdir (the training loop is what quarantines bad steps).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained network with its sampling facts.

    apply(params, x_t, t[, cond]) → prediction of ``target`` (shape of x_t), as ``fg.sample``'s solvers call it (a
    few-step network at extra time 0, ``Method.solver_model``); ``fn(x_t, t[, cond])`` has ``params`` bound. The
    method's own samplers: ``run.method.sample(run.sample_apply, params, noise, solver=..., ...)``. ``num_classes``
    is None for an unconditional model, else the label count, and ``null_label`` (= num_classes) is the "no label"
    input for classifier-free guidance. ``text`` is the ``flowgen.data.text.TextConditioning`` of a text-conditioned
    model (cond = caption embeddings ``{"context", "pooled"}``, null caption ``text.null()``: zeros), else None.
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
    run: Any = None          # the flowgen.train.run.Run it was loaded with (network, method, source, mesh)
    text: Any = None         # the text conditioning of a text-conditioned model (flowgen.data.text), else None

    @functools.cached_property
    def fn(self):
        return functools.partial(self.apply, self.params)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's ``config.json`` as a ConfigDict, upgraded to this version's keys (``flowgen.train.config``)."""
    from flowgen.train import config as config_lib

    return config_lib.saved_config(workdir)


def load_model(workdir: str | os.PathLike, params: str = "ema", step: int | None = None) -> TrainedModel:
    """The model of a training workdir, from its newest good checkpoint (or the newest good one at or before
    ``step``); ``workdir`` may be a URI such as gs://bucket/run. ``params``: "ema" (the slowest EMA), "params" (the
    raw parameters) or an EMA key like "ema_0.999".

    Raises FileNotFoundError if the workdir has no config or no checkpoint that restores and verifies.
    """
    from flowgen.io import workdir_path
    from flowgen.train.checkpoint import Checkpointer
    from flowgen.train.run import Run

    workdir = workdir_path(workdir)  # a local path made absolute; a URI (gs://bucket/run) unchanged
    run = Run.from_workdir(workdir)
    if params not in run.params_choices():
        raise ValueError(f"params={params!r} is not one of: {', '.join(run.params_choices())}")
    config = run.config
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir}: train first")

    checkpointer = Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints, async_save=False)
    try:
        steps = [s for s in checkpointer.all_steps() if step is None or s <= step]
        # Loading only reads: a damaged step is skipped, never moved (training's restore quarantines it).
        restored = run.restore(checkpointer, max(steps), quarantine=False) if steps else None
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint of {workdir} restores and verifies (steps tried: {steps})")
    found_step, state, _ = restored
    name, chosen = run.sampling_params(state, params)
    return TrainedModel(apply=run.method.solver_model(run.sample_apply), params=chosen, path=run.path,
                        target=run.method.prediction,
                        num_classes=run.num_classes, null_label=run.num_classes, element_shape=run.element_shape,
                        data_name=config.data.name, step=int(found_step), params_name=name, workdir=str(workdir),
                        config=config, run=run, text=run.text)
