"""Affine Gaussian probability paths: the schedules (α(t), σ(t)).

Convention (docs/conventions.md): time runs from noise to data, t ∈ [0, 1],

    x_t = α(t)·x_data + σ(t)·noise,      noise ~ N(0, I).

A path is nothing but the pair (α, σ). Everything else a sampler or a loss needs follows from it:

    α̇, σ̇                 time derivatives (closed form where given, else ``jax.jvp``)
    λ(t) = log(α/σ)       half log signal-to-noise ratio, strictly increasing in t
    t(λ)                  its inverse (closed form where given, else bisection)
    g²(t) = 2σ²·λ̇(t)      squared diffusion of the path's own (score_sde) SDE, see ``diffusion_sq``

Paths are frozen dataclasses, so they hash and can be static arguments of ``jax.jit``.
Each path carries the time interval ``[t_min, t_max]`` on which it is trained and sampled by default; both ends
are chosen where the schedule is finite and its derivatives are finite (VP's σ̇ is infinite at t = 1, so VP
paths stop at t = 1 − 1e-3 as score_sde does).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Coefficients(NamedTuple):
    """α, σ and their time derivatives at some times t (each the shape of t)."""

    alpha: jax.Array
    sigma: jax.Array
    d_alpha: jax.Array
    d_sigma: jax.Array


def _derivative(fn: Callable[[jax.Array], jax.Array], t: jax.Array) -> jax.Array:
    """Elementwise d fn / dt by forward-mode autodiff (fn must act elementwise)."""
    t = jnp.asarray(t, dtype=jnp.result_type(t, float))
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


HOST_CHUNK = 256


def host_eval(fn: Callable, t) -> np.ndarray:
    """Evaluate ``fn(t)`` on the host in float64 (for grids and input checks), even inside a jit trace and whatever
    the global x64 setting. ``fn`` must act elementwise along t's last axis.

    The times are evaluated in chunks of ``HOST_CHUNK`` (the last one padded), so every op runs at one shape
    whatever the grid's length: JAX compiles each op once per process, not once per grid size (a 1000-step grid
    costs no more compilation than a 10-step one)."""
    t = np.asarray(t, np.float64)
    flat = t.reshape(-1)
    n = flat.size
    pad = (-n) % HOST_CHUNK if n else HOST_CHUNK
    padded = np.concatenate([flat, np.full(pad, flat[-1] if n else 0.5)])
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        chunks = [np.asarray(fn(jnp.asarray(padded[i:i + HOST_CHUNK], jnp.float64)), dtype=np.float64)
                  for i in range(0, padded.size, HOST_CHUNK)]
    out = np.concatenate(chunks, axis=-1)
    return out[..., :n].reshape(out.shape[:-1] + t.shape)


def _float(t) -> jax.Array:
    return jnp.asarray(t, dtype=jnp.result_type(t, float))


@dataclasses.dataclass(frozen=True)
class Path:
    """Base class of affine Gaussian paths ``x_t = α(t)·x_data + σ(t)·noise``.

    Subclasses define ``alpha`` and ``sigma`` (elementwise functions of t); they may override the derivatives
    and the inverse of λ with closed forms, which the tests check against ``jax.jvp`` and round trips.
    """

    name: ClassVar[str] = "path"
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ValueError(
                f"{type(self).__name__} needs 0 <= t_min < t_max <= 1; got t_min={self.t_min}, t_max={self.t_max}"
            )

    # --- the schedule -----------------------------------------------------------------------------------
    def alpha(self, t) -> jax.Array:
        raise NotImplementedError

    def sigma(self, t) -> jax.Array:
        raise NotImplementedError

    def d_alpha(self, t) -> jax.Array:
        """dα/dt (forward-mode autodiff unless a subclass gives the closed form)."""
        return _derivative(self.alpha, t)

    def d_sigma(self, t) -> jax.Array:
        """dσ/dt (forward-mode autodiff unless a subclass gives the closed form)."""
        return _derivative(self.sigma, t)

    def coefficients(self, t) -> Coefficients:
        t = _float(t)
        return Coefficients(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    # --- signal-to-noise ------------------------------------------------------------------------------
    def log_snr(self, t) -> jax.Array:
        """λ(t) = log(α(t)/σ(t)); −∞ where α = 0 and +∞ where σ = 0."""
        t = _float(t)
        return jnp.log(self.alpha(t)) - jnp.log(self.sigma(t))

    def t_from_log_snr(self, log_snr) -> jax.Array:
        """Inverse of λ(t) on [0, 1] by bisection (λ is increasing); subclasses give closed forms."""
        lam = _float(log_snr)
        lo = jnp.zeros_like(lam)
        hi = jnp.ones_like(lam)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.log_snr(mid) < lam
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        return 0.5 * (lo + hi)

    def sigma_edm(self, t) -> jax.Array:
        """EDM's noise level σ/α = exp(−λ) (Karras et al. 2022)."""
        return jnp.exp(-self.log_snr(t))

    def t_from_sigma_edm(self, sigma_edm) -> jax.Array:
        return self.t_from_log_snr(-jnp.log(_float(sigma_edm)))

    # --- SDE view -------------------------------------------------------------------------------------
    def drift_coefficient(self, t) -> jax.Array:
        """f in the forward (noising) SDE ``dx = f·x ds + g dW`` written in diffusion time s = 1 − t.

        Its marginals are the path's: f = d log α / ds = −α̇/α.
        """
        t = _float(t)
        return -self.d_alpha(t) / self.alpha(t)

    def diffusion_sq(self, t) -> jax.Array:
        """g²(t) of the path's own SDE (score_sde's g²): g² = dσ²/ds − 2fσ² = 2σ²·dλ/dt = 2σ(σα̇/α − σ̇).

        The reverse-time SDE family with this diffusion (see ``flowgen.solvers.sde``) is score_sde's reverse
        SDE; w = 0 is the probability-flow ODE. Written with α in the denominator only through α̇/α, so it is
        finite wherever α > 0.
        """
        a, s, da, ds = self.coefficients(t)
        return 2.0 * s * (s * da / a - ds)

    # --- prior ---------------------------------------------------------------------------------------
    def prior_std(self, t=None) -> jax.Array:
        """Standard deviation of the prior N(0, σ(t₀)²·I) that sampling starts from (α·x_data dropped)."""
        return self.sigma(_float(self.t_min if t is None else t))

    def prior_sample(self, key: jax.Array, shape, t=None, dtype=jnp.float32) -> jax.Array:
        return self.prior_std(t).astype(dtype) * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x: jax.Array, t=None) -> jax.Array:
        """log N(x; 0, σ(t₀)²·I) summed over all but the leading (batch) axis."""
        std = self.prior_std(t)
        x = jnp.asarray(x)
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * sq / std**2 - d * jnp.log(std) - 0.5 * d * math.log(2 * math.pi)

    # --- sampling x_t ----------------------------------------------------------------------------------
    def sample(self, x_data: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """x_t = α(t)·x_data + σ(t)·noise, with t of shape (batch,) broadcast over the trailing axes."""
        t = _float(t)
        shape = t.shape + (1,) * (x_data.ndim - t.ndim)
        a = jnp.reshape(self.alpha(t), shape)
        s = jnp.reshape(self.sigma(t), shape)
        return a * x_data + s * noise


# ---------------------------------------------------------------------------------------------------------
# Concrete paths
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearPath(Path):
    """Rectified flow / CondOT (Liu et al. 2023; Lipman et al. 2023): α = t, σ = 1 − (1 − σ_min)·t.

    ``sigma_min`` = 0 (default) is the straight line from noise to data; Lipman et al.'s flow matching keeps a
    little noise at the data end (σ(1) = σ_min, e.g. 0.1 in Tong et al.'s "FM" baseline), target x − (1 − σ_min)·z.
    """

    name: ClassVar[str] = "linear"
    sigma_min: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.sigma_min, bool) or not isinstance(self.sigma_min, (int, float)) or not (
                0.0 <= self.sigma_min < 1.0):
            raise ValueError(f"LinearPath: sigma_min must be a number in [0, 1); got {self.sigma_min!r}")

    def __repr__(self):
        # σ_min = 0 keeps the repr it had before the option existed: sweeps key their cells on it (unchanged ids)
        extra = f", sigma_min={self.sigma_min}" if self.sigma_min else ""
        return f"LinearPath(t_min={self.t_min}, t_max={self.t_max}{extra})"

    def alpha(self, t):
        return _float(t)

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * _float(t)

    def d_alpha(self, t):
        return jnp.ones_like(_float(t))

    def d_sigma(self, t):
        return jnp.full_like(_float(t), -(1.0 - self.sigma_min))

    def t_from_log_snr(self, log_snr):
        # e^λ = t / (1 − (1 − σ_min)·t)  ⇒  t = 1 / (e^{−λ} + 1 − σ_min); σ_min = 0: the logistic sigmoid
        if self.sigma_min == 0.0:
            return jax.nn.sigmoid(_float(log_snr))
        return 1.0 / (jnp.exp(-_float(log_snr)) + 1.0 - self.sigma_min)


