"""Exponential-integrator solvers (DDIM, DPM-Solver++) on any affine path, from the data prediction x̂.

With λ = log(α/σ) the probability-flow ODE is linear in x up to the data prediction (Lu et al. 2022b, eq. 9):

    x_t / σ_t = x_s / σ_s + ∫_{λ_s}^{λ_t} e^λ · x̂(x_λ, λ) dλ .

Freezing x̂ over the step gives DDIM / DPM-Solver++(1) (Song et al. 2021a; h = λ_t − λ_s):

    x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·x̂_s  =  α_t·x̂_s + σ_t·ε̂_s .

Multistep variants extrapolate x̂ from earlier steps (no extra model calls). Nothing here assumes a VP path:
only α, σ and λ enter. Where the step ends at σ_t = 0 (h = ∞) every formula falls back to x_t = α_t·x̂_s.

Order of each step of a multistep solver of order p (DPM-Solver++ here, UniPC in unipc.py), as in the authors'
released code (``multistep_order``): step i (from 0) of N uses order min(i + 1, p) while the history fills
(orders 1, 2, …). ``lower_order_final`` (default True) also caps it at N − i, the number of steps left, so the
last steps are of orders …, 2, 1: DPM-Solver++ does this only when N < 10 (its code; its docstring says 15),
UniPC at every N. A step into σ = 0, or one whose history holds an infinite step (from α = 0), lowers the order
further so that no divided difference is infinite.

Default grid of the multistep solvers here and in unipc.py: ``"logsnr_or_uniform"`` (``grids.py``). Uniform in λ,
the variable they integrate in, where λ is finite at both ends (VP, VE: DPM-Solver's "logSNR" spacing); uniform in t
where σ reaches 0 (linear, trig), whose last λ-interval is infinite: a λ-spaced grid there has to clip it and puts
its few finite steps where the sample is already data (2 steps on the linear path: t = 0.0123, 0.998, 1).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.solvers.base import Context, Solver

SECOND_ORDER_FORMS = ("midpoint", "taylor")   # dpmpp_3m's order-2 steps: DPM-Solver++(2M)'s, or k-diffusion's
DPM_SOLVER_LOWER_ORDER_BELOW = 10   # DPM-Solver++ lowers the final orders only for runs shorter than this


def multistep_order(max_order: int, index, remaining, lower_order_final: bool, below: int | None = None):
    """Order of step ``index`` (``remaining`` steps left including it): min(index + 1, max_order), and with
    ``lower_order_final`` at most ``remaining`` (only if the run has fewer than ``below`` steps, when given)."""
    order = jnp.minimum(index + 1, max_order)
    if lower_order_final:
        capped = jnp.minimum(order, remaining)
        order = capped if below is None else jnp.where(index + remaining < below, capped, order)
    return order


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

    The first step is first order, and so is the last with ``lower_order_final`` when there are fewer than
    10 steps (see the module docstring), and any step into σ = 0.
    """

    name: ClassVar[str] = "dpmpp_2m"
    default_grid: ClassVar[str] = "logsnr_or_uniform"
    order: ClassVar[int] = 2
    lower_order_final: bool = True

    def check(self):
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"dpmpp_2m: lower_order_final must be True or False; got {self.lower_order_final!r}")

    def init(self, ctx, x, t0):
        return (jnp.zeros_like(x), jnp.ones((), jnp.asarray(t0).dtype))   # previous x̂, previous h (time dtype)

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        prev_data, prev_h = state
        data = ctx.denoise(x, t0).data
        a1, sigma_ratio, exp_neg_h, h = _step_terms(ctx, t0, t1)
        phi_1 = exp_neg_h - 1.0
        order = multistep_order(2, index, remaining, self.lower_order_final, DPM_SOLVER_LOWER_ORDER_BELOW)
        second = (order == 2) & jnp.isfinite(h)
        half_inv_r = jnp.where(second, 0.5 * h / prev_h, 0.0)      # 1/(2r); 0 when the previous h was infinite
        d = data + half_inv_r * (data - prev_data)
        x_next = sigma_ratio * x - a1 * phi_1 * jnp.where(second, d, data)
        return x_next, (data, h.astype(x.dtype)), 1


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3M(Solver):
    """DPM-Solver++(3M): multistep on three data predictions (Lu et al. 2022b, §4.2 and their released code).

    With backward differences of x̂ in λ over the last three steps (r₀ = h_{i−1}/h, r₁ = h_{i−2}/h),

        D1₀ = (x̂_i − x̂_{i−1})/r₀,   D1₁ = (x̂_{i−1} − x̂_{i−2})/r₁,
        D1 = D1₀ + r₀/(r₀ + r₁)·(D1₀ − D1₁) ≈ h·x̂',       D2 = (D1₀ − D1₁)/(r₀ + r₁) ≈ ½h²·x̂'',
        φ₁ = e^{−h} − 1,   φ₂ = φ₁/h + 1,   φ₃ = φ₂/h − ½,
        x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·φ₁·x̂_i + α_{i+1}·φ₂·D1 − c·α_{i+1}·φ₃·D2.

    c = 1 is the published update (dpm-solver, diffusers, k-diffusion's ``sample_dpmpp_3m_sde`` at η = 0). Since
    −φ₃ ≈ h/6, the exact ∫e^λ·½(λ−λ_i)²x̂'' dλ needs c = 2 (``taylor_exact_d2=True``): third order, where c = 1
    leaves an O(h³) local term and is formally second order (``order``). Yet the published form is the default: on
    the 8-Gaussian mixture, against the exact ODE solution, it measured the more accurate at the step counts people
    use (8–64 steps on EDM's σ grid), while the Taylor form, of the higher fitted order, wins on VP-linear's logSNR
    grid only from about 64 steps (the numbers: benchmarks/README.md, "DPM-Solver++(3M)").

    Steps 1 and 2 are of orders 1 and 2; ``lower_order_final`` (module docstring) lowers the last two steps of runs
    shorter than 10 steps to orders 2 and 1; a step into σ = 0 is first order (x = α·x̂).

    ``second_order`` is the update of the order-2 steps (the warm-up step, and the lowered second-to-last step):
    ``"midpoint"`` (default) is DPM-Solver++(2M)'s, x̂ extrapolated to the λ-midpoint, −α_{i+1}·φ₁·½·D1₀, as in
    DPM-Solver's released 3M code; ``"taylor"`` adds the exact integral of the linear term, +α_{i+1}·φ₂·D1₀ (the two
    agree to O(h³) per step). k-diffusion's ``sample_dpmpp_3m_sde(eta=0)`` is ``second_order="taylor",
    lower_order_final=False``: its order-2 warm-up step is the only one that differs from the published rule (its
    step into σ = 0 is the same x = α·x̂); with both options flowgen equals it to 1e-13 on Karras grids into σ = 0,
    where ``lower_order_final=False`` alone leaves 9.6e-5 at 12 steps, 2.1e-5 at 16 and 1.4e-6 at 32.

    Why the defaults stay DPM-Solver's rule: on grids that end at σ = 0 it is the more accurate at most step
    counts. rms error against the exact solution on EDM's σ grid (linear path, 8-Gaussian mixture, 32 samples),
    default / k-diffusion's rule: 3 steps 1.13 / 2.29, 4: 0.50 / 2.42, 5: 3.08 / 4.16, 6: 2.88 / 3.24, 7: 1.40 /
    1.08, 8: 1.00 / 0.55, 9: 0.62 / 0.64; from 10 steps the rules agree to 4 digits (0.3972 at 12, 0.08312 at 16).
    On the default time-uniform grid into σ = 0 (256 samples) the default is the more accurate from 5 to 9 steps
    (0.118 / 0.184 at 5, 0.106 / 0.121 at 8), and ``"taylor"`` is 1.5–2 % more accurate from 10 steps on (0.0256
    vs 0.0261 at 16) but up to 3× less accurate on EDM's grid below 10 steps (1.54 vs 0.50 at 4).
    """

    name: ClassVar[str] = "dpmpp_3m"
    default_grid: ClassVar[str] = "logsnr_or_uniform"
    lower_order_final: bool = True
    taylor_exact_d2: bool = False
    second_order: str = "midpoint"

    @property
    def order(self) -> int:  # type: ignore[override]
        return 3 if self.taylor_exact_d2 else 2

    def check(self):
        for field in ("lower_order_final", "taylor_exact_d2"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"dpmpp_3m: {field} must be True or False; got {getattr(self, field)!r}")
        if self.second_order not in SECOND_ORDER_FORMS:
            raise ValueError(f"dpmpp_3m: second_order must be one of {', '.join(SECOND_ORDER_FORMS)}; "
                             f"got {self.second_order!r}")

    def init(self, ctx, x, t0):
        one = jnp.ones((), jnp.asarray(t0).dtype)                    # step sizes keep the grid's dtype
        return (jnp.zeros_like(x), jnp.zeros_like(x), one, one)    # x̂_{i−1}, x̂_{i−2}, h_{i−1}, h_{i−2}

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        m1, m2, h1, h2 = state
        m0 = ctx.denoise(x, t0).data
        a1, sigma_ratio, exp_neg_h, h = _step_terms(ctx, t0, t1)
        order = multistep_order(3, index, remaining, self.lower_order_final, DPM_SOLVER_LOWER_ORDER_BELOW)
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
        d2_weight = 2.0 if self.taylor_exact_d2 else 1.0
        first = sigma_ratio * x - a1 * phi_1 * m0
        if self.second_order == "midpoint":
            second = first - a1 * phi_1 * 0.5 * d1_0               # DPM-Solver++(2M): x̂ at the λ-midpoint
        else:
            second = first + a1 * phi_2 * d1_0                     # exact integral of the linear term
        third = first + a1 * phi_2 * d1_3 - d2_weight * a1 * phi_3 * d2_3
        x_next = jnp.where(order == 1, first, jnp.where(order == 2, second, third))
        h = h.astype(x.dtype)
        return x_next, (m0, m1, h, h1), 1
