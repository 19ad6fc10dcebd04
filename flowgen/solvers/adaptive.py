"""Adaptive Dormand–Prince 5(4) for the probability-flow ODE, in one ``lax.while_loop``.

Dormand & Prince (1980); step-size control as in Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4: the error
estimate ``err = ‖(x₅ − x₄)/(atol + rtol·max(|x|, |x₅|))‖_RMS`` (over all samples and dimensions) accepts a step when
err ≤ 1 and sets ``h ← h·clip(0.9·err^(−1/5), 0.2, 10)``. The last stage is evaluated at the step's end with the
accepted solution (FSAL), so an accepted step costs 6 calls, a rejected one 6 as well, plus 1 at the start and 1
for the initial-step heuristic (Hairer's algorithm, simplified). Steps are clipped to end exactly at ``t_end``: no
stage time is ever outside [t_start, t_end] (a model is never evaluated outside its training interval).

NFE is counted per batch: one call evaluates every sample, and all samples share one step size.

Failure is never silent: if ``max_steps`` runs out before ``t_end`` every row comes back as NaN (``info["t_final"]``
says where it stopped), and a row whose values become non-finite is left out of the error norm (so the others
proceed exactly as without it) and comes back as NaN. An eager ``fg.sample`` call raises instead (``check_result``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.solvers.base import Context, Solver

# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@dataclasses.dataclass(frozen=True)
class Dopri5(Solver):
    """Adaptive Dormand–Prince 5(4); ``rtol``/``atol`` tolerances, at most ``max_steps`` attempted steps.

    Integrates from the grid's first to its last time; interior grid times are ignored.
    ``info`` adds ``num_accepted``, ``num_rejected``, ``t_final`` (the time reached) and ``num_failed_rows``. If
    ``max_steps`` runs out before ``t_end``, every row is NaN (an eager ``fg.sample`` raises, naming ``t_final``).
    """

    name: ClassVar[str] = "dopri5"
    order: ClassVar[int] = 5
    evaluates_at_step_end: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    velocity_only: ClassVar[bool] = True
    calls_per_step: ClassVar[int] = 6
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096

    def check(self):
        for field in ("rtol", "atol"):
            v = getattr(self, field)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"dopri5: {field} must be a finite number > 0; got {v!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"dopri5: max_steps must be an integer >= 1; got {self.max_steps!r}")

    def with_tolerance(self, tol: float) -> Dopri5:
        return dataclasses.replace(self, rtol=tol, atol=tol)

    def check_result(self, x, info, grid) -> None:
        t_final, t_end = float(info["t_final"]), float(grid[-1])
        if t_final < t_end:
            raise RuntimeError(
                f"dopri5 stopped at t={t_final:.6g} before the end t={t_end:.6g}: max_steps={self.max_steps} attempted "
                f"steps ({int(info['num_accepted'])} accepted, {int(info['num_rejected'])} rejected) ran out; raise "
                f"max_steps or loosen rtol/atol (under jax.jit every row would be NaN)"
            )

    def _error_norm(self, x, x5, x4, rows_ok):
        scale = self.atol + self.rtol * jnp.maximum(jnp.abs(x), jnp.abs(x5))
        return _rms((x5 - x4) / scale, rows_ok)

    def solve(self, ctx: Context, x: jax.Array, grid: jax.Array, key):
        t_start, t_end = grid[0], grid[-1]
        dtype = grid.dtype                          # times stay in the grid's dtype whatever the state's
        span = t_end - t_start

        # Initial step (Hairer's heuristic): h0 = 0.01·‖x‖/‖f‖, then one Euler probe to bound the 2nd derivative.
        f0 = ctx.velocity(x, t_start)
        rows_ok = _rows_finite(x) & _rows_finite(f0)
        scale = self.atol + self.rtol * jnp.abs(x)
        d0 = _rms(x / scale, rows_ok)
        d1 = _rms(f0 / scale, rows_ok)
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        h0 = jnp.minimum(h0, span)
        f1 = ctx.velocity(x + h0 * f0, t_start + h0)
        d2 = _rms((f1 - f0) / scale, rows_ok) / h0
        h1 = jnp.where(jnp.maximum(d1, d2) <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / jnp.maximum(d1, d2)) ** (1.0 / 5.0))
        h = jnp.minimum(jnp.minimum(100 * h0, h1), span).astype(dtype)

        def cond(carry):
            t, _, _, _, n_acc, n_rej, _, rows_ok = carry
            return (t < t_end) & (n_acc + n_rej < self.max_steps) & jnp.any(rows_ok)

        def body(carry):
            t, x, f, h, n_acc, n_rej, nfe, rows_ok = carry
            h = jnp.minimum(h, t_end - t)
            last = h >= t_end - t
            ks = [f]
            for i in range(1, 7):
                xi = x
                for aij, kj in zip(_A[i], ks, strict=True):
                    if aij:
                        xi = xi + (h * aij) * kj
                ti = jnp.where(last & (_C[i] == 1.0), t_end, t + _C[i] * h)
                ks.append(ctx.velocity(xi, ti))
            x5 = x + h * sum(b * k for b, k in zip(_B5, ks, strict=True) if b)
            x4 = x + h * sum(b * k for b, k in zip(_B4, ks, strict=True) if b)
            rows_ok = rows_ok & _rows_finite(x5 - x4)
            err = self._error_norm(x, x5, x4, rows_ok)
            accept = err <= 1.0
            factor = jnp.clip(0.9 * jnp.where(err > 0, err, 1e-10) ** (-1.0 / 5.0), 0.2, 10.0)
            t_new = jnp.where(accept, jnp.where(last, t_end, t + h), t)
            return (
                t_new,
                jnp.where(accept, x5, x).astype(x.dtype),
                jnp.where(accept, ks[-1], f).astype(f.dtype),        # FSAL: stage 7 is f at the accepted point
                (h * factor).astype(dtype),
                n_acc + accept.astype(jnp.int32),
                n_rej + (~accept).astype(jnp.int32),
                nfe + 6,
                rows_ok,
            )

        zero = jnp.zeros((), jnp.int32)
        init = (t_start.astype(dtype), x, f0, h, zero, zero, jnp.asarray(2, jnp.int32), rows_ok)
        t, x, _, _, n_acc, n_rej, nfe, rows_ok = jax.lax.while_loop(cond, body, init)
        t = jnp.where(jnp.any(rows_ok), t, t_start)     # no row left: nothing was integrated
        done = t >= t_end
        x = jnp.where(_per_row(rows_ok & done, x), x, jnp.nan).astype(x.dtype)
        return x, {"nfe": nfe, "num_steps": n_acc, "num_accepted": n_acc, "num_rejected": n_rej, "t_final": t,
                   "num_failed_rows": jnp.sum(~rows_ok).astype(jnp.int32)}


def _rows_finite(v: jax.Array) -> jax.Array:
    """(batch,) True where every element of the row is finite."""
    return jnp.all(jnp.isfinite(jnp.reshape(v, (v.shape[0], -1))), axis=1)


def _rms(v: jax.Array, rows_ok: jax.Array) -> jax.Array:
    """Root mean square over the elements of the rows in ``rows_ok`` (other rows may hold NaN or inf)."""
    sq = jnp.where(_per_row(rows_ok, v), v.astype(jnp.result_type(v, jnp.float32)) ** 2, 0.0)
    return jnp.sqrt(jnp.sum(sq) / jnp.maximum(jnp.sum(rows_ok) * (v.size // v.shape[0]), 1))


def _per_row(mask: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))
