"""Metrics: JSON lines (``metrics.jsonl``), TensorBoard event files (tensorboardX; no TensorFlow needed) and a
console line. Only process 0 writes.

``metrics.jsonl`` is append-only: a run resumed from a checkpoint older than its last logged step logs the steps
after that checkpoint again (with the same values: resuming is exact), and sampling metrics come as rows of their
own. ``read_metrics(workdir)`` gives one merged row per step.

The workdir may be a URI (gs://...): files go through ``etils.epath``, and tensorboardX writes its event files to
gs:// or s3:// itself (it is given the string)."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from etils import epath

from flowgen.io import is_remote


class MetricWriter:
    def __init__(self, workdir: str | os.PathLike):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._remote: tuple[epath.Path, list[str]] | None = None
        if self.enabled:
            workdir = epath.Path(os.fspath(workdir))
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "metrics.jsonl"
            if is_remote(workdir):
                # Objects on gs:// and the like cannot be appended to: keep the text and rewrite the object at each
                # write (metrics.jsonl is small: one line per logged step).
                self._remote = (path, [path.read_text()] if path.exists() else [])
            else:
                self._jsonl = open(os.fspath(path), "a")  # noqa: SIM115 - closed in close()
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.fspath(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        line = json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n"
        if self._remote is not None:
            path, parts = self._remote
            parts.append(line)
            path.write_text("".join(parts))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl`` merged into one dict per step, in step order: the keys logged at a step
    (training metrics, sampling metrics), a later row's values replacing an earlier one's (a step logged again after
    a resume). Raises FileNotFoundError if the run has logged nothing."""
    merged: dict[int, dict] = {}
    for line in (epath.Path(os.fspath(workdir)) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            merged.setdefault(int(row["step"]), {}).update(row)
    return [merged[step] for step in sorted(merged)]


class Throughput:
    """Steps per second of training alone, smoothed, for the console and the ETA.

    Time counts only between ``mark()`` (training (re)starts: after compilation, sampling, saving) and each
    ``update(steps)`` (that many more steps finished); pauses outside those intervals are excluded. The rate is
    an exponentially weighted ratio over training time, ``rate = Σ wᵢ·stepsᵢ / Σ wᵢ·secondsᵢ`` with weights
    halving every ``half_life`` seconds of training, so it follows load changes without jumping with each call.
    """

    def __init__(self, half_life: float = 20.0, clock=time.perf_counter):
        self.half_life, self._clock = half_life, clock
        self._steps = self._seconds = 0.0
        self._since = None

    def mark(self) -> None:
        self._since = self._clock()

    def update(self, steps: int) -> None:
        now = self._clock()
        if self._since is not None:
            dt = now - self._since
            decay = 0.5 ** (dt / self.half_life)
            self._steps = self._steps * decay + steps
            self._seconds = self._seconds * decay + dt
        self._since = now

    @property
    def rate(self) -> float | None:
        """Smoothed steps/s, or None before the first timed interval."""
        return self._steps / self._seconds if self._seconds > 0 else None

    def eta(self, remaining_steps: int) -> float | None:
        rate = self.rate
        return remaining_steps / rate if rate else None