@dataclasses.dataclass(frozen=True)
class TrigPath(Path):
    """Trigonometric / GVP path (Albergo & Vanden-Eijnden 2023; SiT): α = sin(πt/2), σ = cos(πt/2)."""

    name: ClassVar[str] = "trig"

    def alpha(self, t):
        return jnp.sin(0.5 * jnp.pi * _float(t))

    def sigma(self, t):
        # sin(π(1 − t)/2) rather than cos(πt/2): exactly 0 at t = 1 in floating point.
        return jnp.sin(0.5 * jnp.pi * (1.0 - _float(t)))

    def d_alpha(self, t):
        return 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * _float(t))

    def d_sigma(self, t):
        return -0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * (1.0 - _float(t)))

    def t_from_log_snr(self, log_snr):
        return jnp.arctan(jnp.exp(_float(log_snr))) * (2.0 / jnp.pi)


@dataclasses.dataclass(frozen=True)
class VariancePreservingPath(Path):
    """Base of the VP schedules: α from ``log_alpha`` (given by a subclass) and σ = sqrt(1 − α²), so α² + σ² = 1.

        σ̇ = −α·α̇/σ,   λ = log α − ½·log(1 − α²),   α² = sigmoid(2λ).
    """

    def log_alpha(self, t):
        raise NotImplementedError

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * jnp.log(-jnp.expm1(2.0 * la))


