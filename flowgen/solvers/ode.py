"""Explicit Runge–Kutta solvers of the probability-flow ODE ``dx/dt = u(x, t)``, as Butcher tableaux.

One step of size h = t1 − t0 with s stages (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1):

    k_i = u(x + h·Σ_{j<i} a_ij·k_j,  t0 + c_i·h),        x_next = x + h·Σ_i b_i·k_i

Each stage is one model call. Every stage time lies in [t0, t1], so the model is never evaluated outside the grid.

    euler      order 1, 1 stage
    midpoint   order 2, 2 stages (explicit midpoint)
    heun       order 2, 2 stages (explicit trapezoid)
    rk4        order 4, 4 stages (classic Runge–Kutta)

A new explicit method is a subclass with its tableau as data (``name``, ``order``, ``a``, ``b``, ``c`` and
``evaluates_at_step_end = True`` if some c_i = 1) plus an entry in ``flowgen.solvers.SOLVERS``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flowgen.solvers.base import Context, Solver


@dataclasses.dataclass(frozen=True)
class ExplicitRK(Solver):
    """Explicit Runge–Kutta method given by class-level tableau data ``a`` (rows), ``b`` and ``c``."""

    a: ClassVar[tuple[tuple[float, ...], ...]] = ()
    b: ClassVar[tuple[float, ...]] = (1.0,)
    c: ClassVar[tuple[float, ...]] = (0.0,)
    velocity_only: ClassVar[bool] = True

    @property
    def calls_per_step(self) -> int:
        return len(self.c)

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        h = t1 - t0
        stages = []
        for i, ci in enumerate(self.c):
            xi = x
            for aij, kj in zip(self.a[i - 1] if i else (), stages, strict=False):
                if aij:
                    xi = xi + (h * aij) * kj
            stages.append(ctx.velocity(xi, t0 + ci * h))
        x_next = x
        for bi, ki in zip(self.b, stages, strict=True):
            if bi:
                x_next = x_next + (h * bi) * ki
        return x_next, state, len(self.c)


@dataclasses.dataclass(frozen=True)
class Euler(ExplicitRK):
    name: ClassVar[str] = "euler"
    order: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True)
class Midpoint(ExplicitRK):
    name: ClassVar[str] = "midpoint"
    order: ClassVar[int] = 2
    a = ((0.5,),)
    b = (0.0, 1.0)
    c = (0.0, 0.5)


@dataclasses.dataclass(frozen=True)
class Heun(ExplicitRK):
    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    evaluates_at_step_end: ClassVar[bool] = True
    a = ((1.0,),)
    b = (0.5, 0.5)
    c = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RK4(ExplicitRK):
    name: ClassVar[str] = "rk4"
    order: ClassVar[int] = 4
    evaluates_at_step_end: ClassVar[bool] = True
    a = ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    c = (0.0, 0.5, 0.5, 1.0)
