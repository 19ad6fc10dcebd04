"""``train_and_evaluate(config, workdir)``: the training loop (flax-examples style), sharded, resumable, observable.

    Run.from_config (mesh, path, method, network, optimiser, sharded abstract state) → data → state (restored from
    the newest good checkpoint, or initialised in its shardings) → jitted, donated train call → per call: console
    and metrics (``Progress``), checkpoints and samples when the ``Cadence`` says, SIGTERM (``Preemption``).

Exactness: step keys are ``fold_in(key, step)`` and the data iterator's state is checkpointed, so a run killed at any
step and restarted ends with bit-identical parameters (same device count). SIGTERM (preemption) finishes the current
step, saves and raises ``Preempted`` (``python -m flowgen.main`` then exits with ``EXIT_PREEMPTED`` = 143, not 0,
so a scheduler's ``afterok`` never fires on an unfinished run; the same command resumes). A non-finite loss stops
the run with ``NonFiniteLossError`` naming the step; no checkpoint is written after it, so the last good one stays
intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np

import flowgen.train.resume as resume
from flowgen.io import workdir_path
from flowgen.train import config as config_lib
from flowgen.train import input as input_lib
from flowgen.train import sharding as sharding_lib
from flowgen.train import visualize
from flowgen.train.checkpoint import Checkpointer, compile_checksums
from flowgen.train.metrics import MetricWriter, Throughput
from flowgen.train.run import Run
from flowgen.train.step import chunk_sizes, jit_train_chunk, make_train_call, make_train_step

log = logging.getLogger("flowgen")


class NonFiniteLossError(FloatingPointError):
    pass


class Preempted(Exception):
    """Raised by ``train_and_evaluate`` after SIGTERM, once the checkpoint is saved: the run is not finished."""

    def __init__(self, step: int, num_steps: int):
        super().__init__(f"stopped by SIGTERM at step {step}/{num_steps} after saving a checkpoint; the same command "
                         "resumes it")
        self.step = step


class Preemption:
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


def train_and_evaluate(config, workdir: str | os.PathLike, *, restart: bool = False) -> dict:
    """Train ``config`` in ``workdir`` (resuming if it holds checkpoints). Returns the last logged metrics.

    A workdir whose checkpoints were all quarantined is refused (``resume.RunRefusedError``) unless ``restart``;
    a finished run returns at once (see ``flowgen.train.resume``). ``workdir`` may be a URI (gs://bucket/run: every
    file goes through ``etils.epath``, and orbax gets the URI unchanged)."""
    config_lib.validate(config)
    workdir = workdir_path(workdir)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        resume.check_workdir(config, workdir, checkpointer)
        done = resume.finished(config, workdir, checkpointer)
        run = Run.from_config(config) if done is None else None
        if run is not None and config.train.sample_every:
            _ = run.decoder              # a latent run's autoencoder is needed for its sample grids: fail now
    except BaseException:
        checkpointer.close()
        raise
    if done is not None:
        checkpointer.close()
        return done
    workdir.mkdir(parents=True, exist_ok=True)
    data = run.make_input()
    step, state = _start(run, data, checkpointer, workdir, restart)
    writer = MetricWriter(workdir)
    if step == 0:
        from clu import parameter_overview

        overview = parameter_overview.get_parameter_overview(jax.device_get(state.params))
        log.info("parameters:\n%s", overview)
        writer.write_text(0, "parameters", overview)

    tc = config.train
    k = steps_per_call(config, data)
    train_call = compile_train_call(run, data, k)
    cadence = Cadence(tc.num_steps, tc.log_every, tc.checkpoint_every, tc.sample_every)
    progress = Progress(config, workdir, writer, checkpointer, step)
    meta = {"config": config_lib.comparable(config), "step": None, "data": None}
    try:
        with Preemption() as preemption, open_feed(run, data, step, k, cadence) as feed:
            for n, batches, data_state in feed:
                state, report = train_call(state, batches, run.keys[1], n)   # asynchronous: returns at once
                step += n
                if data.on_device:
                    data.advance(n)
                    data_state = data.get_state()
                call = Call(step, n, report, data_state, log=cadence.log(step))
                progress.finish_pending()            # waits for the previous call while this one runs
                save_now, sample_now = cadence.save(step) or preemption.requested, cadence.sample(step)
                if not (progress.first or sample_now or save_now):
                    progress.pending = call
                    continue
                progress.finish(call)                # the state is needed now: wait for this call too
                if save_now:                         # first: orbax writes in the background while we sample
                    with progress.pause("checkpoint"):
                        log.info("checkpoint step %d: saving to %s", step, checkpointer.directory / str(step))
                        checkpointer.save(step, state, {**meta, "data": call.data_state, "step": step})
                if sample_now:
                    with progress.pause("sampling"):
                        quality = visualize.sample_and_report(run, workdir, step, state, data,
                                                              jax.random.fold_in(run.keys[2], step))
                        writer.write(step, quality)
                        progress.samples.append(visualize.sample_path(workdir, step))
                if preemption.requested:
                    break
            progress.finish_pending()
        checkpointer.wait()
        progress.summary(step, preempted=preemption.requested)
    finally:  # also on an error (sampling, a non-finite loss, Ctrl-C): pending saves land on disk
        checkpointer.close()
        writer.close()
        if hasattr(data, "close"):             # an input with worker threads (HostCoupledInput)
            data.close()
    if preemption.requested and step < tc.num_steps:
        raise Preempted(step, tc.num_steps)
    return progress.last


def _start(run: Run, data, checkpointer: Checkpointer, workdir, restart: bool):
    """``(step, state)``: restored from the newest good checkpoint (with the data iterator's state), or fresh."""
    restored = run.restore(checkpointer)
    if restored is not None:
        step, state, meta = restored
        resume.check_restart(workdir, step, restart)
        data.set_state(meta["data"])
        log.info("resumed from step %d", step)
    else:
        resume.start_fresh(workdir, checkpointer, restart)
        init_from = run.config.train.get("init_from", "")
        start = warm_start_params(run, init_from, run.config.train.get("init_params", "params")) if init_from else None
        step, state = 0, run.init_state()
        if start is not None:
            state = warm_started(run, state, start)
    _write_config(workdir, run.config)
    # The checkpoint checksum's programs compile in the background (while the first step compiles), not at the
    # first save.
    compile_checksums(run.abstract_state)
    return step, state


def warm_start_params(run: Run, workdir: str, params: str = "params"):
    """``params`` ("params", "ema" or "ema_<decay>") of ``workdir``'s newest good checkpoint, on the host, checked
    against this run's network before anything is compiled (ValueError naming the first array that differs)."""
    from flowgen.trained import load_model

    source = load_model(workdir, params=params)
    ours = jax.tree_util.tree_leaves_with_path(run.abstract_state.params)
    theirs = jax.tree_util.tree_leaves_with_path(source.params)
    if len(ours) != len(theirs):
        raise ValueError(f"train.init_from={workdir!r}: its network has {len(theirs)} parameter arrays, this run's "
                         f"{len(ours)}; it must be the same network")
    for (path, a), (other, b) in zip(ours, theirs, strict=True):
        if path != other or a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"train.init_from={workdir!r}: parameter {jax.tree_util.keystr(other)} {b.shape} "
                             f"{b.dtype} does not match this run's {jax.tree_util.keystr(path)} {a.shape} {a.dtype}")
    log.info("starting from %s of %s (step %d)", source.params_name, source.workdir, source.step)
    return jax.device_get(source.params)