@dataclasses.dataclass(frozen=True)
class VPLinearPath(VariancePreservingPath):
    """Variance-preserving SDE with linear β (DDPM continuous; Song et al. 2021), in diffusion time s = 1 − t:

        β(s) = β_min + s·(β_max − β_min),   log α = −¼·s²·(β_max − β_min) − ½·s·β_min,   σ = sqrt(1 − α²).

    α̇ = ½·β(s)·α and σ̇ = −α·α̇/σ, which is infinite at t = 1; hence t_max = 1 − 1e-3 (score_sde's ε).
    """

    name: ClassVar[str] = "vp_linear"
    t_max: float = 1.0 - 1e-3
    beta_min: float = 0.1
    beta_max: float = 20.0

    def log_alpha(self, t):
        s = 1.0 - _float(t)
        return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def d_alpha(self, t):
        s = 1.0 - _float(t)
        return 0.5 * (self.beta_min + s * (self.beta_max - self.beta_min)) * self.alpha(t)

    def t_from_log_snr(self, log_snr):
        # α² = sigmoid(2λ), then solve the quadratic log α(s) for s (rationalised for stability).
        log_alpha = 0.5 * jax.nn.log_sigmoid(2.0 * _float(log_snr))
        db = self.beta_max - self.beta_min
        s = -4.0 * log_alpha / (self.beta_min + jnp.sqrt(self.beta_min**2 - 4.0 * db * log_alpha))
        return 1.0 - s


