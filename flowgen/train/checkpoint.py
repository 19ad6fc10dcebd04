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
``_METADATA`` deleted outright) are not needed for restore at all. So ``save`` records, in the JSON item, a digest of
every leaf (``state_checksum``: computed on the devices that hold the leaf, see below) and a sha256 of the JSON record
itself; ``restore`` recomputes them.

Quarantine needs evidence of damage: a checksum or record mismatch, or a read that fails the way missing or damaged
files fail (TensorStore's DATA_LOSS / OUT_OF_RANGE / NOT_FOUND / a failed decode, undecodable JSON, a missing file or
item). Such a step is logged, moved into ``corrupt/`` and the next older step is tried, so resuming after a crash
mid-write (or a bit flip on disk) lands on the newest good state. Any other failure (a relative path, a permission
error, host OOM, a bug) raises ``CheckpointRestoreError`` and moves nothing.

Not covered: corruption of a checkpoint that ``max_to_keep`` already made the only survivor (a silently corrupt step
counts as one of the ``keep``; it is found only when restored). A quarantined step is moved, never deleted, and can
be moved back by hand (``QUARANTINED.txt`` in it says from where and why).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flowgen.io import workdir_path

log = logging.getLogger(__name__)

STATE, METADATA = "state", "metadata"
CORRUPT_DIR = "corrupt"
QUARANTINE_NOTE = "QUARANTINED.txt"
_FORMAT = 2  # 1: host sha256 of every leaf (still verified on restore); 2: the device-side digest of state_checksum


class CheckpointMismatchError(ValueError):
    """The checkpoint is intact but holds a different tree (paths, shapes or dtypes) than the one asked for."""


class CheckpointRestoreError(RuntimeError):
    """Restoring a step failed for a reason that is not evidence of damage (nothing was moved)."""


