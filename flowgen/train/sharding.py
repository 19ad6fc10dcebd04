"""Device mesh and shardings: data parallelism over every device, optional FSDP for parameters (big_vision style).

The mesh has two axes, ``("data", "fsdp")``, of sizes (n_devices / fsdp, fsdp). The global batch is split over
*both* axes (every device sees a distinct slice). With fsdp = 1 parameters and optimiser state are replicated; with
fsdp > 1 each large array is split along its largest axis divisible by fsdp, and XLA inserts the all-gathers. Axes are
``AxisType.Auto`` (jax.make_mesh defaults to Explicit axes). The same code runs on 1 CPU, 8 forced CPU
devices, a GPU, a TPU slice or several hosts (``jax.devices()`` is then global).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the number of devices ({n})")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"data.batch_size={global_batch} is not divisible by the number of devices ({n}); "
                         f"use a multiple of {n}")


def _fsdp_spec(shape, fsdp: int, min_size: int) -> P:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int = 2**14):
    """A NamedSharding per leaf: FSDP-sharded large arrays when the mesh has fsdp > 1, otherwise replicated."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, _fsdp_spec(leaf.shape, fsdp, min_size)), abstract_state)
