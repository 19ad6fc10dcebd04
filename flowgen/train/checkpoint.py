"""Checkpoints with orbax, verified on restore.

Layout (orbax's ``CheckpointManager``, one directory per step, two items)::

    <directory>/<step>/state/      the array pytree (StandardSave: OCDBT + zarr3, sharding-aware)
    <directory>/<step>/metadata/   JSON: the caller's metadata dict plus a checksum record of the state
    <directory>/corrupt/<step>-<UTC timestamp>/   steps that failed verification, moved aside (never deleted)

Why the checksum: orbax skips interrupted saves (they stay in ``<step>.orbax-checkpoint-tmp`` directories, which
neither orbax nor this module treats as a step), but it does not validate a finished one. Measured with orbax 0.12.8
(see tests/test_train_checkpoint.py): a truncated array data file makes restore raise a bare ``Exception`` from
TensorStore; bytes flipped inside the zstd-compressed OCDBT data restore *without error* and with wrong values; a
truncated ``_METADATA``/``manifest.ocdbt`` or JSON item raises; some files (``_sharding``, the per-process manifest,
``_METADATA`` deleted outright) are not needed for restore at all. So ``save`` records, in the JSON item, a sha256 of
every leaf (dtype, shape and raw bytes of the host value at save time, in tree order) and a sha256 of the JSON record
itself; ``restore`` recomputes them. A step that raises or mismatches is logged, moved into ``corrupt/`` and the next
older step is tried, so resuming after a crash mid-write (or a bit flip on disk) lands on the newest good state.

Not covered: corruption of a checkpoint that ``max_to_keep`` already made the only survivor (a silently corrupt step
counts as one of the ``keep``; it is found only when restored); and a restore that fails for a transient reason (an
I/O error, host OOM) quarantines a good step; it is moved, not deleted, and can be moved back by hand.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE, METADATA = "state", "metadata"
CORRUPT_DIR = "corrupt"
_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint is intact but holds a different tree (paths, shapes or dtypes) than the one asked for."""


class Checkpointer:
    """Saves and restores ``(step, state pytree, JSON metadata)`` in ``directory``; keeps the ``keep`` newest steps.

    ``save`` is asynchronous when ``async_save`` (it returns once the arrays are copied to host memory, so the caller
    may donate or overwrite them); ``restore`` returns the newest checkpoint that restores and verifies.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = epath.Path(directory)
        self.keep = keep
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, METADATA))
        self._closed = False

    # ------------------------------------------------------------------ save

    def save(self, step: int, state, metadata: dict) -> None:
        """Save ``state`` (a pytree of jax.Arrays, possibly sharded, and numpy/python scalars) and ``metadata`` (a
        JSON dict: dicts with str keys, lists, str, int, float, bool, None) as ``step``.

        Raises FileExistsError if ``step`` exists (a quarantined step no longer does), ValueError if it is older
        than the newest existing step (orbax only appends), TypeError if ``metadata`` would not round-trip exactly
        through JSON. The checksum is computed here, synchronously, from the values passed in.
        """
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        _check_json(metadata)
        existing = sorted(self._manager.all_steps())
        if step in existing or (self.directory / str(step)).exists():
            raise FileExistsError(
                f"checkpoint step {step} already exists in {self.directory}; refusing to overwrite it. Save under a "
                "new step, or use another directory.")
        if existing and step < existing[-1]:
            raise ValueError(
                f"cannot save step {step}: {self.directory} already holds the newer step {existing[-1]} and orbax only "
                "saves increasing steps. Use another directory, or move the newer steps aside first.")
        record = {"format": _FORMAT, "metadata": metadata, "checksum": state_checksum(state)}
        record["record_sha256"] = _json_sha256(record)
        saved = self._manager.save(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), METADATA: ocp.args.JsonSave(record)}))
        if not saved:  # should_save() said no: never drop a save silently
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory} (steps: {existing})")

    # --------------------------------------------------------------- inspect

    def latest_step(self) -> int | None:
        """The newest finalized step on disk (not verified; ``restore`` verifies). In-flight and interrupted saves
        (orbax's ``*.orbax-checkpoint-tmp`` directories) do not count."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            if ocp.step.is_checkpoint_finalized(self.directory / str(step)):
                return step
        return None

    def all_steps(self) -> list[int]:
        """All finalized steps, oldest first."""
        return sorted(s for s in self._manager.all_steps()
                      if ocp.step.is_checkpoint_finalized(self.directory / str(s)))

    # --------------------------------------------------------------- restore

    def restore(self, abstract_state, step: int | None = None) -> tuple[int, Any, dict] | None:
        """Restore ``(step, state, metadata)`` from the newest good checkpoint at or before ``step`` (None: newest).

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` set (``jax.eval_shape`` plus
        shardings): arrays are read directly into those shardings, whatever the sharding at save time was.
        A step whose restore raises or whose checksum mismatches is logged (warning, with the step and the reason),
        moved to ``<directory>/corrupt/<step>-<timestamp>`` and the next older step is tried; None if none is good.
        Raises CheckpointMismatchError, touching nothing, if an intact checkpoint holds a different tree (leaf
        paths, shapes, dtypes) than ``abstract_state``, and FileNotFoundError if ``step`` is given but absent.
        """
        self.wait()
        self._manager.reload()  # the directory may have changed under us (another process, a quarantine)
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint step {step} in {self.directory} (steps: {steps})")
            steps = [s for s in steps if s <= step]
        expected = _abstract_leaves(abstract_state)
        for s in sorted(steps, reverse=True):
            reason, restored = self._try_restore(s, abstract_state, expected)
            if _any_process(reason is not None):
                self._quarantine(s, reason or "failed on another process")
                continue
            return restored
        return None

    def _try_restore(self, step: int, abstract_state, expected: list) -> tuple[str | None, Any]:
        """(None, (step, state, metadata)) if ``step`` restores and verifies, else (reason, None)."""
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))[
                METADATA]
        except Exception as e:  # noqa: BLE001 - any failure to read the record is corruption of this step
            return f"metadata item unreadable: {_describe(e)}", None
        problem = _check_record(record)
        if problem:
            return problem, None
        saved = [(p, d, tuple(sh)) for p, d, sh, _ in record["checksum"]["leaves"]]
        if saved != expected:  # an intact record of another tree: the caller asked for the wrong thing
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} holds a different state tree than abstract_state:\n  "
                + "\n  ".join(_tree_difference(saved, expected)) + "\nNothing was changed on disk.")
        try:
            state = self._manager.restore(
                step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))[STATE]
        except Exception as e:  # noqa: BLE001 - truncated/missing array files raise all sorts of exceptions
            return f"restore raised {_describe(e)}", None
        got = state_checksum(state)
        if got["sha256"] != record["checksum"]["sha256"]:
            bad = [p for (p, *_, a), (_, *_, b) in zip(record["checksum"]["leaves"], got["leaves"], strict=True)
                   if a != b]
            names = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            return f"checksum mismatch in {len(bad)} of {len(got['leaves'])} leaves ({names})", None
        return None, (step, state, record["metadata"])

    def _quarantine(self, step: int, reason: str) -> None:
        src = self.directory / str(step)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        dst = self.directory / CORRUPT_DIR / f"{step}-{stamp}"
        if jax.process_index() == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            n = 0
            while dst.exists():  # never overwrite an earlier quarantined copy
                n += 1
                dst = self.directory / CORRUPT_DIR / f"{step}-{stamp}-{n}"
            src.rename(dst)
            try:
                (dst / "QUARANTINED.txt").write_text(f"step {step} moved here from {src} at {stamp}: {reason}\n")
            except OSError:
                pass
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"flowgen_checkpoint_quarantine_{step}")
        log.warning("checkpoint step %d in %s is corrupt (%s); moved it to %s and falling back to an older step",
                    step, self.directory, reason, dst)
        self._manager.reload()

    # -------------------------------------------------------------- lifetime

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (re-raises a failure of one)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's resources. Idempotent."""
        if not self._closed:
            self._closed = True
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ checksums


