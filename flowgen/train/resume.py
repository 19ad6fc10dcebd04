"""Where a run starts, decided before anything is compiled: resume, refuse, or say it is already done.

    check_restart(workdir, step, restart)           ``restart`` is only for a workdir without a good checkpoint
    check_workdir(config, workdir, checkpointer)   refuse checkpoints of another config, or a changed schedule length
    finished(config, workdir)                       the last metrics if the workdir already holds the final step
    start_fresh(workdir, checkpointer, restart)     no checkpoint restored: refuse if steps were quarantined (unless
                                                    ``restart``), and move an earlier run's outputs aside

Promise: a workdir that holds checkpoints, good or quarantined, never silently trains again from step 0, and
nothing in it is overwritten or deleted. Every refusal is a ``RunRefusedError`` that names what to do and says that
nothing was changed; ``flowgen.main`` prints it as one line-group without a traceback.
"""

from __future__ import annotations

import datetime
import json
import logging
import os

import jax
import ml_collections
from etils import epath

from flowgen.train import config as config_lib
from flowgen.train import optim

log = logging.getLogger("flowgen")

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.jsonl"
OUTPUTS = (METRICS_FILE, "samples", "tensorboard")  # what a run writes besides its checkpoints and config


class RunRefusedError(ValueError):
    """What was asked would lose or mix up earlier work in the workdir; nothing was changed."""


class ConfigMismatchError(RunRefusedError):
    """The workdir's checkpoints were made by a different config."""


def saved_config(workdir: str | os.PathLike) -> dict | None:
    """The full config the workdir's run was started with (``config.json``), or None."""
    path = epath.Path(os.fspath(workdir)) / CONFIG_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def check_workdir(config, workdir: str, checkpointer, training: bool = True) -> None:
    """Refuse to use a workdir whose checkpoints were made by a different config; when ``training``, also refuse a
    changed ``train.num_steps`` if the learning-rate schedule depends on it, and log the other resumable changes
    (``config.RESUMABLE_KEYS``) as warnings. Nothing is touched."""
    step = checkpointer.latest_step()
    saved_full = saved_config(workdir)
    if step is None or saved_full is None:
        return
    current_full = json.loads(config.to_json())
    saved_full = json.loads(config_lib.upgrade(ml_collections.ConfigDict(saved_full)).to_json())
    saved = config_lib.comparable(ml_collections.ConfigDict(saved_full))
    diff = config_lib.config_difference(saved, config_lib.comparable(config))
    if diff:
        raise ConfigMismatchError(
            f"workdir {workdir} holds checkpoints (step {step}) of a different config:\n  " + "\n  ".join(diff)
            + "\nUse another --workdir, or the same config to resume. Nothing in the workdir was changed.")
    if not training:
        return
    before, now = saved_full["train"]["num_steps"], config.train.num_steps
    uses = [f"optim.schedule={c['optim']['schedule']!r}" for c in (saved_full, current_full)
            if optim.schedule_uses_num_steps(ml_collections.ConfigDict(c["optim"]))]
    if before != now and uses:
        raise RunRefusedError(
            f"train.num_steps changed from {before} (the run in {workdir}, checkpoint step {step}) to {now}, but "
            f"{uses[0]} sets the learning rate by train.num_steps: resuming would silently change the schedule of "
            f"the remaining steps. Resume with --config.train.num_steps={before}, or train longer in a new --workdir. "
            "Nothing in the workdir was changed.")
    for change in config_lib.config_difference(saved_full, current_full):
        log.warning("resuming with a changed setting: %s", change)


def finished(config, workdir: str, checkpointer) -> dict | None:
    """If the workdir already holds a checkpoint at or past ``train.num_steps`` (same config), log that the run is
    done and return its last logged metrics ({} if none); otherwise None. Reads no arrays."""
    step = checkpointer.latest_step()
    if step is None or step < config.train.num_steps:
        return None
    last = {}
    path = epath.Path(os.fspath(workdir)) / METRICS_FILE
    if path.exists():
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        last = next((x for x in reversed(lines) if "loss" in x), {})
    log.info("already done: %s holds the checkpoint of step %d (train.num_steps=%d); nothing to train. To train "
             "further, raise --config.train.num_steps (schedules permitting); to sample: --mode=sample",
             checkpointer.directory, step, config.train.num_steps)
    return last


def check_restart(workdir: str, restored_step: int, restart: bool) -> None:
    """``restart`` is for a workdir whose checkpoints were all quarantined; refuse it where a good one restored."""
    if restart:
        raise RunRefusedError(
            f"--restart: {workdir} holds a good checkpoint (step {restored_step}), which a plain run resumes; "
            "refusing to train again from step 0 over it. Use another --workdir to start over. Nothing was changed.")


def start_fresh(workdir: str, checkpointer, restart: bool) -> None:
    """Called when no checkpoint restored. Refuses (RunRefusedError) when steps of this workdir were quarantined,
    unless ``restart``; then moves an earlier run's outputs (metrics, samples, tensorboard) into
    ``previous-<UTC time>/`` so that the new run appends to and overwrites nothing."""
    quarantined = checkpointer.quarantined()
    if quarantined and not restart:
        steps = sorted({s for s, _ in quarantined})
        raise RunRefusedError(
            f"{workdir} holds checkpoints, but every one failed verification and was quarantined (steps "
            f"{', '.join(map(str, steps))}, in {checkpointer.directory / 'corrupt'}; each folder's QUARANTINED.txt "
            "says why). Refusing to train again from step 0. Either restore one (move it back to "
            f"{checkpointer.directory}/<step>, e.g. after fixing the files) and run again, or discard them and start "
            "over with --restart (they stay in corrupt/; delete that folder yourself if you wish). Nothing was "
            "changed.")
    workdir = epath.Path(os.fspath(workdir))
    present = [name for name in OUTPUTS if (workdir / name).exists()]
    if not present or jax.process_index() != 0:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = workdir / f"previous-{stamp}"
    n = 0
    while dest.exists():
        n += 1
        dest = workdir / f"previous-{stamp}-{n}"
    dest.mkdir(parents=True)
    for name in present:  # atomic renames locally; on gs:// and the like a copy then a delete, object by object
        (workdir / name).rename(dest / name)
    log.warning("starting from step 0: moved the earlier run's %s to %s", ", ".join(present), dest)
