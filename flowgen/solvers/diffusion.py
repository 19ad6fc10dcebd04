"""Exponential-integrator solvers (DDIM, DPM-Solver++) on any affine path, from the data prediction x̂.

With λ = log(α/σ) the probability-flow ODE is linear in x up to the data prediction (Lu et al. 2022b, eq. 9):

    x_t / σ_t = x_s / σ_s + ∫_{λ_s}^{λ_t} e^λ · x̂(x_λ, λ) dλ .

Freezing x̂ over the step gives DDIM / DPM-Solver++(1) (Song et al. 2021a; h = λ_t − λ_s):

    x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·x̂_s  =  α_t·x̂_s + σ_t·ε̂_s .

Multistep variants extrapolate x̂ from earlier steps (no extra model calls). Nothing here assumes a VP path:
only α, σ and λ enter. Where the step ends at σ_t = 0 (h = ∞) every formula falls back to x_t = α_t·x̂_s.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.solvers.base import Context, Solver


def _step_terms(ctx: Context, t0, t1):
    """(α_t, σ_t/σ_s, e^{−h}, h) for a step from t0 = s to t1 = t; e^{−h} = σ_t·α_s/(σ_s·α_t) without logs."""
    a0, s0 = ctx.path.alpha(t0), ctx.path.sigma(t0)
    a1, s1 = ctx.path.alpha(t1), ctx.path.sigma(t1)
    exp_neg_h = (s1 * a0) / (s0 * a1)
    h = -jnp.log(exp_neg_h)
    return a1, s1 / s0, exp_neg_h, h


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
    """DDIM (Song et al. 2021a) on any path. ``eta = 0``: deterministic (first-order exponential integrator).

    ``eta > 0`` adds fresh noise of standard deviation ``c = η·σ_t·sqrt(1 − e^{−2h})`` (DDIM's σ_η written for any
    affine path; η = 1 is DDPM's ancestral sampler):

        x_t = α_t·x̂_s + sqrt(σ_t² − c²)·ε̂_s + c·z.
    """

    name: ClassVar[str] = "ddim"
    order: ClassVar[int] = 1
    eta: float = 0.0

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def check(self):
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"ddim: eta must be in [0, 1]; got {self.eta!r}")

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        d = ctx.denoise(x, t0)
        a1, s1 = ctx.path.alpha(t1), ctx.path.sigma(t1)
        if self.eta == 0:
            return a1 * d.data + s1 * d.noise, state, 1
        _, _, exp_neg_h, _ = _step_terms(ctx, t0, t1)
        c = self.eta * s1 * jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * jnp.log(exp_neg_h)), 0.0))
        z = jax.random.normal(key, x.shape, x.dtype)
        x_next = a1 * d.data + jnp.sqrt(jnp.maximum(s1**2 - c**2, 0.0)) * d.noise + c * z
        return x_next, state, 1


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), data prediction, multistep, one model call per step:

        r = h_{i−1}/h_i,   D = (1 + 1/(2r))·x̂_i − (1/(2r))·x̂_{i−1},
        x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·(e^{−h_i} − 1)·D

    The first step, and a final step into σ = 0, are first order.
    """

    name: ClassVar[str] = "dpmpp_2m"
    default_grid: ClassVar[str] = "logsnr"
    order: ClassVar[int] = 2

    def init(self, ctx, x, t0):
        return (jnp.zeros_like(x), jnp.ones((), x.dtype))          # previous x̂, previous h

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        prev_data, prev_h = state
        data = ctx.denoise(x, t0).data
        a1, sigma_ratio, exp_neg_h, h = _step_terms(ctx, t0, t1)
        phi_1 = exp_neg_h - 1.0
        second = (index > 0) & jnp.isfinite(h)
        half_inv_r = jnp.where(second, 0.5 * h / prev_h, 0.0)      # 1/(2r); 0 when the previous h was infinite
        d = data + half_inv_r * (data - prev_data)
        x_next = sigma_ratio * x - a1 * phi_1 * jnp.where(second, d, data)
        return x_next, (data, h.astype(x.dtype)), 1


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3M(Solver):
    """DPM-Solver++(3M): third-order multistep (Lu et al. 2022b, §4.2 and their reference code), data prediction.

    With backward differences of x̂ in λ over the last three steps (r₀ = h_{i−1}/h, r₁ = h_{i−2}/h),

        D1₀ = (x̂_i − x̂_{i−1})/r₀,   D1₁ = (x̂_{i−1} − x̂_{i−2})/r₁,
        D1 = D1₀ + r₀/(r₀ + r₁)·(D1₀ − D1₁) ≈ h·x̂',       D2 = (D1₀ − D1₁)/(r₀ + r₁) ≈ ½h²·x̂'',
        φ₁ = e^{−h} − 1,   φ₂ = φ₁/h + 1,   φ₃ = φ₂/h − ½,
        x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·φ₁·x̂_i + α_{i+1}·φ₂·D1 − 2·α_{i+1}·φ₃·D2.

    (The factor 2 makes the D2 term the exact ∫e^λ·½(λ−λ_i)²x̂'' dλ; the order test checks 3.) Steps 1 and 2 use
    orders 1 and 2; as in DPM-Solver, runs shorter than 15 steps drop to orders 2 and 1 on the last two steps, and a
    step into σ = 0 is first order.
    """

    name: ClassVar[str] = "dpmpp_3m"
    default_grid: ClassVar[str] = "logsnr"
    order: ClassVar[int] = 3
    lower_order_final: bool = True

    def init(self, ctx, x, t0):
        one = jnp.ones((), x.dtype)
        return (jnp.zeros_like(x), jnp.zeros_like(x), one, one)    # x̂_{i−1}, x̂_{i−2}, h_{i−1}, h_{i−2}

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        m1, m2, h1, h2 = state
        m0 = ctx.denoise(x, t0).data
        a1, sigma_ratio, exp_neg_h, h = _step_terms(ctx, t0, t1)
        order = jnp.minimum(index + 1, 3)
        if self.lower_order_final:
            total = index + remaining
            order = jnp.where(total < 15, jnp.minimum(order, remaining), order)
        # A step into σ = 0 (h = ∞) is first order; an infinite earlier step (from α = 0) carries no slope.
        order = jnp.where(jnp.isfinite(h) & jnp.isfinite(h1), order, 1)
        order = jnp.where(jnp.isfinite(h2), order, jnp.minimum(order, 2))
        safe_h = jnp.where(jnp.isfinite(h), h, 1.0)
        phi_1 = exp_neg_h - 1.0
        phi_2 = phi_1 / safe_h + 1.0
        phi_3 = phi_2 / safe_h - 0.5
        r0, r1 = h1 / safe_h, h2 / safe_h
        d1_0 = (m0 - m1) / r0
        d1_1 = (m1 - m2) / r1
        d1_3 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2_3 = (d1_0 - d1_1) / (r0 + r1)
        first = sigma_ratio * x - a1 * phi_1 * m0
        second = first - a1 * phi_1 * 0.5 * d1_0                   # DPM-Solver++(2M) correction
        third = first + a1 * phi_2 * d1_3 - 2.0 * a1 * phi_3 * d2_3
        x_next = jnp.where(order == 1, first, jnp.where(order == 2, second, third))
        h = h.astype(x.dtype)
        return x_next, (m0, m1, h, h1), 1
