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
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flowgen as fg
import flowgen.train.resume as resume
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


def train_and_evaluate(config, workdir: str, *, restart: bool = False) -> dict:
    """Train ``config`` in ``workdir`` (resuming if it holds checkpoints). Returns the last logged metrics.

    A workdir whose checkpoints were all quarantined is refused (``resume.RunRefusedError``) unless ``restart``;
    a finished run returns at once (see ``flowgen.train.resume``)."""
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    try:
        resume.check_workdir(config, workdir, checkpointer)
        done = resume.finished(config, workdir, checkpointer)
        setup = build(config) if done is None else None
    except BaseException:
        checkpointer.close()
        raise
    if done is not None:
        checkpointer.close()
        return done
    os.makedirs(workdir, exist_ok=True)
    mesh, data, path, num_classes = setup.mesh, setup.data, setup.path, setup.num_classes
    init_key, train_key, sample_key = setup.keys
    batch_sharding = sharding_lib.batch_sharding(mesh)
    replicated = sharding_lib.replicated(mesh)

    current = config_lib.comparable(config)
    restored = _restore(setup, checkpointer)
    if restored is not None:
        step, state, meta = restored
        resume.check_restart(workdir, step, restart)
        data.set_state(meta["data"])
        log.info("resumed from step %d", step)
    else:
        resume.start_fresh(workdir, checkpointer, restart)
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


def _drop_labels(loss_fn):
    def unconditional(params, batch, key):
        return loss_fn(params, {k: v for k, v in batch.items() if k != "label"}, key)

    return unconditional


def _write_config(workdir: str, config) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
