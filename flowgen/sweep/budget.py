"""From an NFE budget to a step count: the one place the sweep needs to know what a solver's step costs.

``steps_for_budget`` picks the most steps whose *measured* NFE does not exceed the budget. The cost of the fewest
and of one more step is measured by dry runs of the real sampler on a zero model of shape (1, 1) (one small
compilation each, cached), so Heun into σ = 0 (2n − 1 calls), a start-up call or a corrector are counted as they
really run on this path and grid, not as declared; the cost is taken as affine in n from there, and the sweep
checks every cell's measured NFE against its budget (stepping down if a solver's cost is not affine). A solver
is never asked for fewer than its ``min_steps``. Adaptive solvers (``adaptive = True``) have no step budget and
are refused by the sweep's config check.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import flowgen as fg
from flowgen.solvers.base import Solver


def is_adaptive(solver: Solver) -> bool:
    return bool(solver.adaptive)


def min_steps(solver: Solver) -> int:
    return int(solver.min_steps)


@functools.lru_cache(maxsize=4096)
def measured_nfe(solver: Solver, path, target: str, num_steps: int, grid: str | None, t_start, t_end) -> int:
    """Model calls per sample that ``fg.sample`` makes with ``num_steps`` steps (dry run on a zero model)."""

    def zero(x, t):
        return jnp.zeros_like(x)

    _, info = fg.sample(zero, path, target=target, solver=solver, grid=grid, num_steps=num_steps, t_start=t_start,
                        t_end=t_end, noise=jnp.ones((1, 1)), key=jax.random.key(0))
    return int(info["nfe"])


def steps_for_budget(solver: Solver, path, target: str, budget: int, grid=None, t_start=None, t_end=None):
    """The largest step count whose measured NFE is <= ``budget``, or None if even ``min_steps`` costs more."""
    lo = min_steps(solver)
    cost = functools.partial(measured_nfe, solver, path, target, grid=grid, t_start=t_start, t_end=t_end)
    if cost(num_steps=lo) > budget:
        return None
    per_step = max(cost(num_steps=lo + 1) - cost(num_steps=lo), 1)       # model calls per added step
    return lo + (budget - cost(num_steps=lo)) // per_step


def minimum_nfe(solver: Solver, path, target: str, grid=None, t_start=None, t_end=None) -> int:
    return measured_nfe(solver, path, target, min_steps(solver), grid, t_start, t_end)


def grid_name(solver: Solver, grid: str | None) -> str:
    """The grid kind a solver runs on when the sweep gives ``grid`` (None: the solver's default)."""
    return solver.default_grid if grid is None else grid
