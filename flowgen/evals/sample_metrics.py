"""Sample-quality metrics for low-dimensional data, each with its noise floor at a given sample count.

Distances between point clouds x (n, d) and y (m, d) (float64 numpy; a cloud with a non-finite value scores NaN):

- ``wasserstein2``: exact empirical 2-Wasserstein distance between equal-size sets, the optimal assignment
  (``flowgen.couplings.emd_permutation``, POT's network simplex) on squared Euclidean costs:
  W2 = sqrt(min_π (1/n)·Σᵢ ||xᵢ − y_π(i)||²).
- ``sliced_w2``: sqrt of the mean over unit directions θ of W2²(θ·x, θ·y) (Rabin et al. 2011).
- ``mmd2_rbf``: the unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel
  k(a, b) = exp(−||a − b||²/(2h²)) (Gretton et al. 2012, eq. 3; it can be negative; the biased V-statistic on
  request); bandwidth h = the median of the pooled pairwise distances (the median heuristic) unless given.
- ``energy_distance``: 2·E||X − Y|| − E||X − X'|| − E||Y − Y'|| (Székely and Rizzo 2013), with U-statistics for
  the within-set terms (unbiased) or V-statistics (``unbiased=False``: then in 1-D exactly 2∫(F_x − F_y)²).
- ``nll`` / ``nll_gap``: mean negative log-likelihood under an exact density (e.g.
  ``flowgen.analytic.GaussianMixture.log_prob``), and its excess over a sample of the truth.

Trajectories (``times`` (K + 1,), ``positions`` (K + 1, n, d), optional ``velocities`` at the same times):

- ``straightness`` (Liu et al. 2023, "Flow straight and fast", eq. 5): S = E ∫ ||(x_end − x_start)/T − v(t)||² dt/T
  over the interval of length T; 0 iff every trajectory moves at constant velocity.
- ``path_energy`` E ∫ ||v||² dt, and ``normalized_path_energy`` (Tong et al. 2023, "Improving and generalizing
  flow-based generative models with minibatch optimal transport", §5): NPE = |PE − W2²(p_start, p_end)| / W2².

``noise_floor(metric, reference_sampler, n)`` is what a perfect model scores: the metric between two independent
size-n samples of the reference, averaged over repeats. Report it beside any value measured at that n.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.spatial.distance

from flowgen.couplings import emd_permutation

_BLOCK = 1024  # rows per block of pairwise computations: memory O(block·m), not O(n·m)


def random_directions(num: int, dim: int, seed: int = 0) -> np.ndarray:
    """``num`` unit vectors in R^dim (rows), drawn uniformly on the sphere."""
    d = np.random.default_rng(seed).normal(size=(num, dim))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _clouds(x, y, name: str, equal: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Validated float64 (n, d), (m, d) clouds; None if either has a non-finite value."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{name} needs clouds of shape (n, d) and (m, d); got {x.shape} and {y.shape}")
    if equal and x.shape != y.shape:
        raise ValueError(f"{name} needs clouds of equal shape; got {x.shape} and {y.shape}")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"{name} needs at least 2 points per cloud; got {len(x)} and {len(y)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    return x, y


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||aᵢ − bⱼ||² (len(a), len(b)) from the differences (exact 0 for equal points, unlike |a|² + |b|² − 2a·b)."""
    return scipy.spatial.distance.cdist(a, b, "sqeuclidean")


def _pair_sum(a: np.ndarray, b: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], same: bool) -> float:
    """Σ_{i,j} fn(||aᵢ − bⱼ||²), over i ≠ j if ``same`` (a is b), computed in row blocks."""
    total = 0.0
    for start in range(0, len(a), _BLOCK):
        block = fn(_sq_dists(a[start:start + _BLOCK], b))
        if same:
            rows = np.arange(block.shape[0])
            block[rows, rows + start] = 0.0
        total += float(block.sum())
    return total


# --- distances between clouds ----------------------------------------------------------------------------------


