"""Couplings of data and noise for training: which noise sample each data point is paired with.

    independent   a source batch drawn independently of the data (I-CFM; Lipman et al. 2023)
    ot            minibatch optimal transport (Tong et al. 2023; Pooladian et al. 2023): the permutation π minimising
                  Σ_i ‖x_i − z_π(i)‖², solved exactly on the host (jax.pure_callback) by POT's network simplex
                  (default) or scipy's Hungarian algorithm, or (``solver="auction"``) with an ε-scaling auction on the
                  device (exact on integer-rounded costs)
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


def _host_assignment(solve_np):
    """Wrap a host solver ``(B, B) float64 ndarray -> perm (B,) int32`` as a ``jax.pure_callback`` (vmap: one call
    per matrix)."""

    def assign(cost: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32)
        return jax.pure_callback(lambda c: solve_np(np.asarray(c, np.float64)), out, cost,
                                 vmap_method="sequential")

    return assign


def scipy_permutation(c: np.ndarray) -> np.ndarray:
    return scipy.optimize.linear_sum_assignment(c)[1].astype(np.int32)


def emd_permutation(c: np.ndarray) -> np.ndarray:
    """POT's network simplex (``ot.emd``; Bonneel et al. 2011) on unit masses: its optimal basic solution is a
    vertex of the Birkhoff polytope, i.e. a permutation matrix. The iteration cap is lifted (POT's default 10⁵ stops
    short of optimality from B ≈ 1000 on) and any non-optimal or non-permutation answer raises."""
    import ot  # POT: imported on first use (it pulls in its backends)

    b = c.shape[0]
    ones = np.ones(b)
    plan, log = ot.emd(ones, ones, c, numItermax=max(10**7, 100 * b * b), log=True)
    if log.get("result_code") != 1 or log.get("warning"):
        raise RuntimeError(f"ot.emd did not reach the optimum: {log.get('warning')!r} (result code "
                           f"{log.get('result_code')})")
    perm = np.argmax(plan, axis=1).astype(np.int32)
    if not (np.allclose(plan[np.arange(b), perm], 1.0) and np.array_equal(np.sort(perm), np.arange(b))):
        raise RuntimeError("ot.emd returned a plan that is not a permutation")
    return perm


#: Exact assignment on the host: the permutation perm (B,) minimising Σ_i cost[i, perm[i]] of a (B, B) cost.
exact_assignment = _host_assignment(scipy_permutation)
emd_assignment = _host_assignment(emd_permutation)


#: Integer levels of the rounded costs (see ``integer_costs``): 2²⁸/(B + 1) keeps every auction quantity in int32.
def cost_levels(b: int) -> int:
    return min(2**24, 2**28 // (b + 1))


def integer_costs(cost: jax.Array) -> jax.Array:
    """``cost`` (B, B) affinely mapped onto the integers 0..L, L = ``cost_levels(B)``: round((c − min c)·L/span).

    Any permutation optimal for these integers costs at most B·span/L more than the float optimum (each entry moves
    by ≤ span/(2L), and two permutations are compared), e.g. span/2¹⁸ per pair at B = 1024."""
    levels = cost_levels(cost.shape[0])
    c = cost.astype(jnp.float32)
    low, span = jnp.min(c), jnp.max(c) - jnp.min(c)
    scale = jnp.where(span > 0, levels / jnp.where(span > 0, span, 1.0), 0.0)
    return jnp.clip(jnp.round((c - low) * scale), 0, levels).astype(jnp.int32)


_NEG = -(2**30)


def auction_assignment(cost_int: jax.Array, theta: int = 4, chunk: int = 8) -> jax.Array:
    """The permutation minimising Σ_i cost_int[i, perm[i]] for integer costs (int32, values in 0..2²⁸/(B + 1)),
    by Bertsekas' auction with ε-scaling, entirely in ``lax.while_loop`` (jit, vmap; no host).

    Benefits a_ij = (max C − C_ij)·(B + 1) are maximised. Each round, the unassigned persons i (all of them while
    more than ``chunk`` are free, else the first ``chunk``) bid for j* = argmax_j (a_ij − p_j), raising its price
    to p_j* + (v₁ − v₂) + ε (v₁, v₂ the best and second-best a_ij − p_j); each object goes to its highest bidder
    (lowest index on ties) and its previous owner becomes free. A phase ends when all are assigned; then every
    pair satisfies ε-complementary slackness, a_iπ(i) − p_π(i) ≥ max_j (a_ij − p_j) − ε, so the assignment is within
    B·ε of the optimum (Bertsekas 1988, "The auction algorithm: a distributed relaxation method"; Bertsekas &
    Eckstein 1988 for ε-scaling). ε starts at max a / θ, is divided by θ each phase (prices kept, shifted to
    min 0), and the last phase runs at ε = 1: B·1 < B + 1, and the benefits are multiples of B + 1, so the result is
    exactly optimal for the integer costs. int32 range, with max a ≤ 2²⁸: a price set by a bid exceeds the price of an
    object not yet bid on in the phase by at most max a + ε (ε-CS), so prices stay below 3·max a + 3ε₀ and every
    intermediate (v₁ − v₂ + p) below 7·2²⁸ < 2³¹."""
    b = cost_int.shape[0]
    if b == 1:
        return jnp.zeros((1,), jnp.int32)
    benefit = (jnp.max(cost_int) - cost_int) * (b + 1)
    k = min(chunk, b)
    ar = jnp.arange(b, dtype=jnp.int32)

    def bid_round(state, idx, valid, eps):
        price, p_obj, o_own = state
        rows = benefit[jnp.minimum(idx, b - 1)] - price[None, :]
        j1 = jnp.argmax(rows, 1).astype(jnp.int32)
        v1 = jnp.take_along_axis(rows, j1[:, None], 1)[:, 0]
        v2 = jnp.max(jnp.where(ar[None, :] == j1[:, None], _NEG, rows), 1)
        bid = jnp.where(valid, v1 - v2 + price[j1] + eps, _NEG)
        best = jnp.full((b,), _NEG, jnp.int32).at[j1].max(bid)
        top = valid & (bid == best[j1])
        winner = jnp.full((b,), b, jnp.int32).at[j1].min(jnp.where(top, idx, b))
        won = winner < b
        outbid = jnp.where(won & (o_own >= 0), o_own, b)        # (never −1: .at[] would wrap it to person B − 1)
        p_obj = p_obj.at[outbid].set(-1, mode="drop")
        p_obj = p_obj.at[jnp.where(won, winner, b)].set(ar, mode="drop")
        return jnp.where(won, best, price), p_obj, jnp.where(won, winner, o_own)

    def phase_body(carry):
        state, eps = carry
        free = state[1] < 0
        idx = jnp.nonzero(free, size=k, fill_value=b)[0].astype(jnp.int32)
        state = jax.lax.cond(jnp.sum(free) > k, lambda s: bid_round(s, ar, free, eps),
                             lambda s: bid_round(s, idx, idx < b, eps), state)
        return state, eps

    def scaling_body(carry):
        price, eps, _ = carry
        state = (price - jnp.min(price), jnp.full((b,), -1, jnp.int32), jnp.full((b,), -1, jnp.int32))
        state, _ = jax.lax.while_loop(lambda c: jnp.any(c[0][1] < 0), phase_body, (state, eps))
        return state[0], jnp.where(eps == 1, 0, jnp.maximum(eps // theta, 1)), state[1]

    eps0 = jnp.maximum(jnp.max(benefit) // theta, 1)
    init = (jnp.zeros((b,), jnp.int32), eps0, jnp.zeros((b,), jnp.int32))
    return jax.lax.while_loop(lambda c: c[1] > 0, scaling_body, init)[2]


#: The host solvers, on numpy: cost (B, B) float64 → permutation (B,) int32 (``MinibatchOT.host_permutation``).
HOST_PERMUTATIONS = {"emd": emd_permutation, "scipy": scipy_permutation}

#: The exact assignment solvers of ``MinibatchOT`` (``solver=``): cost (B, B) float → permutation (B,) int32.
ASSIGNMENT_SOLVERS = {
    "emd": emd_assignment,
    "scipy": exact_assignment,
    "auction": lambda cost: auction_assignment(integer_costs(cost)),
}


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
    """Exact minibatch OT: fresh noise, re-ordered by the optimal assignment to the data.

    ``solver`` (all exact: the permutation minimising the batch's squared cost):
      "emd"      (default) POT's network simplex on the host through ``jax.pure_callback`` — torchcfm's solver, and
                 2.6–3.8× faster than scipy's at B = 512–1024 on 2-D squared costs (benchmarks/README.md);
      "scipy"    scipy's ``linear_sum_assignment`` (shortest augmenting path) on the host, likewise;
      "auction"  ``auction_assignment`` on the device inside the compiled step (no host round trip, so an
                 accelerator is never left waiting for the host), optimal for the costs rounded to 2²⁸/(B + 1)
                 levels (``integer_costs``); on a CPU many times slower than the host solvers, whose sequential
                 bid rounds dominate.
    The host solvers inside the step make every step wait for the host; on a GPU/TPU prefer "auction" (not
    measured on one yet) or ``host_threads``.

    ``host_threads`` > 0 (host solvers only): the assignment leaves the compiled step. The training input
    (``flowgen.train.coupled_input.HostCoupledInput``) draws each batch's noise on the host and solves its assignment
    in that many threads, several batches ahead (POT and scipy release the GIL, so they run in parallel with each
    other and with the device), and the step reads the paired ``batch["noise"]``. The same exact pairs, solved per
    process on its share of the batch."""

    name: ClassVar[str] = "ot"
    solver: str = "emd"
    host_threads: int = 0

    def __post_init__(self):
        if self.solver not in ASSIGNMENT_SOLVERS:
            raise ValueError(f"ot: solver={self.solver!r} is not one of: {', '.join(ASSIGNMENT_SOLVERS)}")
        if isinstance(self.host_threads, bool) or not isinstance(self.host_threads, int) or self.host_threads < 0:
            raise ValueError(f"ot: host_threads={self.host_threads!r} must be an integer >= 0 (0: solve inside the "
                             "step)")
        if self.host_threads and self.solver not in HOST_PERMUTATIONS:
            raise ValueError(f"ot: host_threads={self.host_threads} needs a host solver: solver one of "
                             f"{', '.join(HOST_PERMUTATIONS)}, not {self.solver!r}")

    @property
    def pairs_on_host(self) -> bool:
        """True if the training input pairs the noise (``host_permutation``) and the step reads ``batch["noise"]``."""
        return self.host_threads > 0

    def host_permutation(self, x_data: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The optimal assignment (B,) of host arrays: ``noise[perm]`` pairs with ``x_data``."""
        a, b = x_data.reshape(len(x_data), -1).astype(np.float64), noise.reshape(len(noise), -1).astype(np.float64)
        cost = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
        return HOST_PERMUTATIONS[self.solver](cost)

    def __call__(self, key, x_data, batch, source=GAUSSIAN):
        if self.pairs_on_host:
            if "noise" not in batch:
                raise ValueError("coupling 'ot' with host_threads > 0 reads batch['noise'] paired by the training "
                                 "input (flowgen.train.coupled_input); this batch has none")
            return x_data, batch["noise"].astype(x_data.dtype)
        noise = source.sample(key, x_data.shape, x_data.dtype)
        perm = ASSIGNMENT_SOLVERS[self.solver](jax.lax.stop_gradient(squared_cost(x_data, noise)))
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