class Checkpointer:
    """Saves and restores ``(step, state pytree, JSON metadata)`` in ``directory``; keeps the ``keep`` newest steps.

    ``save`` is asynchronous when ``async_save`` (it returns once the arrays are copied to host memory, so the caller
    may donate or overwrite them); ``restore`` returns the newest checkpoint that restores and verifies.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = _absolute(directory)
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

    def restore(self, abstract_state, step: int | None = None, *, quarantine: bool = True
                ) -> tuple[int, Any, dict] | None:
        """Restore ``(step, state, metadata)`` from the newest good checkpoint at or before ``step`` (None: newest).

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` set (``jax.eval_shape`` plus
        shardings): arrays are read directly into those shardings, whatever the sharding at save time was.
        A step with evidence of damage (checksum mismatch, missing or undecodable data) is logged (warning, with the
        step and the reason), moved to ``<directory>/corrupt/<step>-<timestamp>`` and the next older step is tried;
        None if none is good. Raises, touching nothing: CheckpointMismatchError if an intact checkpoint holds a
        different tree (leaf paths, shapes, dtypes) than ``abstract_state``; CheckpointRestoreError if a restore fails
        for any other reason; FileNotFoundError if ``step`` is given but absent. ``quarantine=False`` only reads: a
        damaged step is logged and skipped, not moved (for readers such as ``flowgen.load_model``).
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
            try:
                reason, restored = self._try_restore(s, abstract_state, expected)
                error = None
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised below, on every process alike
                reason, restored, error = None, None, e
            status = _max_over_processes(2 if error is not None else 1 if reason is not None else 0)
            if status == 2:
                raise CheckpointRestoreError(
                    f"restoring checkpoint step {s} of {self.directory} failed: "
                    + (_describe(error) if error is not None else "on another process")
                    + ". That is not evidence of damage (not a checksum mismatch, nor missing or undecodable data), "
                    "so nothing was moved; fix the cause and run again.") from error
            if status == 1:
                if quarantine:
                    self._quarantine(s, reason or "damaged on another process")
                else:
                    log.warning("skipping damaged checkpoint step %d of %s (left in place): %s", s, self.directory,
                                reason or "damaged on another process")
                continue
            return restored
        return None

    def quarantined(self) -> list[tuple[int, str]]:
        """``(step, folder)`` of every step in ``corrupt/``, oldest first (moved there by ``restore``)."""
        root = self.directory / CORRUPT_DIR
        if not root.exists():
            return []
        out = []
        for p in root.iterdir():
            head = p.name.split("-", 1)[0]
            if head.isdigit():
                out.append((int(head), str(p)))
        return sorted(out)

    def _try_restore(self, step: int, abstract_state, expected: list) -> tuple[str | None, Any]:
        """(None, (step, state, metadata)) if ``step`` restores and verifies; (reason, None) on evidence of damage;
        raises anything else."""
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))[
                METADATA]
        except Exception as e:
            if not _is_damage(e):
                raise
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
        except Exception as e:
            if not _is_damage(e):
                raise
            return f"restore raised {_describe(e)}", None
        got = (state_checksum if record["format"] == _FORMAT else _host_sha256_checksum)(state)
        saved_digest = record["checksum"].get("digest", record["checksum"].get("sha256"))  # format 1: "sha256"
        if got["digest"] != saved_digest:
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
            src.rename(dst)  # atomic on a local filesystem; on gs:// and the like a copy then a delete, per object
            try:
                (dst / QUARANTINE_NOTE).write_text(
                    f"step {step} moved here from {src} at {stamp}: {reason}\nTo use it again (e.g. after repairing "
                    f"its files), move this folder back to {src}; to discard it, delete this folder.\n")
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
    """``{"algorithm", "digest", "leaves": [[path, dtype, shape, digest], ...]}`` of ``state``'s leaves, in tree order
    (dtype canonicalised as jax would, so a python int and the int32 it restores to agree).

    A leaf's digest is a position-keyed additive hash of its bits (AdHASH, Bellare & Micciancio 1997), in two
    32-bit lanes:

        h_i = fmix32(w_i XOR fmix32(i·0x9E3779B1 + s₀)),   D = (Σ_i h_i,  Σ_i fmix32(h_i + s₁))  mod 2³²

    over the 32-bit words ``w_i`` of the flattened leaf (16- and 8-bit values widened, 64-bit ones split), where
    ``fmix32`` is MurmurHash3's finaliser (a bijection of uint32). Changing any single word always changes the first
    sum; several changed words cancel in both with probability about 2⁻⁶⁴. It detects accidental damage, not
    tampering.
    Why not sha256 of the host bytes (as before): a sum is independent of the order of its terms, so every device
    hashes the shards it holds, XLA adds the partial sums (an all-reduce of 8 bytes per leaf), and nothing is copied
    to the host or gathered across hosts; the digest is the same for any sharding, device or host count, so a state
    saved with one layout verifies when restored onto another. Cost per process: one pass over its own shards.
    """
    leaves = jax.tree_util.tree_leaves_with_path(state)
    values = [x if isinstance(x, jax.Array) else _canonical_host_value(x) for _, x in leaves]
    lanes = [_digest_program(x)(x) if isinstance(x, jax.Array) else _leaf_digest(x) for x in values]
    total = hashlib.sha256()
    out = []
    for (path, _), x, lane in zip(leaves, values, lanes, strict=True):
        if not lane.is_fully_replicated:  # a full reduction is replicated; anything else would be a jax change
            raise RuntimeError(f"checksum of {jax.tree_util.keystr(path)} is not replicated ({lane.sharding})")
        digest = "".join(f"{int(v):08x}" for v in np.asarray(lane.addressable_data(0)))
        name = jax.tree_util.keystr(path)
        dtype = np.dtype(x.dtype).name
        out.append([name, dtype, list(x.shape), digest])
        total.update(f"{name}\0{dtype}{tuple(x.shape)}\0{digest}\0".encode())
    return {"algorithm": "adhash-fmix32x2", "digest": total.hexdigest(), "leaves": out}


_SEEDS = (0x243F6A88, 0x85A308D3)  # the two lanes' seeds (digits of π: arbitrary, fixed)


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 that spreads every input bit over the output."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x) -> jax.Array:
    """The bits of ``x`` as uint32 words (one per element; two per 64-bit element, on a trailing axis)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = np.dtype(x.dtype).itemsize
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x, size = jnp.stack([x.real, x.imag], axis=-1), size // 2
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _leaf_digest(x) -> jax.Array:
    """The two uint32 lanes of one leaf's digest (see ``state_checksum``), replicated."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)  # row-major position of each word (mod 2³²)
    for axis in range(w.ndim):
        index = index * jnp.uint32(w.shape[axis] % 2**32) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
    h = _fmix32(w ^ _fmix32(index * jnp.uint32(0x9E3779B1) + jnp.uint32(_SEEDS[0])))
    return jnp.stack([jnp.sum(h, dtype=jnp.uint32), jnp.sum(_fmix32(h + jnp.uint32(_SEEDS[1])), dtype=jnp.uint32)])


# One small compiled program per leaf shape, dtype and sharding: the 4 copies of a network in a train state (params,
# EMA, Adam's two moments) share them. (One program over all leaves compiled far longer, paid at the first save and
# at every restore: the digits U-Net's 839 leaves have only 26 shapes, and ``compile_checksums`` compiles those in
# the background; timings in benchmarks/README.md.) Kept here rather than in jit's cache because ahead-of-time
# compilation does not fill jit's cache.
_PROGRAMS: dict[tuple, Any] = {}
_PROGRAMS_LOCK = threading.Lock()


def _digest_program(x):
    """The compiled ``_leaf_digest`` for arrays like ``x`` (a jax.Array or a ShapeDtypeStruct with a sharding)."""
    key = (tuple(x.shape), np.dtype(x.dtype) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.dtype,
           x.sharding)
    with _PROGRAMS_LOCK:
        program = _PROGRAMS.get(key)
        if program is None:
            program = _PROGRAMS[key] = _leaf_digest.lower(jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                                sharding=x.sharding)).compile()
    return program


def compile_checksums(abstract_state, background: bool = True) -> threading.Thread | None:
    """Compile the checksum programs ``state_checksum`` needs for states like ``abstract_state`` (a pytree of
    ``jax.ShapeDtypeStruct`` with shardings, or of arrays), so that the first save does not pause to compile them.
    ``background``: in a daemon thread (returned), e.g. while the first training step compiles."""
    leaves = [a for a in jax.tree.leaves(abstract_state) if getattr(a, "sharding", None) is not None]

    def work():
        for a in leaves:
            _digest_program(a)

    if not background:
        work()
        return None
    thread = threading.Thread(target=work, name="flowgen-checksum-compile", daemon=True)
    thread.start()
    return thread


def _canonical_host_value(x) -> np.ndarray:
    arr = np.asarray(x)
    dtype = jax.dtypes.canonicalize_dtype(arr.dtype)
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _host_sha256_checksum(state) -> dict:
    """The checksum of record format 1 (sha256 of every leaf's host bytes), to verify checkpoints written by it.
    Needs every leaf's global value on this host: not for multi-host use."""
    total = hashlib.sha256()
    out = []
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        arr = np.asarray(x) if isinstance(x, jax.Array) else _canonical_host_value(x)
        h = hashlib.sha256()
        h.update(f"{arr.dtype.name}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
        name = jax.tree_util.keystr(path)
        out.append([name, arr.dtype.name, list(arr.shape), h.hexdigest()])
        total.update(f"{name}\0{h.hexdigest()}\0".encode())
    return {"digest": total.hexdigest(), "leaves": out}


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
    if body.get("format") not in (1, _FORMAT):  # intact, but not ours to read: not damage
        raise ValueError(f"checkpoint record format {body.get('format')!r} is not one this flowgen reads (1, "
                         f"{_FORMAT}): written by another version?")
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


def _max_over_processes(code: int) -> int:
    """The largest ``code`` over all processes (all processes must take the same decision)."""
    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(code, np.int32))))


# TensorStore reports missing or damaged files with these status codes (measured with orbax 0.12.8: a truncated data
# file gives OUT_OF_RANGE, a deleted one FAILED_PRECONDITION "Truncated Zstd-compressed stream", a damaged manifest
# DATA_LOSS); PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE and the like are not damage.
_DAMAGE_STATUS = ("DATA_LOSS:", "OUT_OF_RANGE:", "NOT_FOUND:")
_DAMAGE_READ = ("Error reading", "Error decoding", "Truncated", "Corrupt")


def _is_damage(error: BaseException) -> bool:
    """True if ``error`` (or an exception it was raised from) shows missing or undecodable checkpoint data."""
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
            return True
        if isinstance(e, KeyError) and "was not found in the checkpoint" in text:  # an item's folder is missing
            return True
        if text.startswith(_DAMAGE_STATUS) or (text.startswith("FAILED_PRECONDITION:")
                                               and any(m in text for m in _DAMAGE_READ)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _absolute(directory) -> epath.Path:
    """``directory`` as an absolute path (orbax refuses relative ones); URLs such as gs://... are left as they are."""
    return workdir_path(directory)


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