def sliced_w2(x: np.ndarray, y: np.ndarray, directions: np.ndarray) -> float:
    """Sliced Wasserstein-2 distance sqrt(mean over directions θ of W2²(θ·x, θ·y)) (Rabin et al. 2011).

    x, y: (n, d) point clouds of equal size; directions: (m, d) unit vectors. NaN if either cloud is not finite.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs clouds of equal shape; got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    px = np.sort(x @ directions.T, axis=0)
    py = np.sort(y @ directions.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def wasserstein2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W2 between the empirical measures of equal-size clouds x, y (n, d): sqrt(min over permutations π of
    (1/n)·Σᵢ ||xᵢ − y_π(i)||²), solved exactly by POT's network simplex (``flowgen.couplings.emd_permutation``; ~4×
    faster than scipy's ``linear_sum_assignment`` on 2-D squared costs at n = 1024, benchmarks/README.md)."""
    clouds = _clouds(x, y, "wasserstein2", equal=True)
    if clouds is None:
        return math.nan
    cost = _sq_dists(*clouds)
    perm = emd_permutation(np.asarray(cost, np.float64))
    return float(np.sqrt(cost[np.arange(len(perm)), perm].mean()))


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """Median of the pairwise distances of the pooled clouds (i ≠ j; at most 2000 points, the first ones used)."""
    z = np.concatenate([x, y])[:2000]
    d = np.sqrt(_sq_dists(z, z)[np.triu_indices(len(z), k=1)])
    return float(np.median(d))


def mmd2_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """MMD² with the kernel k(a, b) = exp(−||a − b||²/(2h²)) (Gretton et al. 2012, eq. 3, unbiased):

        (1/(n(n−1)))·Σ_{i≠j} k(xᵢ, xⱼ) + (1/(m(m−1)))·Σ_{i≠j} k(yᵢ, yⱼ) − (2/(nm))·Σ_{i,j} k(xᵢ, yⱼ),

    whose expectation is 0 when x and y come from one distribution (it can be negative); ``unbiased=False`` sums
    the within-set terms over all pairs (eq. 5, the V-statistic: ≥ 0, and 0 for identical sets).
    h = ``median_bandwidth(x, y)`` if None.
    """
    clouds = _clouds(x, y, "mmd2_rbf")
    if clouds is None:
        return math.nan
    x, y = clouds
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0; got {h}")
    kernel = lambda sq: np.exp(-sq / (2.0 * h * h))
    n, m = len(x), len(y)
    kxx = _pair_sum(x, x, kernel, same=True) + (0.0 if unbiased else n)   # k(x, x) = 1 on the diagonal
    kyy = _pair_sum(y, y, kernel, same=True) + (0.0 if unbiased else m)
    kxy = _pair_sum(x, y, kernel, same=False) / (n * m)
    if unbiased:
        return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy
    return kxx / n**2 + kyy / m**2 - 2.0 * kxy


def energy_distance(x: np.ndarray, y: np.ndarray, unbiased: bool = True) -> float:
    """Squared energy distance 2·E||X − Y|| − E||X − X'|| − E||Y − Y'|| (Székely and Rizzo 2013).

    ``unbiased``: within-set means over i ≠ j (U-statistics; expectation 0 for one distribution); else over all
    pairs (V-statistic, ≥ 0, equal in 1-D to 2∫(F_x − F_y)² of the empirical CDFs).
    """
    clouds = _clouds(x, y, "energy_distance")
    if clouds is None:
        return math.nan
    x, y = clouds
    n, m = len(x), len(y)
    dist = np.sqrt
    exy = _pair_sum(x, y, dist, same=False) / (n * m)
    exx = _pair_sum(x, x, dist, same=True) / (n * (n - 1) if unbiased else n * n)
    eyy = _pair_sum(y, y, dist, same=True) / (m * (m - 1) if unbiased else m * m)
    return 2.0 * exy - exx - eyy


def nll(x: np.ndarray, log_prob: Callable) -> float:
    """Mean negative log-likelihood −(1/n)·Σ log p(xᵢ) of samples under an exact density ``log_prob`` (x → (n,))."""
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        return math.nan
    return float(-np.mean(np.asarray(log_prob(x), np.float64)))


def nll_gap(x: np.ndarray, reference: np.ndarray, log_prob: Callable) -> float:
    """NLL(x) − NLL(reference): the excess cross-entropy of samples over a sample of the truth (0 in expectation
    when x is a sample of the truth; the entropy cancels)."""
    return nll(x, log_prob) - nll(reference, log_prob)


# --- trajectories ----------------------------------------------------------------------------------------------


def _trajectories(times, positions, velocities):
    times = np.asarray(times, np.float64)
    positions = np.asarray(positions, np.float64)
    if times.ndim != 1 or len(times) < 2 or not np.all(np.diff(times) > 0):
        raise ValueError(f"times must be a strictly increasing (K + 1,) array with K >= 1; got {times!r}")
    if positions.ndim != 3 or positions.shape[0] != len(times):
        raise ValueError(f"positions must have shape ({len(times)}, n, d); got {positions.shape}")
    if velocities is not None:
        velocities = np.asarray(velocities, np.float64)
        if velocities.shape != positions.shape:
            raise ValueError(f"velocities must have the shape of positions {positions.shape}; got {velocities.shape}")
    return times, positions, velocities