def state_checksum(state) -> dict:
    """``{"sha256": ..., "leaves": [[path, dtype, shape, sha256], ...]}`` over the host values of ``state``'s leaves
    (dtype canonicalised as jax would, so a python int and the int32 it restores to agree), in tree order."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    for _, x in leaves:  # start every device-to-host copy before waiting on the first
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            x.copy_to_host_async()
    total = hashlib.sha256()
    out = []
    for path, x in leaves:
        arr = _host_value(x)
        h = hashlib.sha256()
        h.update(f"{arr.dtype.name}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
        name = jax.tree_util.keystr(path)
        out.append([name, arr.dtype.name, list(arr.shape), h.hexdigest()])
        total.update(f"{name}\0{h.hexdigest()}\0".encode())
    return {"sha256": total.hexdigest(), "leaves": out}


def _host_value(x) -> np.ndarray:
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:  # multi-process: every process needs the global value (costly, but exact)
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    arr = np.asarray(x)
    dtype = jax.dtypes.canonicalize_dtype(arr.dtype)
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _abstract_leaves(abstract_state) -> list:
    out = []
    for path, a in jax.tree_util.tree_leaves_with_path(abstract_state):
        dtype = jax.dtypes.canonicalize_dtype(a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)
        out.append((jax.tree_util.keystr(path), np.dtype(dtype).name, tuple(np.shape(a))))
    return out


def _tree_difference(saved: list, expected: list) -> list[str]:
    a, b = {p: (d, s) for p, d, s in saved}, {p: (d, s) for p, d, s in expected}
    lines = [f"{p}: checkpoint {a.get(p, 'missing')} vs requested {b.get(p, 'missing')}"
             for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
    return lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else []) or ["leaf order differs"]


def _json_sha256(obj) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_record(record) -> str | None:
    """None if ``record`` is an intact checksum record written by ``save``, else what is wrong with it."""
    if not isinstance(record, dict) or "record_sha256" not in record:
        return "metadata item is not a checkpoint record (no record_sha256)"
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    if _json_sha256(body) != record["record_sha256"]:
        return "metadata item fails its own sha256 (JSON altered)"
    if body.get("format") != _FORMAT:
        return f"unknown record format {body.get('format')!r}"
    return None


def _check_json(x, where: str = "metadata") -> None:
    """Raise TypeError unless ``x`` survives json.dumps/json.loads unchanged (tuples, numpy scalars and non-str keys
    would come back as something else)."""
    if x is None or type(x) in (bool, int, float, str):
        return
    if isinstance(x, list):
        for i, v in enumerate(x):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if type(k) is not str:
                raise TypeError(f"{where} has the non-str key {k!r}: JSON would turn it into a string")
            _check_json(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(x).__name__} ({x!r:.80}); checkpoint metadata must be JSON types (dict with "
                    "str keys, list, str, int, float, bool, None) so that it restores exactly: convert tuples to "
                    "lists and numpy values with .tolist()/.item()")


def _any_process(flag: bool) -> bool:
    """True if ``flag`` is True on any process (all processes must take the same fallback decision)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
