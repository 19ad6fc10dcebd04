"""Couplings of data and noise for training: which noise sample each data point is paired with.

    independent   a source batch drawn independently of the data (I-CFM; Lipman et al. 2023)
    ot            minibatch optimal transport (Tong et al. 2023; Pooladian et al. 2023): the permutation π minimising
                  Σ_i ‖x_i − z_π(i)‖², solved exactly with scipy's Hungarian algorithm on the host (jax.pure_callback)
    sinkhorn      entropic minibatch OT with ott-jax's Sinkhorn; pairs (i, j) are drawn from the plan, as in torchcfm
    given         pairs supplied by the batch (``batch["noise"]``), e.g. reflow pairs (Liu et al. 2023); the data set
                  must carry them (``data.name = "pairs"``, see ``flowgen.data.pairs``)

Each coupling is ``couple(key, x_data, batch, source) -> (x_data, noise)`` with shapes (B, ...); ``source`` is the
source distribution (``flowgen.sources``, N(0, I) by default) the unpaired couplings draw x₀ from. It runs under jit.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from flowgen.sources import GAUSSIAN


def _flat(x):
    return jnp.reshape(x, (x.shape[0], -1))


def squared_cost(x_data: jax.Array, noise: jax.Array) -> jax.Array:
    """Matrix C_ij = ‖x_i − z_j‖² (B, B)."""
    a, b = _flat(x_data), _flat(noise)
    return jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T


def exact_assignment(cost: jax.Array) -> jax.Array:
    """The permutation perm (B,) minimising Σ_i cost[i, perm[i]] (Hungarian algorithm, scipy, on the host)."""

    def solve(c):
        return scipy.optimize.linear_sum_assignment(np.asarray(c, np.float64))[1].astype(np.int32)

    out = jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32)
    return jax.pure_callback(solve, out, cost)


@dataclasses.dataclass(frozen=True)
class Coupling:
    name: ClassVar[str] = "coupling"

    #: True if the batch itself must carry the pairs (``batch["noise"]``).
    needs_pairs: ClassVar[bool] = False

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Independent(Coupling):
    name: ClassVar[str] = "independent"

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        return x_data, source.sample(key, x_data.shape, x_data.dtype)


@dataclasses.dataclass(frozen=True)
class MinibatchOT(Coupling):
    """Exact minibatch OT: fresh noise, re-ordered by the optimal assignment to the data."""

    name: ClassVar[str] = "ot"

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        noise = source.sample(key, x_data.shape, x_data.dtype)
        perm = exact_assignment(jax.lax.stop_gradient(squared_cost(x_data, noise)))
        return x_data, noise[perm]


@dataclasses.dataclass(frozen=True)
class SinkhornOT(Coupling):
    """Entropic OT (ott-jax Sinkhorn, ``epsilon`` relative to the mean cost); B pairs drawn from the plan."""

    name: ClassVar[str] = "sinkhorn"
    epsilon: float = 0.05

    def __post_init__(self):
        if not self.epsilon > 0:
            raise ValueError(f"sinkhorn: epsilon must be > 0; got {self.epsilon!r}")

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        k_noise, k_pairs = jax.random.split(key)
        noise = source.sample(k_noise, x_data.shape, x_data.dtype)
        geom = pointcloud.PointCloud(_flat(x_data), _flat(noise), epsilon=self.epsilon, relative_epsilon="mean")
        plan = sinkhorn.Sinkhorn()(linear_problem.LinearProblem(geom)).matrix
        b = x_data.shape[0]
        flat = jnp.log(jnp.maximum(jax.lax.stop_gradient(plan).ravel(), 1e-30))
        idx = jax.random.categorical(k_pairs, flat, shape=(b,))
        return x_data[idx // b], noise[idx % b]


@dataclasses.dataclass(frozen=True)
class Given(Coupling):
    """Pairs from the batch: ``batch["noise"]`` must have the shape of the data (reflow)."""

    name: ClassVar[str] = "given"
    needs_pairs: ClassVar[bool] = True

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        if "noise" not in batch:
            raise ValueError("coupling 'given' needs batch['noise'] (the paired noise, e.g. from reflow)")
        noise = batch["noise"]
        if noise.shape != x_data.shape:
            raise ValueError(f"batch['noise'] has shape {noise.shape}; the data has shape {x_data.shape}")
        return x_data, noise.astype(x_data.dtype)


COUPLINGS: dict[str, type[Coupling]] = {c.name: c for c in (Independent, MinibatchOT, SinkhornOT, Given)}


def get_coupling(name: str | Coupling, **kwargs) -> Coupling:
    if isinstance(name, Coupling):
        return name
    from flowgen import options

    return options.build(COUPLINGS, name, "coupling", kwargs)