def warm_started(run: Run, state, params):
    """``state`` with its parameters and every EMA set to ``params`` (host arrays); step and optimiser unchanged."""
    shardings = run.state_sharding        # one device copy each: the train call donates every buffer
    return state.replace(params=jax.device_put(params, shardings.params),
                         ema={name: jax.device_put(params, shardings.ema[name]) for name in state.ema})


def compile_train_call(run: Run, data, steps: int):
    """The jitted, donated program of ``steps`` fused steps (``flowgen.train.step``) for ``run`` on ``data``."""
    batch_sharding = sharding_lib.batch_sharding(run.mesh)
    device_batch = None
    if data.on_device:
        device_batch = lambda s: jax.lax.with_sharding_constraint(data.device_batch(s), batch_sharding)  # noqa: E731
    step_fn = make_train_step(run.loss_fn(), run.optimizer, run.schedule, run.decays)
    return jit_train_chunk(make_train_call(step_fn, device_batch, steps), run.state_sharding,
                           input_lib.stacked_sharding(batch_sharding), sharding_lib.replicated(run.mesh))


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When to log, checkpoint and sample (periods of 0 mean never; the last step does all three)."""

    num_steps: int
    log_every: int
    checkpoint_every: int
    sample_every: int

    def _due(self, step: int, every: int) -> bool:
        return bool(every) and (step % every == 0 or step == self.num_steps)

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.num_steps

    def save(self, step: int) -> bool:
        return self._due(step, self.checkpoint_every) or step == self.num_steps

    def sample(self, step: int) -> bool:
        return self._due(step, self.sample_every)

    def call_sizes(self, start: int, steps_per_call: int):
        """Call lengths from ``start`` to the end, cut at every log, checkpoint and sample step."""
        return chunk_sizes(start, self.num_steps, (self.log_every, self.checkpoint_every, self.sample_every),
                           steps_per_call)


def open_feed(run: Run, data, step: int, steps_per_call: int, cadence: Cadence):
    """Iterates ``(n, batches, data_state)`` per call: host batches prefetched onto the devices, or call lengths
    only for data made on the device."""
    sizes = cadence.call_sizes(step, steps_per_call)
    if data.on_device:
        return _OnDeviceFeed(sizes)
    stacked = input_lib.stacked_sharding(sharding_lib.batch_sharding(run.mesh))
    return input_lib.DevicePrefetcher(data, sizes, steps_per_call, stacked)


#: Seconds between console lines when no log step comes sooner (the first line comes after the first call).
PROGRESS_SECONDS = 10.0


def steps_per_call(config, data) -> int:
    """``train.steps_per_call`` for data made on the device (0, automatic, means 32); always 1 for host-fed data.

    With toy data a call of 32 steps costs one dispatch and one small read of its report, where one step per call
    costs both per step, a large share of a small model's step time. Host-fed (image) data run one plain step per
    call: XLA:CPU runs a ``while_loop`` body far slower than the same step on its own when it has convolutions, and
    an image step dwarfs the host work (measurements: benchmarks/README.md).
    """
    k = config.train.steps_per_call
    if k > 1 and not data.on_device:
        log.warning("train.steps_per_call=%d applies to data made on the device; %r is fed from the host: 1 step "
                    "per call", k, config.data.name)
        return 1
    return k or (32 if data.on_device else 1)


class _OnDeviceFeed:
    """The feed of data made on the device: call lengths only (no host batches, no iterator state)."""

    def __init__(self, sizes):
        self._sizes = sizes

    def __iter__(self):
        return ((n, {}, None) for n in self._sizes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@dataclasses.dataclass
class Call:
    """One dispatched call: the step it ends at, its length, its (device) report and the data state after it."""

    step: int
    n: int
    report: Any
    data_state: Any
    log: bool


class Progress:
    """Console and metrics of one training run: finishing calls (non-finite check, metrics, console), timing,
    summary."""

    def __init__(self, config, workdir, writer, checkpointer, start_step):
        self.config, self.workdir, self.writer, self.checkpointer = config, workdir, writer, checkpointer
        self.start_step = start_step
        self.pending: Call | None = None
        self.first = True
        self.first_call_steps = 0
        self.last: dict = {}
        self.samples: list = []
        self.throughput = Throughput()
        self.seconds = {"compile": 0.0, "sampling": 0.0, "checkpoint": 0.0}
        self.t_start = self._last_line = time.perf_counter()

    def finish_pending(self) -> None:
        if self.pending is not None:
            call, self.pending = self.pending, None
            self.finish(call)

    def finish(self, call: Call) -> None:
        """Wait for ``call``; raise on a non-finite step; time it; log its metrics (those of its last step)."""
        report = jax.device_get(call.report)
        metrics = {k: float(v) for k, v in report["metrics"].items()}
        bad = int(report["bad_step"])
        if bad >= 0:
            self.checkpointer.wait()
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad} (loss {metrics['loss']}, grad norm "
                f"{metrics['grad_norm']}); stopping. Nothing was saved after it: the last good checkpoint "
                f"(step {self.checkpointer.latest_step()}) is intact in {self.workdir}/checkpoints")
        first = self.first
        if first:
            self.first, self.first_call_steps = False, call.n
            self.seconds["compile"] = time.perf_counter() - self.t_start
            self.throughput.mark()
            log.info("compiled and ran the first call in %.1f s", self.seconds["compile"])
        else:
            self.throughput.update(call.n)
        num_steps = self.config.train.num_steps
        rate, eta = self.throughput.rate, self.throughput.eta(num_steps - call.step)
        timing = {} if rate is None else {"steps_per_sec": rate, "examples_per_sec": rate * self.config.data.batch_size,
                                          "eta_sec": eta}
        self.last = {**metrics, **timing}
        if call.log:
            self.writer.write(call.step, self.last)
        now = time.perf_counter()
        if call.log or first or now - self._last_line >= PROGRESS_SECONDS:
            self._last_line = now
            log.info("step %d/%d  loss %.5f  grad_norm %.3f  lr %.2e  %s", call.step, num_steps, metrics["loss"],
                     metrics["grad_norm"], metrics["lr"],
                     "(rate after the next calls)" if rate is None else f"{rate:.1f} steps/s  eta {_duration(eta)}")

    @contextlib.contextmanager
    def pause(self, what: str):
        """Time spent in the block is ``what``, not training: excluded from the rate and the ETA."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] += time.perf_counter() - start
            self.throughput.mark()

    def summary(self, step: int, preempted: bool) -> None:
        wall = time.perf_counter() - self.t_start
        s = self.seconds
        train_s = wall - s["compile"] - s["sampling"]
        trained = step - self.start_step
        timed = trained - self.first_call_steps          # the first call's steps ran inside the compile time
        rate = timed / train_s if timed > 0 and train_s > 0 else float("nan")
        bare = timed / (train_s - s["checkpoint"]) if timed > 0 and train_s > s["checkpoint"] else rate
        log.info("%s at step %d/%d: %d steps in %s; training %.2f s = %.4g steps/s (after the first call, "
                 "checkpoint saves included: %.2f s; %.4g steps/s without them), first call with compilation %.1f s, "
                 "sampling %.1f s", "stopped (SIGTERM)" if preempted else "finished", step,
                 self.config.train.num_steps, trained, _duration(wall), train_s, rate, s["checkpoint"], bare,
                 s["compile"], s["sampling"])
        ckpt = self.checkpointer.all_steps()
        log.info("wrote in %s:\n  checkpoints/  steps %s\n  metrics.jsonl, tensorboard/, config.json\n  samples/  %s",
                 self.workdir, ", ".join(map(str, ckpt)) or "none",
                 ", ".join(p.name for p in self.samples) or "none this run")


def _duration(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _write_config(workdir, config) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
