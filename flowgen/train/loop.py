"""``train_and_evaluate(config, workdir)``: the training loop (flax-examples style), sharded, resumable, observable.

    mesh over all devices → data → network → loss → optax → state initialised with ``jax.eval_shape`` +
    ``out_shardings`` (or restored from the newest good checkpoint) → jitted, donated train step → metrics,
    periodic async checkpoints (state, EMA, data-iterator state, config), sample grids and a quick quality metric.

Exactness: step keys are ``fold_in(key, step)`` and the data iterator's state is checkpointed, so a run killed at any
step and restarted ends with bit-identical parameters (same device count). SIGTERM (preemption) finishes the current
step, saves and returns. A non-finite loss stops the run with ``NonFiniteLossError`` naming the step; no checkpoint is
written after it, so the last good one stays intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import flowgen as fg
from flowgen import losses
from flowgen.train import config as config_lib
from flowgen.train import input as input_lib
from flowgen.train import sharding as sharding_lib
from flowgen.train import visualize
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.metrics import MetricWriter
from flowgen.train.model import build_network, make_apply_fns
from flowgen.train.optim import ema_decays, make_optimizer
from flowgen.train.step import init_state, jit_train_step, make_train_step

log = logging.getLogger("flowgen")


class NonFiniteLossError(FloatingPointError):
    pass


class ConfigMismatchError(ValueError):
    pass


class _Preemption:
    """Records SIGTERM; the loop checks it after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: finishing the current step, saving, exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _example_inputs(shape, num_classes, dtype=jnp.float32):
    x = jnp.zeros((1, *shape), dtype)
    t = jnp.zeros((1,), dtype)
    labels = jnp.zeros((1,), jnp.int32) if num_classes else None
    return x, t, labels


@dataclasses.dataclass
class Setup:
    """Everything a run builds from its config before touching the workdir (no compilation yet)."""

    mesh: Any
    data: Any
    path: Any
    module: Any
    num_classes: int | None
    train_apply: Any
    sample_apply: Any
    loss_fn: Any
    optimizer: Any
    schedule: Any
    decays: tuple
    init_fn: Any
    keys: tuple
    abstract: Any
    state_sharding: Any


def build(config) -> Setup:
    config_lib.validate(config)
    mesh = sharding_lib.make_mesh(config.mesh.fsdp)
    sharding_lib.check_batch_size(config.data.batch_size, mesh)
    data = input_lib.make_input(config.data, config.seed)
    num_classes = config.model.num_classes or None
    if num_classes and data.num_classes and num_classes != data.num_classes:
        raise ValueError(f"model.num_classes={num_classes} but dataset {config.data.name!r} has {data.num_classes}")
    path = fg.paths.get(config.path.name, **config.path.kwargs.to_dict())
    module = build_network(config.model, num_classes)
    train_apply, sample_apply = make_apply_fns(module, path, config.model.precond, config.model.sigma_data)
    loss_fn = losses.make_loss(
        train_apply, path, config.loss.target, config.loss.weighting, config.loss.time_sampler,
        config.loss.coupling, label_dropout=config.loss.label_dropout,
        null_label=num_classes if config.loss.label_dropout > 0 else None,
        time_sampler_options=config.loss.time_sampler_options.to_dict(),
    )
    if not num_classes:
        loss_fn = _drop_labels(loss_fn)
    optimizer, schedule = make_optimizer(config.optim, config.train.num_steps)
    decays = ema_decays(config.ema)
    keys = tuple(jax.random.split(jax.random.key(config.seed), 3))     # init, train, sample
    example = _example_inputs(data.element_shape, num_classes)
    init_fn = lambda key: init_state(module.init(key, *example), optimizer, decays)  # noqa: E731
    abstract = jax.eval_shape(init_fn, keys[0])
    return Setup(mesh, data, path, module, num_classes, train_apply, sample_apply, loss_fn, optimizer, schedule,
                 decays, init_fn, keys, abstract, sharding_lib.state_shardings(abstract, mesh))


def _restore(setup: Setup, checkpointer: Checkpointer):
    abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    setup.abstract, setup.state_sharding)
    return checkpointer.restore(abstract_sharded)


