"""Adapters to the conventions of other codebases (docs/conventions.md), each an exact change of variables.

- score_sde / DPM-Solver: diffusion time ``s = 1 − t`` (s = 0 data, s = 1 noise).
- EDM (Karras et al. 2022): noise level ``σ_EDM = σ/α`` and scaled state ``x_EDM = x_t/α``, so that
  ``x_EDM = x_data + σ_EDM·noise``; the probability-flow ODE is ``dx_EDM/dσ_EDM = (x_EDM − D(x_EDM, σ_EDM))/σ_EDM``.
- diffusers' FlowMatch schedulers: ``σ_diffusers = 1 − t`` on the linear path, ``x = (1 − σ)·x_data + σ·noise``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowgen.paths.schedules import Path


def _per_sample(v, x):
    v = jnp.asarray(v)
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def to_score_sde_time(t) -> jax.Array:
    """score_sde's diffusion time s = 1 − t."""
    return 1.0 - jnp.asarray(t)


def from_score_sde_time(s) -> jax.Array:
    return 1.0 - jnp.asarray(s)


def to_edm(path: Path, x_t: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """(x_EDM, σ_EDM) = (x_t/α(t), σ(t)/α(t)); needs α(t) > 0."""
    a = path.alpha(t)
    return x_t / _per_sample(a, x_t), path.sigma(t) / a


def from_edm(path: Path, x_edm: jax.Array, sigma_edm) -> tuple[jax.Array, jax.Array]:
    """(x_t, t) from EDM's (x_EDM, σ_EDM): t = λ⁻¹(−log σ_EDM), x_t = α(t)·x_EDM."""
    t = path.t_from_sigma_edm(sigma_edm)
    return _per_sample(path.alpha(t), x_edm) * x_edm, t


def to_diffusers_sigma(t) -> jax.Array:
    """diffusers' FlowMatch σ = 1 − t (linear path only)."""
    return 1.0 - jnp.asarray(t)


def from_diffusers_sigma(sigma) -> jax.Array:
    return 1.0 - jnp.asarray(sigma)
