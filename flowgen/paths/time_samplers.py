"""Training-time distributions of t on [t_min, t_max], each with its exact density.

    uniform        t ~ U[t_min, t_max]
    logit_normal   t = t_min + (t_max − t_min)·sigmoid(m + s·z),  z ~ N(0, 1)          (Esser et al. 2024, SD3)
    edm            ln σ̃ ~ N(P_mean, P_std²) with σ̃ = σ/α, mapped to t = λ⁻¹(−ln σ̃)   (Karras et al. 2022, §5)
                   and truncated to [t_min, t_max] by inverse-CDF sampling (no atoms at the ends)

Densities: logit-normal  p(t) = φ((logit u − m)/s) / (s·u·(1 − u)·(t_max − t_min)),  u = (t − t_min)/(t_max − t_min);
EDM  p(t) = φ((−λ(t) − P_mean)/P_std)·λ̇(t) / (P_std·Z)  with Z the normal mass of [−λ(t_max), −λ(t_min)].
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from flowgen.paths.schedules import Path, _derivative


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """Base class: ``sample(key, shape)`` draws times in [t_min, t_max]; ``log_prob(t)`` is their log-density."""

    name: ClassVar[str] = "time_sampler"
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"{self.name}: need 0 <= t_min < t_max <= 1; got [{self.t_min}, {self.t_max}]")

    def sample(self, key, shape, dtype=jnp.float32) -> jax.Array:
        raise NotImplementedError

    def log_prob(self, t) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Uniform(TimeSampler):
    name: ClassVar[str] = "uniform"

    def sample(self, key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, self.t_min, self.t_max)

    def log_prob(self, t):
        t = jnp.asarray(t)
        inside = (t >= self.t_min) & (t <= self.t_max)
        return jnp.where(inside, -math.log(self.t_max - self.t_min), -jnp.inf)


@dataclasses.dataclass(frozen=True)
class LogitNormal(TimeSampler):
    """SD3's logit-normal (location ``m``, scale ``s``), mapped affinely onto [t_min, t_max]."""

    name: ClassVar[str] = "logit_normal"
    m: float = 0.0
    s: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.s > 0:
            raise ValueError(f"logit_normal: s must be > 0; got {self.s!r}")

    def sample(self, key, shape, dtype=jnp.float32):
        u = jax.nn.sigmoid(self.m + self.s * jax.random.normal(key, shape, dtype))
        return self.t_min + (self.t_max - self.t_min) * u

    def log_prob(self, t):
        width = self.t_max - self.t_min
        u = (jnp.asarray(t) - self.t_min) / width
        z = (jnp.log(u) - jnp.log1p(-u) - self.m) / self.s
        return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - math.log(self.s) - jnp.log(u) - jnp.log1p(-u)
                - math.log(width))


@dataclasses.dataclass(frozen=True)
class EDMLogNormal(TimeSampler):
    """EDM's training noise levels ln σ̃ ~ N(P_mean, P_std²) on ``path``, truncated to [t_min, t_max]."""

    name: ClassVar[str] = "edm"
    path: Path | None = None
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.path, Path):
            raise ValueError(f"edm time sampler needs path=a flowgen Path; got {self.path!r}")
        if not self.p_std > 0:
            raise ValueError(f"edm time sampler: p_std must be > 0; got {self.p_std!r}")

    def _cdf_bounds(self, dtype):
        # ln σ̃ = −λ decreases in t: t_max ↔ lower bound of ln σ̃.
        lo = -self.path.log_snr(jnp.asarray(self.t_max, dtype))
        hi = -self.path.log_snr(jnp.asarray(self.t_min, dtype))
        return ndtr((lo - self.p_mean) / self.p_std), ndtr((hi - self.p_mean) / self.p_std)

    def sample(self, key, shape, dtype=jnp.float32):
        c_lo, c_hi = self._cdf_bounds(dtype)
        u = jax.random.uniform(key, shape, dtype, 0.0, 1.0)
        eps = jnp.finfo(dtype).eps
        log_sigma = self.p_mean + self.p_std * ndtri(jnp.clip(c_lo + u * (c_hi - c_lo), eps, 1 - eps))
        t = self.path.t_from_log_snr(-log_sigma)
        return jnp.clip(t, self.t_min, self.t_max).astype(dtype)

    def log_prob(self, t):
        t = jnp.asarray(t)
        c_lo, c_hi = self._cdf_bounds(t.dtype)
        z = (-self.path.log_snr(t) - self.p_mean) / self.p_std
        d_lam = _derivative(self.path.log_snr, t)
        return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) - math.log(self.p_std) + jnp.log(d_lam)
                - jnp.log(c_hi - c_lo))


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {c.name: c for c in (Uniform, LogitNormal, EDMLogNormal)}


def get_time_sampler(name: str | TimeSampler, path: Path, **kwargs) -> TimeSampler:
    """A time sampler by name on ``path``'s interval (override with t_min/t_max); instances pass through."""
    if isinstance(name, TimeSampler):
        return name
    from flowgen import options

    cls = options.choose(TIME_SAMPLERS, name, "time sampler")
    options.check_options(cls, kwargs, f"time sampler {name!r}", hidden=("path",))
    kwargs = {"t_min": path.t_min, "t_max": path.t_max, **kwargs}
    if "path" in options.options_of(cls):
        kwargs["path"] = path
    return cls(**kwargs)
