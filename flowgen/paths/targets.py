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

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from flowgen.paths.schedules import Coefficients, Path

#: Names of the targets, in the order of the table above (``get_target`` gives the object).
TARGETS = ("velocity", "noise", "data", "v", "score")


class Denoised(NamedTuple):
    """Posterior means implied by a prediction: x̂ = E[x_data | x_t] and ε̂ = E[noise | x_t]."""

    data: jax.Array
    noise: jax.Array


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


class Target:
    """A prediction target: its exact conversions and what it requires of a path. Stateless; one instance per name
    in ``TARGETS_BY_NAME``. Shapes: predictions and x_t (batch, ...); coefficients broadcastable per sample."""

    name: ClassVar[str] = "target"
    #: The prediction determines x_data only where α(t) > 0 (x̂ = (x_t − σ·ε̂)/α).
    needs_alpha: ClassVar[bool] = False
    #: The target itself is infinite where σ(t) = 0.
    infinite_where_sigma_is_zero: ClassVar[bool] = False
    #: The target means what its name says only when x₀ ~ N(0, I) (the score −x₀/σ).
    needs_gaussian_source: ClassVar[bool] = False

    def to_denoised(self, p, x_t, a, s, da, ds) -> Denoised:
        raise NotImplementedError

    def from_denoised(self, d: Denoised, x_t, a, s, da, ds):
        raise NotImplementedError

    def log_scale_sq(self, a, s, da, ds, lam):
        """log c_T² with F_T − T = c_T·(x̂ − x_data) at fixed x_t (``flowgen.losses``), λ = log(α/σ) clipped."""
        raise NotImplementedError

    def velocity(self, p, x_t, c: Coefficients):
        """The probability-flow velocity α̇·x̂ + σ̇·ε̂ this prediction implies."""
        return VELOCITY.from_denoised(self.to_denoised(p, x_t, *_bcast(c, x_t)), x_t, *_bcast(c, x_t))

    def from_posterior(self, d: Denoised, score, x_t, c: Coefficients):
        """This target from exact posterior means (and the exact score, which the score target uses directly)."""
        return self.from_denoised(d, x_t, *_bcast(c, x_t))

    def __repr__(self) -> str:
        return self.name


class Velocity(Target):
    name = "velocity"

    def to_denoised(self, p, x_t, a, s, da, ds):
        det = a * ds - s * da
        return Denoised((ds * x_t - s * p) / det, (a * p - da * x_t) / det)

    def from_denoised(self, d, x_t, a, s, da, ds):
        return da * d.data + ds * d.noise

    def log_scale_sq(self, a, s, da, ds, lam):
        return 2.0 * jnp.log(jnp.abs(da - ds * jnp.exp(lam)))    # c = α̇ − σ̇·α/σ = α·λ̇

    def velocity(self, p, x_t, c):
        return p


class Noise(Target):
    name = "noise"
    needs_alpha = True

    def to_denoised(self, p, x_t, a, s, da, ds):
        return Denoised((x_t - s * p) / a, p)

    def from_denoised(self, d, x_t, a, s, da, ds):
        return d.noise

    def log_scale_sq(self, a, s, da, ds, lam):
        return 2.0 * lam                                        # c = −α/σ


class Data(Target):
    name = "data"

    def to_denoised(self, p, x_t, a, s, da, ds):
        return Denoised(p, _safe_div(x_t - a * p, s))

    def from_denoised(self, d, x_t, a, s, da, ds):
        return d.data

    def log_scale_sq(self, a, s, da, ds, lam):
        return jnp.zeros_like(lam)                              # c = 1


class V(Target):
    name = "v"

    def to_denoised(self, p, x_t, a, s, da, ds):
        norm = a**2 + s**2
        return Denoised((a * x_t - s * p) / norm, (s * x_t + a * p) / norm)

    def from_denoised(self, d, x_t, a, s, da, ds):
        return a * d.noise - s * d.data

    def log_scale_sq(self, a, s, da, ds, lam):
        return 2.0 * jnp.log(a * jnp.exp(lam) + s)              # c = −(α² + σ²)/σ = −(α·(α/σ) + σ)


class Score(Target):
    name = "score"
    needs_alpha = True
    infinite_where_sigma_is_zero = True
    needs_gaussian_source = True

    def to_denoised(self, p, x_t, a, s, da, ds):
        return Denoised((x_t + s**2 * p) / a, -s * p)

    def from_denoised(self, d, x_t, a, s, da, ds):
        return -d.noise / s

    def log_scale_sq(self, a, s, da, ds, lam):
        return 2.0 * (lam - jnp.log(s))                         # c = α/σ²

    def from_posterior(self, d, score, x_t, c):
        return score


VELOCITY = Velocity()
TARGETS_BY_NAME: dict[str, Target] = {t.name: t for t in (VELOCITY, Noise(), Data(), V(), Score())}


def check_target(target: str) -> str:
    if target not in TARGETS_BY_NAME:
        raise ValueError(f"unknown prediction target {target!r}; valid targets: {', '.join(TARGETS)}")
    return target


def get_target(target: str | Target) -> Target:
    """The Target object of a name (ValueError naming the valid ones otherwise)."""
    return target if isinstance(target, Target) else TARGETS_BY_NAME[check_target(target)]


def to_denoised(target: str, prediction: jax.Array, x_t: jax.Array, c: Coefficients) -> Denoised:
    """(x̂, ε̂) from a prediction of ``target`` at x_t; ``c`` holds α, σ, α̇, σ̇ at t (broadcastable)."""
    return get_target(target).to_denoised(prediction, x_t, *_bcast(c, x_t))


def from_denoised(target: str, d: Denoised, x_t: jax.Array, c: Coefficients) -> jax.Array:
    """The prediction of ``target`` that the posterior means (x̂, ε̂) imply."""
    return get_target(target).from_denoised(d, x_t, *_bcast(c, x_t))


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
