"""UniPC (Zhao et al. 2023): unified predictor–corrector multistep solver, data prediction, on any affine path.

Step from s = t_i to t = t_{i+1}, h = λ_t − λ_s, with the data predictions m_s, m_{i−1}, … at earlier times:

    r_k = (λ_{i−k} − λ_s)/h,   D_k = (m_{i−k} − m_s)/r_k,   φ₁ = e^{−h} − 1,
    B(h) = −h ("bh1") or e^{−h} − 1 ("bh2"),   R_{jk} = r_k^{j−1},   b_j = j!·ψ_j(−h)/B(h)
    with ψ₁(z) = (e^z − 1)/z − 1,  ψ_{j+1}(z) = ψ_j(z)/z − 1/(j+1)!   (ψ_j(z) = z·φ_{j+1}(z))
    UniP (predictor):  x_t = (σ_t/σ_s)·x_s − α_t·φ₁·m_s − α_t·B(h)·Σ_k ρᵖ_k·D_k,      R[:p−1, :p−1]·ρᵖ = b[:p−1]
    UniC (corrector):  x_t ← (σ_t/σ_s)·x_s − α_t·φ₁·m_s − α_t·B(h)·(Σ_k ρᶜ_k·D_k + ρᶜ_p·(m_t − m_s)),  R·ρᶜ = b

where m_t is the data prediction at the predicted x_t (r = 1 for it). That evaluation is the next step's m_s, so the
corrector costs no extra call; the last step skips it, as in the authors' code: NFE = number of steps. With
p = ``solver_order`` the corrected solution is of order p + 1 in the step size (Zhao et al., Theorem 3.3);
ρᵖ = ½ for p = 2 and ρᶜ = ½ for p = 1, as in the authors' code. The defaults (``variant="bh1"``, ``solver_order=2``,
``lower_order_final=True``) are theirs; the order of each step follows ``diffusion.multistep_order``: warm-up
with orders 1, 2, …, and with ``lower_order_final`` order ≤ steps left at every step count (so the last step is a
first-order, uncorrected step). A step into σ = 0 (h = ∞) is first order. Default grid: ``"logsnr_or_uniform"``
(λ-uniform, or time-uniform on paths whose σ reaches 0; see ``diffusion.py``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.solvers.base import Context, Solver
from flowgen.solvers.diffusion import multistep_order

VARIANTS = ("bh1", "bh2")


def _uni_coefficients(h, rks, order: int, variant: str):
    """ρᵖ (order − 1 values), ρᶜ (order values) and B(h) for UniPC of the given static order; rks: (order − 1,)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    r_all = jnp.concatenate([rks, jnp.ones((1,), h.dtype)])
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(r_all ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    big_r, b = jnp.stack(rows), jnp.stack(b)
    if order == 1:
        rho_p = jnp.zeros((0,), h.dtype)
        rho_c = jnp.full((1,), 0.5, h.dtype)
    else:
        rho_p = jnp.full((1,), 0.5, h.dtype) if order == 2 else jnp.linalg.solve(big_r[:-1, :-1], b[:-1])
        rho_c = jnp.linalg.solve(big_r, b)
    return rho_p, rho_c, b_h


@dataclasses.dataclass(frozen=True)
class UniPC(Solver):
    """UniPC multistep predictor–corrector with data prediction (see the module docstring); ``variant`` ∈ VARIANTS."""

    name: ClassVar[str] = "unipc"
    default_grid: ClassVar[str] = "logsnr_or_uniform"
    solver_order: int = 2
    lower_order_final: bool = True
    variant: str = "bh1"

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.solver_order + 1

    def check(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"unipc: solver_order must be 1, 2 or 3; got {self.solver_order!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unipc: variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"unipc: lower_order_final must be True or False; got {self.lower_order_final!r}")

    def init(self, ctx, x, t0):
        p = self.solver_order
        hist = jnp.zeros((max(p - 1, 1),) + x.shape, x.dtype)       # m_{i−1}, m_{i−2}
        lam_hist = jnp.zeros((max(p - 1, 1),), jnp.asarray(t0).dtype)  # λ_{i−1}, λ_{i−2} (time dtype)
        return (jnp.zeros_like(x), hist, lam_hist)                   # m_s (valid from step 1 on), history

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        m_prev, hist, lam_hist = state
        path = ctx.path
        # The model at (x_s, s): evaluated here on the first step, reused from the last corrector otherwise.
        m_s = jax.lax.cond(index == 0, lambda: ctx.denoise(x, t0).data, lambda: m_prev)
        a1, s0, s1 = path.alpha(t1), path.sigma(t0), path.sigma(t1)
        lam_s, lam_t = path.log_snr(t0), path.log_snr(t1)
        h = lam_t - lam_s
        finite = jnp.isfinite(h)
        safe_h = jnp.where(finite, h, 1.0)
        p = self.solver_order
        order = multistep_order(p, index, remaining, self.lower_order_final)
        n_finite_hist = jnp.sum(jnp.cumprod(jnp.isfinite(lam_hist)).astype(jnp.int32))
        order = jnp.minimum(order, 1 + n_finite_hist)
        order = jnp.where(finite, order, 1)

        safe_lam_hist = jnp.where(jnp.isfinite(lam_hist), lam_hist, lam_s - safe_h)
        rks = (safe_lam_hist - lam_s) / safe_h                      # (p − 1,), negative
        d1s = (hist - m_s[None]) / jnp.reshape(rks, (-1,) + (1,) * x.ndim)
        x_base = (s1 / s0) * x - a1 * jnp.expm1(-h) * m_s           # first-order (DDIM) part

        def predict(k):
            if k == 1:
                return x_base
            rho_p, _, b_h = _uni_coefficients(safe_h, rks[: k - 1], k, self.variant)
            return x_base - a1 * b_h * jnp.tensordot(rho_p, d1s[: k - 1], axes=1)

        def correct(k, m_t):
            _, rho_c, b_h = _uni_coefficients(safe_h, rks[: k - 1], k, self.variant)
            corr = rho_c[-1] * (m_t - m_s)
            if k > 1:
                corr = corr + jnp.tensordot(rho_c[:-1], d1s[: k - 1], axes=1)
            return x_base - a1 * b_h * corr

        def select(values):
            out = values[0]
            for k, v in enumerate(values[1:], start=2):
                out = jnp.where(order == k, v, out)
            return out

        x_pred = select([predict(k) for k in range(1, p + 1)])

        def with_corrector(_):
            m_t = ctx.denoise(x_pred, t1).data
            return select([correct(k, m_t) for k in range(1, p + 1)]), m_t

        x_next, m_t = jax.lax.cond(remaining > 1, with_corrector, lambda _: (x_pred, m_s), None)
        new_hist = jnp.concatenate([m_s[None], hist[:-1]]) if p > 1 else hist
        new_lam = jnp.concatenate([lam_s[None].astype(lam_hist.dtype), lam_hist[:-1]]) if p > 1 else lam_hist
        calls = (index == 0).astype(jnp.int32) + (remaining > 1).astype(jnp.int32)
        return x_next, (m_t, new_hist, new_lam), calls
