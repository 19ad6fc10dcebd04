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

Everything the sampler and the sweeps need to know about a solver lives on its class, never in a table of names
elsewhere: ``default_grid``, ``adaptive`` (and ``with_tolerance``), ``calls_per_step``, ``min_steps``,
``stochastic``, ``evaluates_at_step_end``, ``check_grid`` (what a path/target must satisfy on the grid) and
``check_result`` (what an eager call must refuse to return). A new solver is one class plus its entry in
``flowgen.solvers.SOLVERS`` (see ``tests/test_solver_extension.py`` for a worked example).

Precision: the state x keeps the dtype of the noise (bfloat16, float16, float32, ...); times and path coefficients
stay in the grid's dtype (float32, or float64 under x64), and ``Context`` returns predictions in the state dtype.
A step computes in the promoted dtype and ``integrate`` stores the result back in the state dtype.
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

    ``t`` is a scalar time (the same for every sample in the batch). With ``dtype`` set (the state's dtype),
    ``denoise`` and ``velocity`` return arrays of that dtype; the conversion itself runs in the promoted dtype
    (the coefficients' float32/float64), so a low-precision state never rounds a time or a coefficient.
    """

    path: Path
    target: str
    predict: Callable[[jax.Array, jax.Array], jax.Array]
    dtype: Any = None

    def _cast(self, v):
        return v if self.dtype is None else v.astype(self.dtype)

    def coefficients(self, t) -> Coefficients:
        return self.path.coefficients(t)

    def denoise(self, x: jax.Array, t) -> targets_lib.Denoised:
        """Posterior means (x̂, ε̂) from one model call."""
        d = targets_lib.to_denoised(self.target, self.predict(x, t), x, self.coefficients(t))
        return type(d)(*(self._cast(v) for v in d))

    def velocity(self, x: jax.Array, t) -> jax.Array:
        """Probability-flow velocity u = α̇·x̂ + σ̇·ε̂ from one model call (no conversion for velocity models)."""
        return self._cast(targets_lib.get_target(self.target).velocity(self.predict(x, t), x, self.coefficients(t)))


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base class. Subclasses set ``name``, ``order`` and implement ``step`` (and ``init`` if they keep state).

    Class-level knowledge (override where the default is wrong for a solver):
      default_grid            grid kind used when only ``num_steps`` is given (one of ``grids.GRIDS``: "uniform",
                              "logsnr", "edm", or "logsnr_or_uniform", which is logsnr unless σ(t_end) = 0)
      adaptive                True if the solver chooses its own steps (needs no ``num_steps``, ignores interior
                              grid times, and is swept over tolerances with ``with_tolerance``)
      min_steps               the fewest steps the solver accepts
      stochastic              True if it draws noise (``fg.sample`` then needs a key)
      evaluates_at_step_end   True if a step may call the model at its end time t1 (Heun, RK4, correctors ...)
      velocity_only           True if a step asks the Context only for velocities: a general ODE solver, usable on
                              any vector field (e.g. the likelihood's augmented ODE), not only on a path
      calls_per_step          model calls one step is designed to make (only to choose step counts for sweeps;
                              NFE is always measured)
    """

    name: ClassVar[str] = "solver"
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    evaluates_at_step_end: ClassVar[bool] = False
    default_grid: ClassVar[str] = "uniform"
    adaptive: ClassVar[bool] = False
    min_steps: ClassVar[int] = 1
    velocity_only: ClassVar[bool] = False

    @property
    def calls_per_step(self) -> int:
        return 1

    def init(self, ctx: Context, x: jax.Array, t0) -> Any:
        return ()

    def step(self, ctx: Context, state, x, t0, t1, key, index, remaining):
        raise NotImplementedError

    def solve(self, ctx: Context, x: jax.Array, grid: jax.Array, key: jax.Array | None):
        """Integrate from grid[0] to grid[-1]; returns (x, info) with info's ``nfe`` and ``num_steps``."""
        return integrate(self, ctx, x, grid, key)

    def check(self) -> None:
        """Validate hyper-parameters (called before any tracing); raise ValueError naming the bad value."""

    def check_grid(self, path: Path, target: str, ts, coefficients: Coefficients) -> None:
        """Refuse (ValueError) a host grid ``ts`` (np.float64, with the path's coefficients there) on which this
        solver would divide by zero or use an infinite coefficient. The checks common to every solver (finite
        coefficients where evaluated, σ > 0 before the end, α > 0 for noise/score targets) are done by the sampler."""

    def check_result(self, x, info, grid) -> None:
        """Called on concrete (eager) results only: raise if the result must not be mistaken for samples."""

    def with_tolerance(self, tol: float) -> Solver:
        """For adaptive solvers: the same solver with its accuracy set by one tolerance (used by sweeps)."""
        raise ValueError(f"solver {self.name!r} is not adaptive: sweep it over num_steps, not tolerances")


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
        new_x, new_state, calls = solver.step(ctx, state, x, t0, t1, step_key, index, num_steps - index)
        # Back to the carry's dtypes: a bfloat16 state computed in float32 is stored in bfloat16 again.
        new_state = jax.tree.map(lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), new_state, state)
        return (new_x.astype(x.dtype), new_state, nfe + jnp.asarray(calls, jnp.int32)), None

    steps = (jnp.arange(num_steps, dtype=jnp.int32), grid[:-1], grid[1:])
    (x, _, nfe), _ = jax.lax.scan(body, (x, state, jnp.zeros((), jnp.int32)), steps)
    return x, {"nfe": nfe, "num_steps": jnp.asarray(num_steps, jnp.int32)}