def _time_integral(times, values, velocities_given: bool) -> np.ndarray:
    """∫ f dt per sample: the trapezoid rule over grid values (K + 1, n), or, for segment values (K, n) of a
    polyline (velocity constant on each segment), Σ_k f_k·Δt_k (exact)."""
    dt = np.diff(times)
    if velocities_given:
        return np.sum(0.5 * (values[1:] + values[:-1]) * dt[:, None], axis=0)
    return np.sum(values * dt[:, None], axis=0)


def _segment_or_grid_velocities(times, positions, velocities):
    if velocities is not None:
        return velocities
    return np.diff(positions, axis=0) / np.diff(times)[:, None, None]  # (K, n, d), exact for the polyline


def straightness(times, positions, velocities=None, per_sample: bool = False):
    """Liu et al. 2023's straightness S = (1/T)·∫ ||(x_end − x_start)/T − v(t)||² dt, mean over trajectories.

    times (K + 1,), positions (K + 1, n, d). With ``velocities`` (K + 1, n, d) (the model's v at the grid) the
    integral is the trapezoid rule; without, the trajectory is the polyline through the positions and the integral
    is exact for it. T = times[-1] − times[0]; on [0, 1] this is exactly Liu et al.'s S. 0 for straight,
    constant-speed trajectories.
    """
    times, positions, velocities = _trajectories(times, positions, velocities)
    span = times[-1] - times[0]
    chord = (positions[-1] - positions[0]) / span
    v = _segment_or_grid_velocities(times, positions, velocities)
    values = np.sum((v - chord[None]) ** 2, axis=-1)
    per = _time_integral(times, values, velocities is not None) / span
    return per if per_sample else float(per.mean())


def path_energy(times, positions, velocities=None, per_sample: bool = False):
    """E ∫ ||v(t)||² dt (the kinetic energy of the flow; trapezoid rule with velocities, exact for the polyline
    without). For any path it is ≥ E||x_end − x_start||²/T, with equality iff it is straight at constant speed."""
    times, positions, velocities = _trajectories(times, positions, velocities)
    v = _segment_or_grid_velocities(times, positions, velocities)
    per = _time_integral(times, np.sum(v**2, axis=-1), velocities is not None)
    return per if per_sample else float(per.mean())


def normalized_path_energy(times, positions, velocities=None, w2_squared: float | None = None) -> float:
    """Tong et al. 2023's NPE = |PE − W2²(p_start, p_end)| / W2², PE = ``path_energy`` on [0, 1] (times rescaled
    to unit length, so it is a property of the trajectories' shapes).

    W2² defaults to the exact empirical W2² between the trajectories' start and end points (``wasserstein2``),
    so NPE = 0 iff the trajectories are straight, at constant speed, and pair start and end points optimally.
    Pass ``w2_squared`` to use an independent estimate of W2²(p₀, p₁) instead.
    """
    times, positions, velocities = _trajectories(times, positions, velocities)
    span = times[-1] - times[0]
    unit_times = (times - times[0]) / span
    unit_velocities = None if velocities is None else velocities * span
    pe = path_energy(unit_times, positions, unit_velocities)
    if w2_squared is None:
        w2_squared = wasserstein2(positions[0], positions[-1]) ** 2
    if not w2_squared > 0:
        raise ValueError(f"w2_squared must be > 0; got {w2_squared}")
    return abs(pe - w2_squared) / w2_squared


# --- noise floors ----------------------------------------------------------------------------------------------


class NoiseFloor(NamedTuple):
    """Mean and standard deviation over ``repeats`` of a metric between two independent size-n reference samples."""

    mean: float
    std: float
    n: int
    repeats: int


def noise_floor(metric: Callable[[np.ndarray, np.ndarray], float], reference_sampler: Callable, n: int,
                repeats: int = 10, seed: int = 0) -> NoiseFloor:
    """What a perfect model scores at sample count n: ``metric(a, b)`` for independent a, b = ``reference_sampler(
    rng, n)`` (rng a ``numpy.random.Generator``), over ``repeats`` pairs. A metric measured on n samples is only
    meaningful beside this floor; for unbiased signed estimates (``mmd2_rbf``, ``nll_gap``) the mean is ≈ 0 and
    ``std`` is the floor."""
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2; got {n!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    rng = np.random.default_rng(seed)
    values = np.array([metric(reference_sampler(rng, n), reference_sampler(rng, n)) for _ in range(repeats)])
    return NoiseFloor(float(values.mean()), float(values.std(ddof=1)) if repeats > 1 else math.nan, n, repeats)
