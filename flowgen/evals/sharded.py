"""Per-image networks (feature extractors, classifiers) over every device of every process, independent of the layout.

    feats = features(fn, params, images, batch_size=64, micro_batch=8)     # (N, D) numpy, on every process

``images`` is a host array (N, ...) with the same contents on every process (each loads the set, or it was gathered
with :func:`to_host`). One step takes a global batch of G = k·m·n_dev rows, G ≥ ``batch_size`` rounded up:

1. the rows become one global jax.Array sharded along its batch axis over a 1-D mesh ``("data",)`` of all devices
   of all processes (``jax.make_array_from_callback``: each process materialises only its own devices' rows);
2. on each device (``jax.shard_map``) its (k·m, ...) rows are split into k micro-batches of exactly m =
   ``micro_batch`` rows and ``fn`` runs on each in turn (``lax.map``);
3. the (G, D) outputs are gathered to every process (``multihost_utils.process_allgather``) and the rows past N —
   the zero padding of a last partial batch — are dropped.

Why the fixed micro-batch: ``fn`` always runs on an (m, ...) block, whatever the device count, ``batch_size`` or
padding, so every device runs the same compiled program and the output of a row depends only on that row (``fn`` must
not mix rows, as inference networks do not). XLA's kernels may otherwise depend on the batch shape: on CPU the FID
Inception's features of a batch of 1 differ from those of larger batches by up to 1e-6 relative (measured).
Hence an image's features, and statistics computed from them in a fixed order, are the same bits on 1 device or 8, in
one process or several, with any ``batch_size``; changing ``micro_batch`` may change them by float32 round-off.
"""

from __future__ import annotations

import functools
import numbers

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh, axis ``"data"``, over all devices of all processes (or the given ones)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (AXIS,))


def to_host(x) -> np.ndarray:
    """A jax.Array (sharded over any devices, other processes' included) as a numpy array, on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` (host or local arrays, the same on every process) replicated on every mesh device."""
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        value = to_host(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree)


def shard_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host rows (G, ...), the same on every process, as a global array split along axis 0 over ``mesh``."""
    return jax.make_array_from_callback(rows.shape, NamedSharding(mesh, P(AXIS)), lambda index: rows[index])


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}; choose an integer >= 1")
    return int(value)


def global_batch(n: int, batch_size: int, micro_batch: int, mesh: Mesh) -> int:
    """Rows per step: min(batch_size, n) rounded up to a multiple of micro_batch × (devices of ``mesh``)."""
    unit = _check_count("micro_batch", micro_batch) * mesh.devices.size
    rows = min(_check_count("batch_size", batch_size), max(n, 1))
    return -(-rows // unit) * unit


@functools.partial(jax.jit, static_argnames=("fn", "micro_batch", "mesh"))
def _apply(params, rows, *, fn, micro_batch, mesh):
    def per_device(params, local):
        blocks = local.reshape(-1, micro_batch, *local.shape[1:])
        out = jax.lax.map(lambda block: fn(params, block), blocks)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)

    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))(params, rows)


def batches(fn, params, images, *, batch_size: int, micro_batch: int, mesh: Mesh | None = None):
    """Yield ``fn``'s outputs (a pytree of (n_b, ...) numpy arrays, every process the same) for consecutive batches.

    ``fn(params, block)``: (m, ...) rows → a pytree of (m, ...) arrays, jittable, rows independent; it must be one
    object across calls (a module-level function), or each call compiles anew. Memory is bounded by ``batch_size``.
    """
    mesh = data_mesh() if mesh is None else mesh
    n = len(images)
    step = global_batch(n, batch_size, micro_batch, mesh)
    params = replicate(params, mesh)
    for start in range(0, n, step):
        chunk = np.asarray(images[start:start + step])
        real = len(chunk)
        if real < step:
            chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), chunk.dtype)])
        out = _apply(params, shard_rows(chunk, mesh), fn=fn, micro_batch=micro_batch, mesh=mesh)
        yield jax.tree.map(lambda a, real=real: to_host(a)[:real], out)


def features(fn, params, images, *, batch_size: int, micro_batch: int, mesh: Mesh | None = None):
    """All of ``fn``'s outputs over ``images`` (N, ...), concatenated: a pytree of (N, ...) numpy arrays."""
    parts = list(batches(fn, params, images, batch_size=batch_size, micro_batch=micro_batch, mesh=mesh))
    if not parts:
        raise ValueError("no images: need N >= 1")
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)
