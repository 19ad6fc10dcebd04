"""The solver interface and the one ``lax.scan`` driver every fixed-grid solver runs under.

A solver is a small frozen dataclass (as in diffrax) with a class-level ``name`` and ``order`` and two pure methods:

    init(ctx, x, t0)                                   -> state      (a pytree: multistep history, ...)
    step(ctx, state, x, t0, t1, key, index, remaining) -> (x_next, state, calls)

``index`` counts steps from 0 and ``remaining`` is the number of steps left including this one (1 on the last),
both traced int32. ``calls`` is the number of model evaluations the step actually made (an int or a traced
int32): NFE is summed
from what was done, never declared. ``ctx`` (a ``Context``) is the only way a solver sees the model: it gives the
path's coefficients and the model's prediction converted to what the solver integrates (velocity, or the posterior
means x̂ and ε̂). Solvers never see parameters, guidance or the network's target.

``integrate`` scans ``step`` over a static-length grid, so the compiled program is the same size for 10 or 1000
steps. Adaptive solvers override ``solve`` (a ``lax.while_loop``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from flowgen.paths import targets as targets_lib
from flowgen.paths.schedules import Coefficients, Path


@dataclasses.dataclass(frozen=True)
class Context:
    """What a solver may ask of the model: ``predict(x, t)`` is one model call returning a prediction of ``target``.

    ``t`` is a scalar time (the same for every sample in the batch).
    """

    path: Path
    target: str
    predict: Callable[[jax.Array, jax.Array], jax.Array]

    def coefficients(self, t) -> Coefficients:
        return self.path.coefficients(t)

    def denoise(self, x: jax.Array, t) -> targets_lib.Denoised:
        """Posterior means (x̂, ε̂) from one model call."""
        return targets_lib.to_denoised(self.target, self.predict(x, t), x, self.coefficients(t))

    def velocity(self, x: jax.Array, t) -> jax.Array:
        """Probability-flow velocity u = α̇·x̂ + σ̇·ε̂ from one model call (no conversion for velocity models)."""
        pred = self.predict(x, t)
        if self.target == "velocity":
            return pred
        c = self.coefficients(t)
        return targets_lib.from_denoised("velocity", targets_lib.to_denoised(self.target, pred, x, c), x, c)


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base class. Subclasses set ``name``, ``order`` and implement ``step`` (and ``init`` if they keep state)."""

    name: ClassVar[str] = "solver"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    # True if a step may evaluate the model at its end time t1 (Heun, RK4, corrector steps ...).
    evaluates_at_step_end: ClassVar[bool] = False

    def init(self, ctx: Context, x: jax.Array, t0) -> Any:
        return ()

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        raise NotImplementedError

    def solve(self, ctx: Context, x: jax.Array, grid: jax.Array, key: jax.Array | None):
        """Integrate from grid[0] to grid[-1]; returns (x, info) with info's ``nfe`` and ``num_steps``."""
        return integrate(self, ctx, x, grid, key)

    def check(self) -> None:
        """Validate hyper-parameters (called before any tracing); raise ValueError naming the bad value."""


def integrate(solver: Solver, ctx: Context, x: jax.Array, grid: jax.Array, key: jax.Array | None):
    """``lax.scan`` of ``solver.step`` over the consecutive pairs of ``grid`` (shape (n + 1,))."""
    num_steps = grid.shape[0] - 1
    if key is None:
        key = jax.random.key(0)  # deterministic solvers never draw from it
    state = solver.init(ctx, x, grid[0])

    def body(carry, inputs):
        x, state, nfe = carry
        index, t0, t1 = inputs
        step_key = jax.random.fold_in(key, index)
        x_next, state, calls = solver.step(ctx, state, x, t0, t1, step_key, index, num_steps - index)
        return (x_next.astype(x.dtype), state, nfe + jnp.asarray(calls, jnp.int32)), None

    steps = (jnp.arange(num_steps, dtype=jnp.int32), grid[:-1], grid[1:])
    (x, _, nfe), _ = jax.lax.scan(body, (x, state, jnp.zeros((), jnp.int32)), steps)
    return x, {"nfe": nfe, "num_steps": jnp.asarray(num_steps, jnp.int32)}