@dataclasses.dataclass(frozen=True)
class VPCosinePath(VariancePreservingPath):
    """Cosine VP schedule (Nichol & Dhariwal 2021), in diffusion time s = 1 − t:

        ᾱ(s) = f(s)/f(0),  f(s) = cos²(π/2 · (s + c)/(1 + c)),  c = 0.008,   α = sqrt(ᾱ),  σ = sqrt(1 − ᾱ).

    α vanishes at t = 0 and σ̇ is infinite at t = 1, so the default interval is [1 − 0.9946, 1 − 1e-3] (the
    diffusion-time end T = 0.9946 DPM-Solver uses for this schedule).
    """

    name: ClassVar[str] = "vp_cosine"
    t_min: float = 1.0 - 0.9946
    t_max: float = 1.0 - 1e-3
    offset: float = 0.008

    def _angle(self, t):
        return 0.5 * jnp.pi * (1.0 - _float(t) + self.offset) / (1.0 + self.offset)

    def log_alpha(self, t):
        return jnp.log(jnp.cos(self._angle(t))) - math.log(
            math.cos(0.5 * math.pi * self.offset / (1.0 + self.offset))
        )

    def d_alpha(self, t):
        # d/dt = −d/ds; dα/ds = −α·tan(angle)·(π/2)/(1 + c)
        return self.alpha(t) * jnp.tan(self._angle(t)) * (0.5 * jnp.pi / (1.0 + self.offset))

    def t_from_log_snr(self, log_snr):
        log_alpha = 0.5 * jax.nn.log_sigmoid(2.0 * _float(log_snr))
        cos0 = math.cos(0.5 * math.pi * self.offset / (1.0 + self.offset))
        angle = jnp.arccos(jnp.clip(jnp.exp(log_alpha) * cos0, -1.0, 1.0))
        s = angle * (2.0 * (1.0 + self.offset) / jnp.pi) - self.offset
        return 1.0 - s


@dataclasses.dataclass(frozen=True)
class SubVPPath(VPLinearPath):
    """sub-VP SDE (Song et al. 2021): α as VP-linear, σ = 1 − α² (its variance is below VP's everywhere).

    σ̇ = −2α·α̇ is finite at t = 1, but the default interval still stops at 1 − 1e-3 as score_sde does.
    """

    name: ClassVar[str] = "sub_vp"

    def sigma(self, t):
        return -jnp.expm1(2.0 * self.log_alpha(t))

    def d_sigma(self, t):
        return -2.0 * self.alpha(t) * self.d_alpha(t)

    def log_snr(self, t):
        la = self.log_alpha(t)
        return la - jnp.log(-jnp.expm1(2.0 * la))

    def t_from_log_snr(self, log_snr):
        # e^λ = α/(1 − α²)  ⇒  α = 2e^λ / (1 + sqrt(1 + 4e^{2λ})), then invert log α(s) as for VP.
        lam = _float(log_snr)
        log_alpha = jnp.log(2.0) + lam - jnp.log1p(jnp.sqrt(1.0 + 4.0 * jnp.exp(2.0 * lam)))
        db = self.beta_max - self.beta_min
        s = -4.0 * log_alpha / (self.beta_min + jnp.sqrt(self.beta_min**2 - 4.0 * db * log_alpha))
        return 1.0 - s


@dataclasses.dataclass(frozen=True)
class VEPath(Path):
    """Variance-exploding SDE (NCSN; Song & Ermon 2019, Song et al. 2021):

        α = 1,   σ(t) = σ_min·(σ_max/σ_min)^(1 − t).

    The prior is N(0, σ_max²·I).
    """

    name: ClassVar[str] = "ve"
    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def alpha(self, t):
        return jnp.ones_like(_float(t))

    def sigma(self, t):
        return self.sigma_min * jnp.exp((1.0 - _float(t)) * math.log(self.sigma_max / self.sigma_min))

    def d_alpha(self, t):
        return jnp.zeros_like(_float(t))

    def d_sigma(self, t):
        return -self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def log_snr(self, t):
        return -jnp.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        return 1.0 - (-_float(log_snr) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class AffinePath(Path):
    """Any user-given schedule: ``AffinePath(alpha_fn, sigma_fn)`` with elementwise jnp functions of t.

    Derivatives come from ``jax.jvp``; λ's inverse from bisection (λ must increase with t). Give ``t_min``/``t_max``
    where α, σ and their derivatives are finite. The functions must be hashable (plain functions are).
    """

    name: ClassVar[str] = "custom"
    alpha_fn: Callable | None = None
    sigma_fn: Callable | None = None

    def __post_init__(self):
        super().__post_init__()
        if not (callable(self.alpha_fn) and callable(self.sigma_fn)):
            raise ValueError(
                f"AffinePath needs callables alpha_fn and sigma_fn; got {self.alpha_fn!r}, {self.sigma_fn!r}"
            )

    def alpha(self, t):
        t = _float(t)
        return jnp.broadcast_to(jnp.asarray(self.alpha_fn(t), t.dtype), t.shape)

    def sigma(self, t):
        t = _float(t)
        return jnp.broadcast_to(jnp.asarray(self.sigma_fn(t), t.dtype), t.shape)
