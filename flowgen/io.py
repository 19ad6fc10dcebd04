"""Paths of workdirs, which are local folders or remote URIs (``gs://bucket/run``, ``s3://...``: whatever orbax and
TensorStore accept): handled with ``etils.epath``, never ``os.path``, so that a URI stays a URI end to end.

    workdir_path("runs/toy")          → epath.Path("/abs/cwd/runs/toy")   (local: made absolute, as orbax requires)
    workdir_path("gs://bucket/run")   → epath.Path("gs://bucket/run")     (a URI: unchanged)

What object stores do not give (gs:// and the like): atomic renames (a rename is a copy then a delete, object by
object) and exclusive creation (no ``O_EXCL``). The few places that rely on either say so where they do it.
"""

from __future__ import annotations

import os
import re

from etils import epath

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """True if ``path`` is a URI with a scheme (``gs://``, ``s3://``, ...) rather than a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def workdir_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a local path made absolute (``os.path.abspath``), a URI left as it is."""
    text = os.fspath(path)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def write_bytes_once(path: epath.Path, data: bytes) -> None:
    """Write ``data`` to ``path``, which must not exist (FileExistsError if it does).

    Local: an exclusive create (``open(..., "xb")``), so of two writers racing, one fails. Remote: object stores have
    no exclusive create, so this checks and then writes: two writers racing for the same name may both succeed, the
    later object replacing the earlier one.
    """
    path = epath.Path(path)
    if not is_remote(path):
        with open(os.fspath(path), "xb") as f:
            f.write(data)
        return
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.write_bytes(data)
