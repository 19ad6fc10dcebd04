"""Metrics on feature vectors beside the Fréchet distance: KID with its standard error, and precision/recall.

**KID** (Bińkowski et al. 2018): the squared MMD with the cubic polynomial kernel k(a, b) = (aᵀb/d + 1)³,

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ),

an *unbiased* estimate (its expectation does not depend on the sample size, unlike FID's), so a set of real data
scores 0 on average (single estimates may be negative). ``kid`` splits both sets into ``blocks`` disjoint blocks,
estimates MMD²_u on each, and returns the mean and its standard error (std over blocks / √blocks): the blocks are
independent, so that error is honest, unlike the std over overlapping subsets some libraries report.

**Precision and recall** (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around its points
with radius the distance to their k-th nearest neighbour in the same set (k = 3). Precision is the fraction of
generated points inside the real manifold (are samples realistic?), recall the fraction of real points inside the
generated one (is the data covered?): "sharp but narrow" scores high precision and low recall, "diverse but
blurry" the reverse. Both depend on the sample sizes; compare sets of equal size.

Features are (N, D) arrays in float64; distances are exact (no approximate nearest neighbours), O(N²) memory in
blocks of ``chunk`` rows.
"""

from __future__ import annotations

import math

import numpy as np


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """MMD²_u with the cubic polynomial kernel between rows of x (m, D) and y (n, D), m, n ≥ 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 rows per set; got {m} and {n}")
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, blocks: int = 10, seed: int = 0) -> tuple[float, float]:
    """(KID, its standard error) between feature sets x (m, D) and y (n, D): the mean of MMD²_u over ``blocks``
    disjoint random blocks of both sets, and std/√blocks. Each block needs ≥ 2 rows of each set."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, D) with one D; got {x.shape} and {y.shape}")
    if not (isinstance(blocks, int) and blocks >= 2) or min(len(x), len(y)) < 2 * blocks:
        raise ValueError(f"blocks={blocks!r}: need an integer >= 2 and >= 2 rows per block (sets of {len(x)} and "
                         f"{len(y)})")
    rng = np.random.default_rng(seed)
    xs = np.array_split(x[rng.permutation(len(x))], blocks)
    ys = np.array_split(y[rng.permutation(len(y))], blocks)
    values = np.array([mmd2_unbiased_poly(a, b) for a, b in zip(xs, ys, strict=True)])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(blocks))


def _kth_neighbour_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    radii = np.empty(len(x))
    sq = np.sum(x**2, 1)
    for start in range(0, len(x), chunk):
        d2 = np.maximum(sq[start:start + chunk, None] + sq[None, :] - 2.0 * x[start:start + chunk] @ x.T, 0.0)
        radii[start:start + chunk] = np.sqrt(np.partition(d2, k, axis=1)[:, k])   # index 0 is the point itself
    return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    sq_c = np.sum(centres**2, 1)
    for start in range(0, len(points), chunk):
        p = points[start:start + chunk]
        d2 = np.maximum(np.sum(p**2, 1)[:, None] + sq_c[None, :] - 2.0 * p @ centres.T, 0.0)
        inside[start:start + chunk] = np.any(d2 <= radii[None, :] ** 2, axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` (rows are feature vectors), Kynkäänniemi et al. 2019."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with one D; got {real.shape} and {fake.shape}")
    if not (isinstance(k, int) and 1 <= k < min(len(real), len(fake))):
        raise ValueError(f"k={k!r} must be an integer in [1, {min(len(real), len(fake)) - 1}]")
    precision = _inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk).mean()
    recall = _inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk).mean()
    return float(precision), float(recall)
