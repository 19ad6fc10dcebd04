"""2-D toy data sets, sampled statelessly from ``(seed, step)``.

Batch ``k`` of a run depends only on ``(seed, k)``: its key is ``fold_in(key(seed), k)``. A resumed run therefore
sees exactly the batches an uninterrupted run would have seen, and the pipeline has no state to checkpoint.

    x_data = toy_batch("moons", seed=0, step=17, batch_size=256)              # (256, 2) float32 jax.Array
    sample = toy_sampler("checkerboard", batch_size=256)                       # jitted (seed, step) -> batch
    x_data, labels = toy_batch("8gaussians", 0, 17, 256, return_labels=True)  # mixtures also give components

Everything uses ``jax.random`` only, so ``toy_batch`` is jittable with ``name``, ``batch_size`` and the keyword
arguments static (``toy_sampler`` does exactly that). The shapes follow FFJORD's ``toy_data.py`` (Grathwohl et al.,
2019), used by most flow-matching papers for their 2-D figures:

- ``moons``: scikit-learn's two interleaving half circles, ``noise`` 0.1, scaled by 2 and shifted by (−1, −0.2).
- ``8gaussians``: FFJORD's eight Gaussians — ``GaussianMixture.circle(8, radius=4/√2, std=0.5/√2)``, so the exact
  posterior of ``flowgen.analytic`` is its ground truth.
- ``checkerboard``: uniform on the black squares of a 4×4 board on [−4, 4]².
- ``spirals``: two interleaved spirals (FFJORD's ``2spirals``).
- ``scurve``: scikit-learn's S curve seen from the side (its x and z coordinates), ``noise`` 0.05, scaled by 1.5, as
  in Tong et al. 2023's 2-D benchmark.
- ``circle``: ``GaussianMixture.circle(**kwargs)`` (defaults: 8 components, radius 4, std 0.5).
- ``gaussian_mixture``: any ``GaussianMixture`` in 2-D, given as ``mixture=`` or as ``means``, ``std``, ``weights``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowgen.analytic import GaussianMixture


def _moons(key, n, dtype, noise: float = 0.1):
    k_half, k_angle, k_noise = jax.random.split(key, 3)
    inner = jax.random.bernoulli(k_half, 0.5, (n,))
    angle = jax.random.uniform(k_angle, (n,), dtype, 0.0, math.pi)
    outer_xy = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    inner_xy = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=-1)
    x = jnp.where(inner[:, None], inner_xy, outer_xy) + noise * jax.random.normal(k_noise, (n, 2), dtype)
    return 2.0 * x + jnp.asarray([-1.0, -0.2], dtype)


def _checkerboard(key, n, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), dtype, -2.0, 2.0)
    x2 = jax.random.uniform(k2, (n,), dtype) - 2.0 * jax.random.bernoulli(k3, 0.5, (n,)).astype(dtype)
    x2 = x2 + jnp.floor(x1) % 2
    return 2.0 * jnp.stack([x1, x2], axis=-1)


def _spirals(key, n, dtype, noise: float = 0.1):
    k_r, k_j1, k_j2, k_sign, k_noise = jax.random.split(key, 5)
    r = jnp.sqrt(jax.random.uniform(k_r, (n,), dtype)) * (540.0 * 2.0 * math.pi / 360.0)
    x = -jnp.cos(r) * r + 0.5 * jax.random.uniform(k_j1, (n,), dtype)
    y = jnp.sin(r) * r + 0.5 * jax.random.uniform(k_j2, (n,), dtype)
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n,)), 1.0, -1.0).astype(dtype)
    return sign[:, None] * jnp.stack([x, y], axis=-1) / 3.0 + noise * jax.random.normal(k_noise, (n, 2), dtype)


def _scurve(key, n, dtype, noise: float = 0.05):
    """scikit-learn's ``make_s_curve``: t = 3π(u − 1/2), (x, z) = (sin t, sign(t)·(cos t − 1)) plus N(0, noise²)."""
    k_t, k_noise = jax.random.split(key)
    t = 3.0 * math.pi * (jax.random.uniform(k_t, (n,), dtype) - 0.5)
    xz = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - 1.0)], axis=-1)
    return 1.5 * (xz + noise * jax.random.normal(k_noise, (n, 2), dtype))


