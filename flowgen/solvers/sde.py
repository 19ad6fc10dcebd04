"""Stochastic samplers: the reverse-SDE family, predictor–corrector, and EDM's stochastic sampler.

Reverse-SDE family (Song et al. 2021; Ma et al. 2024, SiT), integrated forward in t (noise → data):

    dx = [u(x, t) + ½·w(t)·∇log p_t(x)] dt + sqrt(w(t)) dW,      ∇log p_t = −ε̂/σ,

for any w ≥ 0 with the same marginals as the path. w = 0 is the probability-flow ODE; w = g² (the path's own
squared diffusion, ``Path.diffusion_sq``) is score_sde's reverse SDE. In terms of the posterior means

    drift = α̇·x̂ + (σ̇ − ½·w/σ)·ε̂ .

Every sampler here adds no noise on its last step (score_sde's ``noise_removal``; k-diffusion's ancestral
samplers do the same when the last σ is 0), so the returned sample is the final mean.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.paths.schedules import host_eval
from flowgen.solvers.base import Context, Solver

DIFFUSIONS = ("zero", "path", "constant", "sigma")


def diffusion_coefficient(kind: str | Callable, scale: float, path, t) -> jax.Array:
    """w(t): ``zero`` 0; ``path`` scale·g²(t); ``constant`` scale; ``sigma`` scale·σ(t); a callable: scale·w(t)."""
    if callable(kind):
        return scale * jnp.asarray(kind(t))
    if kind == "zero":
        return jnp.zeros_like(jnp.asarray(t))
    if kind == "path":
        return scale * path.diffusion_sq(t)
    if kind == "constant":
        return scale * jnp.ones_like(jnp.asarray(t))
    if kind == "sigma":
        return scale * path.sigma(t)
    raise ValueError(f"unknown diffusion {kind!r}; valid diffusions: {', '.join(DIFFUSIONS)} or a callable w(t)")


def _check_diffusion(name, kind, scale):
    if not callable(kind) and kind not in DIFFUSIONS:
        raise ValueError(f"{name}: unknown diffusion {kind!r}; valid: {', '.join(DIFFUSIONS)} or a callable w(t)")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"{name}: diffusion_scale must be a finite number >= 0; got {scale!r}")


def _check_finite_diffusion(solver, kind, scale, path, ts) -> None:
    """The diffusion must be finite wherever a step starts (the path's g² is infinite where α = 0)."""
    w = np.asarray(host_eval(lambda t: diffusion_coefficient(kind, scale, path, t), ts[:-1]))
    if not np.all(np.isfinite(w)):
        raise ValueError(
            f"the diffusion w(t) is not finite at t={ts[:-1][~np.isfinite(w)][0]:.6g} on path {path!r} with solver "
            f"{solver.name!r} (the path's g² is infinite where α = 0); start the grid later (t_start=1e-3) or "
            f"choose solver_options=dict(diffusion='sigma')"
        )


def _reverse_sde_step(ctx: Context, diffusion, scale, x, t0, t1, key, remaining):
    """One Euler–Maruyama step of the reverse-SDE family; the last step adds no noise."""
    d = ctx.denoise(x, t0)
    a0, s0, da0, ds0 = ctx.coefficients(t0)
    w = diffusion_coefficient(diffusion, scale, ctx.path, t0)
    h = t1 - t0
    drift = da0 * d.data + (ds0 - 0.5 * w / s0) * d.noise
    noise = jnp.where(remaining > 1, jnp.sqrt(w * h), 0.0) * jax.random.normal(key, x.shape, x.dtype)
    return x + h * drift + noise


@dataclasses.dataclass(frozen=True)
class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse-SDE family with diffusion ``w(t)`` (one model call per step; order 1 weak,
    ½ strong). ``diffusion``: "path" (score_sde's reverse SDE, default), "zero" (= Euler on the ODE), "constant",
    "sigma", or a callable; ``diffusion_scale`` multiplies it.
    """

    name: ClassVar[str] = "euler_maruyama"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    diffusion: str | Callable = "path"
    diffusion_scale: float = 1.0

    def check(self):
        _check_diffusion(self.name, self.diffusion, self.diffusion_scale)

    def check_grid(self, path, target, ts, coefficients):
        _check_finite_diffusion(self, self.diffusion, self.diffusion_scale, path, ts)

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        return _reverse_sde_step(ctx, self.diffusion, self.diffusion_scale, x, t0, t1, key, remaining), state, 1


@dataclasses.dataclass(frozen=True)
class PredictorCorrector(Solver):
    """Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3): at each grid time, ``corrector_steps``
    Langevin steps targeting p_t, then one Euler–Maruyama predictor step of the reverse SDE (w = g²).

    Langevin corrector with signal-to-noise ratio ``snr`` (score_sde's α_i taken as 1):

        ε = 2·(snr·‖z‖ / ‖∇log p_t(x)‖)²,   x ← x + ε·∇log p_t(x) + sqrt(2ε)·z ,

    with both norms per sample and averaged over the batch, as score_sde does (a per-sample ratio explodes for a
    sample that sits where the score vanishes, e.g. at a mode).

    NFE per step = corrector_steps + 1. With ``corrector_steps=0`` it is exactly ``euler_maruyama`` (same noise
    from the same key).
    """

    name: ClassVar[str] = "pc"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    snr: float = 0.16
    corrector_steps: int = 1

    def check(self):
        if not (isinstance(self.snr, (int, float)) and math.isfinite(self.snr) and self.snr > 0):
            raise ValueError(f"pc: snr must be a finite number > 0; got {self.snr!r}")
        if isinstance(self.corrector_steps, bool) or not isinstance(self.corrector_steps, int) or (
            self.corrector_steps < 0
        ):
            raise ValueError(f"pc: corrector_steps must be an integer >= 0; got {self.corrector_steps!r}")

    @property
    def calls_per_step(self) -> int:
        return self.corrector_steps + 1

    def check_grid(self, path, target, ts, coefficients):
        _check_finite_diffusion(self, "path", 1.0, path, ts)

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        sigma0 = ctx.path.sigma(t0)
        # The predictor draws from the step's key itself, as euler_maruyama does; correctors from keys split off it.
        keys = (key,) if self.corrector_steps == 0 else tuple(jax.random.split(key, self.corrector_steps + 1))
        axes = tuple(range(1, x.ndim))
        for k in keys[:-1]:
            score = -ctx.denoise(x, t0).noise / sigma0
            z = jax.random.normal(k, x.shape, x.dtype)
            z_norm = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=axes)))
            g_norm = jnp.mean(jnp.sqrt(jnp.sum(score**2, axis=axes)))
            eps = 2.0 * (self.snr * z_norm / jnp.maximum(g_norm, jnp.finfo(x.dtype).tiny)) ** 2
            x = x + eps * score + jnp.sqrt(2.0 * eps) * z
        x = _reverse_sde_step(ctx, "path", 1.0, x, t0, t1, keys[-1], remaining)
        return x, state, self.corrector_steps + 1


@dataclasses.dataclass(frozen=True)
class EDMStochastic(Solver):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in EDM variables x̃ = x/α, σ̃ = σ/α.

        γ_i = min(S_churn/N, √2 − 1) if σ̃_i ∈ [S_min, S_max] else 0,      σ̂ = σ̃_i·(1 + γ_i)
        x̂ = x̃_i + sqrt(σ̂² − σ̃_i²)·S_noise·z,                               d = (x̂ − D(x̂, σ̂))/σ̂
        x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂)·d;   if σ̃_{i+1} ≠ 0:  d' = (x̃_{i+1} − D(x̃_{i+1}, σ̃_{i+1}))/σ̃_{i+1},
                                                              x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂)·(d + d')/2

    D is the model's data prediction at the time t with σ/α = σ̂. With S_churn = 0 it is EDM's deterministic Heun
    sampler (Algorithm 1): N steps ending at σ = 0 cost 2N − 1 calls, and that is what is counted. σ̂ is capped at
    the grid's first noise level, so churn never evaluates the model before the grid's first time.
    """

    name: ClassVar[str] = "edm_stochastic"
    order: ClassVar[int] = 2
    evaluates_at_step_end: ClassVar[bool] = True
    default_grid: ClassVar[str] = "edm"
    calls_per_step: ClassVar[int] = 2
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.s_churn > 0

    def check(self):
        for field in ("s_churn", "s_min", "s_max", "s_noise"):
            v = getattr(self, field)
            if not (isinstance(v, (int, float)) and v >= 0 and not math.isnan(v)):
                raise ValueError(f"edm_stochastic: {field} must be a number >= 0; got {v!r}")

    def check_grid(self, path, target, ts, coefficients):
        if np.any(coefficients.alpha <= 0):
            raise ValueError(f"{self.name} works in x/α and needs α(t) > 0 on the whole grid on path {path!r}")

    def init(self, ctx, x, t0):
        return ctx.path.sigma_edm(t0)                                # σ̃ at the grid's start: the churn cap

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        path = ctx.path
        sigma_cap = state
        num_steps = index + remaining
        a0, a1 = path.alpha(t0), path.alpha(t1)
        s0, s1 = path.sigma_edm(t0), path.sigma_edm(t1)
        x_tilde = x / a0
        if self.s_churn > 0:
            gamma = jnp.where(
                (s0 >= self.s_min) & (s0 <= self.s_max),
                jnp.minimum(self.s_churn / num_steps, math.sqrt(2.0) - 1.0),
                0.0,
            )
            s_hat = jnp.minimum(s0 * (1.0 + gamma), jnp.maximum(sigma_cap, s0))
            t_hat = jnp.where(s_hat > s0, path.t_from_sigma_edm(s_hat), t0)
            z = jax.random.normal(key, x.shape, x.dtype)
            x_hat = x_tilde + jnp.sqrt(jnp.maximum(s_hat**2 - s0**2, 0.0)) * self.s_noise * z
        else:
            s_hat, t_hat, x_hat = s0, t0, x_tilde

        def edm_slope(x_t_tilde, sigma_tilde, t):
            return (x_t_tilde - ctx.denoise(path.alpha(t) * x_t_tilde, t).data) / sigma_tilde

        d = edm_slope(x_hat, s_hat, t_hat)
        x_euler = x_hat + (s1 - s_hat) * d

        def heun(_):
            return x_hat + (s1 - s_hat) * 0.5 * (d + edm_slope(x_euler, s1, t1))

        x_next = jax.lax.cond(s1 > 0, heun, lambda _: x_euler, None)
        calls = jnp.where(s1 > 0, 2, 1)
        return a1 * x_next, state, calls
