"""Prediction targets and exact conversions between them, for any affine path.

Every target a network may output is linear in the pair (x_data, noise) that produced x_t:

    target      formula                              (a, b) in  target = a·x_data + b·noise
    velocity    u = α̇·x_data + σ̇·noise              (α̇, σ̇)        flow matching (Lipman et al. 2023)
    noise       ε                                     (0, 1)         DDPM ε-prediction (Ho et al. 2020)
    data        x̂                                    (1, 0)         x₀-prediction, EDM's denoiser D
    v           v = α·noise − σ·x_data                (−σ, α)        Salimans & Ho 2022
    score       ∇ log p_t(x_t) = −noise/σ             (0, −1/σ)      denoising score matching (Song et al. 2021)

Together with ``x_t = α·x_data + σ·noise`` a prediction of any one target determines the posterior means
(x̂, ε̂) = (E[x_data | x_t], E[noise | x_t]) by solving a 2×2 linear system, and from them every other target.
Each inverse below is that solve written out, so no division is made that the target does not need:

    from data:      ε̂ = (x_t − α·x̂)/σ                 (σ = 0: ε̂ → 0, the limit −σ·∇log p_t for smooth data)
    from noise:     x̂ = (x_t − σ·ε̂)/α                 (needs α > 0)
    from velocity:  x̂ = (σ̇·x_t − σ·u)/(α·σ̇ − σ·α̇),   ε̂ = (α·u − α̇·x_t)/(α·σ̇ − σ·α̇)
    from v:         x̂ = (α·x_t − σ·v)/(α² + σ²),       ε̂ = (σ·x_t + α·v)/(α² + σ²)
    from score:     ε̂ = −σ·s,  x̂ = (x_t + σ²·s)/α      (needs α > 0)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flowgen.paths.schedules import Coefficients, Path

TARGETS = ("velocity", "noise", "data", "v", "score")


class Denoised(NamedTuple):
    """Posterior means implied by a prediction: x̂ = E[x_data | x_t] and ε̂ = E[noise | x_t]."""

    data: jax.Array
    noise: jax.Array


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown prediction target {target!r}; valid targets: {', '.join(TARGETS)}")
    return target


def _safe_div(num, den):
    """num/den where den ≠ 0, else 0 (and no NaN in gradients)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _bcast(c: Coefficients, x: jax.Array) -> Coefficients:
    """Reshape per-sample coefficients of shape (batch,) or () to broadcast against x (batch, ...)."""
    def fix(v):
        v = jnp.asarray(v)
        return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))

    return Coefficients(*map(fix, c))


def to_denoised(target: str, prediction: jax.Array, x_t: jax.Array, c: Coefficients) -> Denoised:
    """(x̂, ε̂) from a prediction of ``target`` at x_t; ``c`` holds α, σ, α̇, σ̇ at t (broadcastable)."""
    a, s, da, ds = _bcast(c, x_t)
    p = prediction
    if target == "data":
        return Denoised(p, _safe_div(x_t - a * p, s))
    if target == "noise":
        return Denoised((x_t - s * p) / a, p)
    if target == "velocity":
        det = a * ds - s * da
        return Denoised((ds * x_t - s * p) / det, (a * p - da * x_t) / det)
    if target == "v":
        norm = a**2 + s**2
        return Denoised((a * x_t - s * p) / norm, (s * x_t + a * p) / norm)
    if target == "score":
        return Denoised((x_t + s**2 * p) / a, -s * p)
    raise ValueError(check_target(target))


def from_denoised(target: str, d: Denoised, x_t: jax.Array, c: Coefficients) -> jax.Array:
    """The prediction of ``target`` that the posterior means (x̂, ε̂) imply."""
    a, s, da, ds = _bcast(c, x_t)
    if target == "data":
        return d.data
    if target == "noise":
        return d.noise
    if target == "velocity":
        return da * d.data + ds * d.noise
    if target == "v":
        return a * d.noise - s * d.data
    if target == "score":
        return -d.noise / s
    raise ValueError(check_target(target))


def convert(prediction: jax.Array, source: str, dest: str, path: Path, x_t: jax.Array, t) -> jax.Array:
    """Convert a prediction of target ``source`` at (x_t, t) on ``path`` into target ``dest`` (exact).

    Shapes: x_t and prediction (batch, ...); t scalar or (batch,).
    """
    check_target(source)
    check_target(dest)
    c = path.coefficients(t)
    return from_denoised(dest, to_denoised(source, prediction, x_t, c), x_t, c)


def target_from_pair(target: str, path: Path, x_data: jax.Array, noise: jax.Array, t) -> jax.Array:
    """The regression target for a training pair: ``target`` evaluated at the true (x_data, noise)."""
    check_target(target)
    c = path.coefficients(t)
    x_t = path.sample(x_data, noise, t)
    return from_denoised(target, Denoised(x_data, noise), x_t, c)