def eight_gaussians() -> GaussianMixture:
    """FFJORD's "8gaussians": centres 4·(unit vectors at multiples of 45°), std 0.5, all divided by √2."""
    return GaussianMixture.circle(8, radius=4.0 / math.sqrt(2.0), std=0.5 / math.sqrt(2.0))


def _as_mixture(name: str, kwargs: dict) -> GaussianMixture:
    if name == "8gaussians":
        if kwargs:
            raise ValueError(f"'8gaussians' takes no keyword arguments; got {sorted(kwargs)} (use 'circle')")
        return eight_gaussians()
    if name == "circle":
        return GaussianMixture.circle(**kwargs)
    if "mixture" in kwargs:
        if set(kwargs) != {"mixture"}:
            raise ValueError("give either mixture= or means/std/weights, not both")
        mixture = kwargs["mixture"]
    elif "means" in kwargs and "std" in kwargs:
        mixture = GaussianMixture(**kwargs)
    else:
        raise ValueError("'gaussian_mixture' needs mixture=GaussianMixture(...) or means= and std= (and weights=)")
    if mixture.dim != 2:
        raise ValueError(f"toy data are 2-D; this mixture has dimension {mixture.dim}")
    return mixture


def _mixture_sampler(name: str) -> Callable:
    def sample(key, n, dtype, return_labels=False, **kwargs):
        return _as_mixture(name, kwargs).sample(key, n, dtype, return_labels=return_labels)

    return sample


#: name -> sampler ``(key, batch_size, dtype, **kwargs) -> (batch_size, 2)``.
TOY_DATASETS: dict[str, Callable] = {
    "moons": _moons,
    "8gaussians": _mixture_sampler("8gaussians"),
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "scurve": _scurve,
    "circle": _mixture_sampler("circle"),
    "gaussian_mixture": _mixture_sampler("gaussian_mixture"),
}

#: The toy sets that are Gaussian mixtures: they have component labels and an exact ``flowgen.analytic`` model.
MIXTURE_DATASETS = ("8gaussians", "circle", "gaussian_mixture")


def toy_mixture(name: str, **kwargs) -> GaussianMixture:
    """The ``GaussianMixture`` behind a mixture toy set (for exact posteriors, log-likelihoods and moments)."""
    if name not in MIXTURE_DATASETS:
        raise ValueError(f"{name!r} is not a Gaussian-mixture toy set; those are {list(MIXTURE_DATASETS)}")
    return _as_mixture(name, kwargs)


def _check(name: str, batch_size) -> None:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; valid names: {sorted(TOY_DATASETS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")


def toy_batch(name: str, seed, step, batch_size: int, *, dtype=jnp.float32, return_labels: bool = False, **kwargs):
    """Batch number ``step`` of toy set ``name`` for run ``seed``: an array of shape (batch_size, 2).

    ``seed`` and ``step`` may be Python ints or traced integer scalars; ``name``, ``batch_size``, ``dtype``,
    ``return_labels`` and ``kwargs`` (the set's parameters, e.g. ``noise=0.05`` for moons, ``radius=`` for circle)
    must be static under ``jit``. With ``return_labels=True`` (mixtures only) also returns the component labels (B,).
    """
    _check(name, batch_size)
    key = jax.random.fold_in(jax.random.key(seed), step)
    if name in MIXTURE_DATASETS:
        return TOY_DATASETS[name](key, batch_size, dtype, return_labels=return_labels, **kwargs)
    if return_labels:
        raise ValueError(f"return_labels needs a Gaussian-mixture toy set {list(MIXTURE_DATASETS)}; got {name!r}")
    return TOY_DATASETS[name](key, batch_size, dtype, **kwargs)


def toy_sampler(name: str, batch_size: int, *, dtype=jnp.float32, return_labels: bool = False, **kwargs):
    """A jitted ``(seed, step) -> batch`` for one toy set; compiled once, whatever the seed and step."""
    _check(name, batch_size)
    fn = functools.partial(toy_batch, name, batch_size=batch_size, dtype=dtype, return_labels=return_labels, **kwargs)
    return jax.jit(lambda seed, step: fn(seed, step))
