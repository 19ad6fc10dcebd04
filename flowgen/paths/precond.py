"""EDM preconditioning (Karras et al. 2022, Table 1, "Ours" column) around any raw network F, on any affine path.

In EDM's variables ``x̃ = x_t/α`` and ``σ̃ = σ/α`` (so that ``x̃ = x_data + σ̃·noise``) the denoiser is

    D(x̃; σ̃) = c_skip(σ̃)·x̃ + c_out(σ̃)·F(c_in(σ̃)·x̃; c_noise(σ̃))

    c_skip = σ_data² / (σ̃² + σ_data²)          c_out  = σ̃·σ_data / sqrt(σ̃² + σ_data²)
    c_in   = 1 / sqrt(σ̃² + σ_data²)            c_noise = ¼·ln(σ̃)

chosen so that F's input and its effective training target ``(x_data − c_skip·x̃)/c_out`` have unit variance
when the data do (std σ_data). The wrapped model predicts target ``"data"``; it needs α > 0 and σ > 0 at the
times it is called (EDM never evaluates σ̃ = 0; ``fg.sample`` refuses such grids for data models only at σ = 0
through the solver's own rules). Pure function: no Flax here; F is any ``F(params, x, c_noise, *cond)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from flowgen.paths.schedules import Path


class EDMCoefficients(NamedTuple):
    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


def edm_coefficients(sigma_edm, sigma_data: float = 0.5) -> EDMCoefficients:
    """Table 1 of Karras et al. 2022 at noise level σ̃ (any shape)."""
    s = jnp.asarray(sigma_edm)
    norm = s**2 + sigma_data**2
    return EDMCoefficients(sigma_data**2 / norm, s * sigma_data / jnp.sqrt(norm), 1.0 / jnp.sqrt(norm),
                           0.25 * jnp.log(s))


def edm_precondition(network: Callable, path: Path, sigma_data: float = 0.5) -> Callable:
    """Wrap ``network(params, x, c_noise, *cond)`` into ``model(params, x_t, t, *cond) -> x̂`` (target "data").

    Shapes: x_t (batch, ...), t (batch,); c_noise passed to the network has shape (batch,).
    """
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0; got {sigma_data!r}")

    def model(params, x_t, t, *cond):
        t = jnp.asarray(t, x_t.dtype)
        alpha, sigma = path.alpha(t), path.sigma(t)
        sigma_edm = sigma / alpha
        c = edm_coefficients(sigma_edm, sigma_data)
        per_sample = lambda v: jnp.reshape(v, v.shape + (1,) * (x_t.ndim - v.ndim))  # noqa: E731
        x_edm = x_t / per_sample(alpha)
        out = network(params, per_sample(c.c_in) * x_edm, c.c_noise, *cond)
        return per_sample(c.c_skip) * x_edm + per_sample(c.c_out) * out

    return model


def edm_training_target(x_data: jax.Array, noise: jax.Array, sigma_edm, sigma_data: float = 0.5) -> jax.Array:
    """F's effective regression target (x_data − c_skip·x̃)/c_out for x̃ = x_data + σ̃·noise (Karras et al., eq. 8)."""
    c = edm_coefficients(sigma_edm, sigma_data)
    per_sample = lambda v: jnp.reshape(v, v.shape + (1,) * (x_data.ndim - v.ndim))  # noqa: E731
    x_edm = x_data + per_sample(jnp.asarray(sigma_edm)) * noise
    return (x_data - per_sample(c.c_skip) * x_edm) / per_sample(c.c_out)


@dataclasses.dataclass(frozen=True)
class EDMPreconditioning:
    """``model.precond = "edm"``: the wrapped model predicts the data, and the raw network's time input is
    c_noise = ¼·ln σ̃ (about −1.6 … 1.1), which it embeds unscaled (``time_scale = 1``)."""

    name: ClassVar[str] = "edm"
    prediction: ClassVar[str] = "data"
    network_time_scale: ClassVar[float] = 1.0
    sigma_data: float = 0.5

    def wrap(self, network: Callable, path: Path) -> Callable:
        return edm_precondition(network, path, self.sigma_data)


#: ``model.precond`` → preconditioning ("none": the network's output is the prediction itself).
PRECONDITIONINGS: dict[str, type | None] = {"none": None, "edm": EDMPreconditioning}
