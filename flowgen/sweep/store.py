"""One JSON file per finished cell, written once and atomically; never rewritten.

A cell's file name is its readable label plus a hash of everything that determines its samples (model and its
checkpoint step, path, solver and options, NFE budget, guidance, seed, sample count, grid), so a changed setting is
a new cell and never overwrites an old one. The samples are kept (``NAME.npy``) next to the record (``NAME.json``);
a metric added to the config later is computed from them and written once as ``NAME.metric-METRIC.json``.

``write_once`` writes to a temporary file in the same directory, fsyncs it and links it into place with ``os.link``,
which fails if the name exists: a reader sees either no file or the whole file, a SIGKILL leaves at most a stray
``.tmp`` (ignored, removed on the next run), and a finished cell cannot be replaced, not even by a second sweep
running at the same time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re

import numpy as np

from flowgen.sweep.lock import process_alive

SUFFIX = ".json"


def cell_id(identity: dict) -> str:
    label = "-".join(str(identity[k]) for k in ("model", "solver", "nfe_budget")) + \
        f"-w{identity['guidance']}-seed{identity['seed']}"
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{label}-{digest}"


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _write_file_once(final: str, write) -> bool:
    """``write(file)`` into a temporary next to ``final``, fsync, then link it to ``final`` unless that exists."""
    directory, name = os.path.split(final)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_once(directory: str, name: str, record: dict) -> bool:
    """Write ``record`` as ``directory/name.json`` unless it exists; True if this call wrote it."""
    return _write_file_once(os.path.join(directory, name + SUFFIX),
                            lambda f: f.write(json.dumps(_json_safe(record), indent=1).encode()))


def write_samples_once(directory: str, name: str, samples: np.ndarray) -> bool:
    """The cell's samples as ``directory/name.npy`` (so a metric added later scores them without resampling)."""
    return _write_file_once(os.path.join(directory, name + ".npy"), lambda f: np.save(f, samples))


def read_samples(directory: str, name: str) -> np.ndarray | None:
    path = os.path.join(directory, name + ".npy")
    return np.load(path) if os.path.exists(path) else None


def read(directory: str, name: str) -> dict | None:
    path = os.path.join(directory, name + SUFFIX)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def remove_stray_temporaries(directory: str) -> None:
    """Temporary files of killed runs (their pid is gone) are removed; finished cells are never touched."""
    for entry in os.listdir(directory):
        if entry.startswith(".") and entry.endswith(".tmp"):
            try:
                pid = int(entry.rsplit(".", 2)[-2])
            except ValueError:
                continue
            if not process_alive(pid):
                os.unlink(os.path.join(directory, entry))
    return True
