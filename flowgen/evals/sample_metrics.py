"""Cheap sample-quality metrics for low-dimensional data (used by the analytic sweep and by training's samples)."""

from __future__ import annotations

import math

import numpy as np


def random_directions(num: int, dim: int, seed: int = 0) -> np.ndarray:
    """``num`` unit vectors in R^dim (rows), drawn uniformly on the sphere."""
    d = np.random.default_rng(seed).normal(size=(num, dim))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


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
