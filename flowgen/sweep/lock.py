"""One writer per workdir: ``WORKDIR/.lock`` holds ``pid host`` of the process writing there.

``acquire`` creates the file exclusively (``O_CREAT | O_EXCL``). If it exists, its holder is checked: a holder on
this host whose pid is gone (killed, SIGKILL included) left a stale lock, which is taken over (the file is replaced
and read back, so of two processes taking it over at once only one wins); a live holder, or one on another host
(whose pid cannot be checked from here), is refused with a ``LockedError`` naming the file, pid and host — delete
the file by hand once that process is known to be gone.

In a multi-process JAX job (a TPU pod slice running the sweep on every worker with ``--distributed``) the processes
write one run together: only process 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import os
import socket

NAME = ".lock"


class LockedError(RuntimeError):
    """Another live process (or one on another host) holds the workdir."""


def process_alive(pid: int) -> bool:
    """True if a process of this id runs on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: str) -> tuple[int, str] | None:
    try:
        with open(path) as f:
            pid, host = f.read().split()
        return int(pid), host
    except (FileNotFoundError, ValueError):
        return None


def acquire(directory: str, wait: float = 0.0) -> str:
    """Take ``directory/.lock`` for this process (re-entrant for the holder); returns its path. With ``wait`` > 0,
    a live holder is waited for (polling every second) up to ``wait`` seconds before ``LockedError``."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            return _acquire(directory)
        except LockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def _acquire(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, NAME)
    me = (os.getpid(), socket.gethostname())
    text = f"{me[0]} {me[1]}\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder == me:
                return path
            if holder is not None and (holder[1] != me[1] or process_alive(holder[0])):
                where = "this host" if holder[1] == me[1] else f"host {holder[1]}"
                raise LockedError(f"{directory} is being written by pid {holder[0]} on {where} (lock file {path}); "
                                  "if that process is gone, delete the lock file") from None
            tmp = f"{path}.{me[0]}.tmp"                     # stale (dead local pid) or unreadable: take it over
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            if _holder(path) == me:
                return path
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    raise LockedError(f"could not take the lock {path}: another process took it over at the same time")


def release(directory: str) -> None:
    path = os.path.join(directory, NAME)
    if _holder(path) == (os.getpid(), socket.gethostname()):
        os.unlink(path)


@contextlib.contextmanager
def held(directory: str, wait: float = 0.0):
    """``with held(workdir):`` — the lock for the block; released on exit (a killed process leaves it stale).
    ``wait``: seconds to wait for a live holder (``acquire``)."""
    import jax

    path = os.path.join(directory, NAME)
    if jax.process_index() != 0:                # one multi-process job is one writer: process 0 holds the lock
        yield path
        return
    outer = _holder(path) == (os.getpid(), socket.gethostname())     # already ours (re-entered): the outer releases
    acquire(directory, wait)
    try:
        yield path
    finally:
        if not outer:
            release(directory)