def train_and_evaluate(config, workdir: str) -> dict:
    """Train ``config`` in ``workdir`` (resuming if it holds checkpoints). Returns the last logged metrics."""
    setup = build(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh, data, path, num_classes = setup.mesh, setup.data, setup.path, setup.num_classes
    init_key, train_key, sample_key = setup.keys
    batch_sharding = sharding_lib.batch_sharding(mesh)
    replicated = sharding_lib.replicated(mesh)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    current = config_lib.comparable(config)
    _check_workdir_config(workdir, checkpointer, current, json.loads(config.to_json()))
    restored = _restore(setup, checkpointer)
    if restored is not None:
        step, state, meta = restored
        data.set_state(meta["data"])
        log.info("resumed from step %d", step)
    else:
        state = jax.jit(setup.init_fn, out_shardings=setup.state_sharding)(init_key)
        step = 0
    _write_config(workdir, config)

    writer = MetricWriter(workdir)
    if step == 0:
        from clu import parameter_overview

        overview = parameter_overview.get_parameter_overview(jax.device_get(state.params))
        log.info("parameters:\n%s", overview)
        writer.write_text(0, "parameters", overview)

    train_step = jit_train_step(make_train_step(setup.loss_fn, setup.optimizer, setup.schedule, setup.decays),
                                setup.state_sharding, batch_sharding, replicated)
    last = {}
    t_start, steps_timed = time.time(), 0
    examples_per_step = config.data.batch_size
    with _Preemption() as preemption:
        while step < config.train.num_steps:
            batch = sharding_lib.global_batch(data.next(), batch_sharding)
            state, metrics = train_step(state, batch, train_key)
            step += 1
            steps_timed += 1
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                checkpointer.wait()
                raise NonFiniteLossError(
                    f"non-finite loss {loss} at step {step}; stopping. The last good checkpoint "
                    f"(step {checkpointer.latest_step()}) is intact in {workdir}/checkpoints")
            if step % config.train.log_every == 0 or step == config.train.num_steps:
                elapsed = time.time() - t_start
                rate = steps_timed / max(elapsed, 1e-9)
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last.update(steps_per_sec=rate, examples_per_sec=rate * examples_per_step,
                            eta_sec=(config.train.num_steps - step) / max(rate, 1e-9))
                writer.write(step, last)
                log.info("step %d/%d  loss %.5f  grad_norm %.3f  lr %.2e  %.1f steps/s  eta %.0fs", step,
                         config.train.num_steps, last["loss"], last["grad_norm"], last["lr"], rate, last["eta_sec"])
                t_start, steps_timed = time.time(), 0
            if config.train.sample_every and (step % config.train.sample_every == 0 or step == config.train.num_steps):
                quality = visualize.sample_and_report(
                    config, workdir, step, state, setup.sample_apply, path, data, num_classes,
                    jax.random.fold_in(sample_key, step))
                writer.write(step, quality)
            save_now = (config.train.checkpoint_every and step % config.train.checkpoint_every == 0) or (
                step == config.train.num_steps) or preemption.requested
            if save_now:
                checkpointer.save(step, state, {"config": current, "data": data.get_state(), "step": step})
            if preemption.requested:
                break
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    return last


def sample_from_checkpoint(config, workdir: str) -> dict:
    """Restore the newest good checkpoint of ``workdir`` and write a sample grid and ``samples_<step>.npz``."""
    setup = build(config)
    workdir = os.path.abspath(workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    _check_workdir_config(workdir, checkpointer, config_lib.comparable(config))
    restored = _restore(setup, checkpointer)
    checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first (--mode=train)")
    step, state, _ = restored
    key = jax.random.fold_in(setup.keys[2], step)
    quality = visualize.sample_and_report(config, workdir, step, state, setup.sample_apply, setup.path, setup.data,
                                          setup.num_classes, key)
    samples, nfe = visualize.draw_samples(config, state, setup.sample_apply, setup.path, setup.data.element_shape,
                                          setup.num_classes, key, config.sample.num_samples)
    out = os.path.join(workdir, "samples", f"samples_{step:07d}.npz")
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; refusing to overwrite it")
    np.savez(out, samples=samples, nfe=nfe, solver=config.sample.solver, step=step)
    log.info("wrote %s (%s)", out, quality)
    return quality


def _drop_labels(loss_fn):
    def unconditional(params, batch, key):
        return loss_fn(params, {k: v for k, v in batch.items() if k != "label"}, key)

    return unconditional


def _write_config(workdir: str, config) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def _check_workdir_config(workdir: str, checkpointer: Checkpointer, current: dict, current_full=None) -> None:
    """Refuse to resume a workdir whose checkpoints were made by a different config (nothing is touched)."""
    step = checkpointer.latest_step()
    if step is None:
        return
    saved_path = os.path.join(workdir, "config.json")
    if not os.path.exists(saved_path):
        return
    with open(saved_path) as f:
        saved_full = json.load(f)
    saved = config_lib.comparable(ml_collections.ConfigDict(saved_full))
    diff = config_lib.config_difference(saved, current)
    if not diff and current_full is not None:
        for change in config_lib.config_difference(saved_full, current_full):
            log.warning("resuming with a changed setting: %s", change)
    if diff:
        raise ConfigMismatchError(
            f"workdir {workdir} holds checkpoints (step {step}) of a different config:\n  " + "\n  ".join(diff)
            + "\nUse another --workdir, or the same config to resume. Nothing in the workdir was changed.")
