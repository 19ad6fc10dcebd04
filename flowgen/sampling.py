"""``sample``: model + path + target + solver + grid (+ guidance) → samples and the NFE actually spent.

    x, info = sample(model, path, target="noise", solver="dpmpp_2m", num_steps=20, key=key, shape=(512, 2))

Sampling starts from the prior at the grid's first time, ``x = σ(t₀)·noise`` (the α(t₀)·x_data term is dropped, as
EDM and k-diffusion do), and ends at the grid's last time. Every argument is validated on the host before anything
is traced; the sampler itself is one jitted program (``lax.scan`` over the grid, so its size does not grow with
NFE), and ``sample`` may itself be called under ``jax.jit`` with the same result.

Model calling convention (t is a (batch,) array):

    model(x_t, t)                  model(x_t, t, cond)            with cond=...
    model(params, x_t, t)          model(params, x_t, t, cond)    with params=... (passed as a traced argument)

Classifier-free guidance (Ho & Salimans 2022) with ``guidance=w, cond=c, null_cond=∅``: the conditional and the
unconditional passes run as one batch of 2B, and ``guided = uncond + w·(cond − uncond)`` is applied to every
output channel. So w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 guides; and
``guidance=None`` (the default) means no guidance: the model is called once per step, with ``cond`` if given. The
weight is a traced argument: ``jax.jit``/``jax.vmap`` over w sweep guidance weights in one compiled program.
``info["nfe"]`` counts model calls per sample; ``info["forward_passes"]`` counts network forward passes per sample
(2 per guided call).

Precision: the state keeps the dtype of the noise (e.g. bfloat16); the grid, the times the model sees and every
path coefficient stay float32 (float64 under x64), so a low-precision state never rounds a time (bfloat16 would
turn t = 0.999 into 1.0, where a VP path's σ is 0). The model gets x_t in the state's dtype and t in the time dtype,
and its prediction is cast to the state's dtype.

Everything solver-specific (default grid, adaptive or not, what a path/target must satisfy, how to refuse a failed
eager result) is asked of the solver; nothing here branches on a solver's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowgen import paths as paths_lib
from flowgen import solvers as solvers_lib
from flowgen.paths.schedules import Coefficients, Path, host_eval
from flowgen.paths.targets import check_target, get_target
from flowgen.solvers import grids as grids_lib
from flowgen.solvers.base import Context, Solver


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def time_dtype():
    """The dtype of grids, times and path coefficients: float32, or float64 under x64 (never the state's)."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _path_coefficients(path: Path, t) -> jax.Array:
    return jnp.stack(path.coefficients(t))


def _resolve_grid(path: Path, solver: Solver, grid, num_steps, t_start, t_end, rho):
    """Host-side grid (np.float64) or a traced array passed through; every error raised here, before tracing."""
    if grid is None:
        grid = solver.default_grid
    if isinstance(grid, str):
        if num_steps is None:
            if not solver.adaptive:
                raise ValueError(f"grid={grid!r} needs num_steps (an integer >= 1), or pass an array of times")
            num_steps = 1
        return grids_lib.make_grid(grid, path, num_steps, t_start, t_end, rho)
    if t_start is not None or t_end is not None:
        raise ValueError("t_start/t_end apply to named grids only; an explicit grid already fixes its ends")
    if not _is_concrete(grid):
        if jnp.ndim(grid) != 1 or grid.shape[0] < 2:
            raise ValueError(f"grid must be a 1-D array of at least 2 times; got shape {jnp.shape(grid)}")
        return grid
    ts = grids_lib.check_grid(grid)
    if num_steps is not None and num_steps != ts.shape[0] - 1:
        raise ValueError(f"num_steps={num_steps} disagrees with the grid's {ts.shape[0] - 1} steps; pass one of them")
    return ts


def check_grid_on_path(path: Path, target: str, solver: Solver, ts: np.ndarray) -> None:
    """Refuse grids on which this path/target/solver would divide by zero or evaluate infinite coefficients."""
    coefficients = Coefficients(*host_eval(functools.partial(_path_coefficients, path), ts))
    coeff = coefficients._asdict()
    evaluated = np.zeros(ts.shape, bool)
    evaluated[:-1] = True
    evaluated[-1] = solver.evaluates_at_step_end
    where = f"on path {path!r} with solver {solver.name!r}"
    for name, v in coeff.items():
        bad = evaluated & ~np.isfinite(v)
        if bad.any():
            raise ValueError(
                f"{name} is not finite at t={ts[bad][0]:.6g} {where}; keep the grid inside the path's interval "
                f"[t_min, t_max] = [{path.t_min}, {path.t_max}]"
            )
    if np.any(coeff["sigma"][:-1] <= 0):
        raise ValueError(f"σ(t) = 0 before the grid's last time (t={ts[:-1][coeff['sigma'][:-1] <= 0][0]}) {where}")
    spec = get_target(target)
    if spec.needs_alpha:
        bad = evaluated & (coeff["alpha"] <= 0)
        if bad.any():
            raise ValueError(
                f"a {target!r} prediction does not determine x_data where α(t) = 0 (t={ts[bad][0]:.6g}) {where}; "
                f"start the grid later, e.g. t_start=1e-3"
            )
    if spec.infinite_where_sigma_is_zero and np.any(evaluated & (coeff["sigma"] <= 0)):
        raise ValueError(f"the {target} is infinite where σ(t) = 0 (t={ts[-1]}) {where}; end the grid before it")
    solver.check_grid(path, target, ts, coefficients)


@functools.lru_cache(maxsize=256)
def _named_grid(path, target, solver, grid, num_steps, t_start, t_end, rho) -> np.ndarray:
    """A named grid, built and checked once per (path, target, solver, kind, steps, ends, ρ) and then reused."""
    with jax.ensure_compile_time_eval():
        ts = _resolve_grid(path, solver, grid, num_steps, t_start, t_end, rho)
        check_grid_on_path(path, target, solver, ts)
    ts.setflags(write=False)
    return ts


def _model_caller(model: Callable, has_params: bool, has_cond: bool, guided: bool, dtype):
    """``predict(x, t, params, cond, null_cond, w)``: one model call at scalar t, guided if asked.

    The model sees x in the state's ``dtype`` and t (a (batch,) array) in the time dtype; its prediction, guided
    in the promoted dtype, is returned in the state's dtype."""

    def call(params, x, t, cond):
        args = ((params,) if has_params else ()) + (x, t) + ((cond,) if has_cond else ())
        return model(*args)

    def predict(x, t, params, cond, null_cond, weight):
        x = x.astype(dtype)
        t = jnp.asarray(t)
        t_batch = jnp.broadcast_to(t.astype(jnp.promote_types(t.dtype, time_dtype())), (x.shape[0],))
        if not guided:
            return call(params, x, t_batch, cond).astype(dtype)
        both = call(
            params,
            jnp.concatenate([x, x]),
            jnp.concatenate([t_batch, t_batch]),
            jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null_cond),
        )
        conditional, unconditional = jnp.split(both, 2)
        return (unconditional + weight * (conditional - unconditional)).astype(dtype)

    return predict


@functools.partial(jax.jit, static_argnames=("model", "path", "target", "solver", "has_params", "has_cond",
                                             "guided", "denoise"))
def _sample_jit(noise, grid, key, params, cond, null_cond, weight, *, model, path, target, solver, has_params,
                has_cond, guided, denoise):
    x0 = (path.sigma(grid[0]) * noise).astype(noise.dtype)
    # At trace time, before XLA compiles anything:
    _check_model_output(model, x0, jnp.zeros((), grid.dtype), params, cond, has_params, has_cond)
    predict_fn = _model_caller(model, has_params, has_cond, guided, noise.dtype)
    ctx = Context(path, target, lambda x, t: predict_fn(x, t, params, cond, null_cond, weight), noise.dtype)
    x, info = solver.solve(ctx, x0, grid, key)
    if denoise:
        x = ctx.denoise(x, grid[-1]).data
        info["nfe"] = info["nfe"] + 1
    info["forward_passes"] = info["nfe"] * (2 if guided else 1)
    info["grid"] = grid
    return x, info


def sample(
    model: Callable,
    path: str | Path,
    target: str = "velocity",
    solver: str | Solver = "euler",
    *,
    grid=None,
    num_steps: int | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    shape: tuple[int, ...] | None = None,
    dtype=jnp.float32,
    params=None,
    cond=None,
    guidance: float | None = None,
    null_cond=None,
    denoise: bool = False,
    solver_options: dict | None = None,
):
    """Draw samples by integrating from noise (t₀) to data (t_N).

    Args:
      model: pure function returning a prediction of ``target`` (see the module docstring for its signature).
      path: a ``Path`` or a name in ``flowgen.paths.PATHS``.
      target: what the model predicts: one of ``flowgen.paths.TARGETS``.
      solver: a name in ``flowgen.solvers.SOLVERS`` or a Solver instance; ``solver_options`` go to its constructor.
      grid: a grid kind (``flowgen.solvers.grids.GRIDS``; default per solver) used with ``num_steps`` (and optional
        ``t_start``/``t_end``, default the path's [t_min, t_max]; ``rho`` for "edm"), or an increasing array of times.
      noise: standard normal noise of shape (batch, ...); or ``key`` and ``shape`` to draw it. Stochastic solvers
        need ``key`` (split from the noise key when noise is drawn here).
      params, cond: extra model inputs; ``guidance`` (w) with ``null_cond`` turns on classifier-free guidance,
        ``uncond + w·(cond − uncond)``: w = 1 is the conditional model, w = 0 the unconditional one; None (default)
        calls the model once per step, unguided. w may be traced (jit/vmap over guidance weights).
      denoise: after the last time, return the model's data prediction x̂ there (one more call).

    Returns:
      (x, info): samples with the shape of ``noise``; ``info`` with ``nfe`` and ``forward_passes`` (per sample,
      measured), ``num_steps`` and the ``grid`` used (plus solver-specific counters).
    """
    path = paths_lib.get(path)
    check_target(target)
    solver = solvers_lib.get(solver, **(solver_options or {}))
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer))
                                  or num_steps < 1):
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}")
    if num_steps is not None and num_steps < solver.min_steps:
        raise ValueError(f"solver {solver.name!r} needs num_steps >= {solver.min_steps}; got {num_steps}")
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass key=...")
    if isinstance(grid, str) or grid is None:
        ts = _named_grid(path, target, solver, grid, num_steps, t_start, t_end, rho)
    else:
        # Grids and their checks are host computations, even when sample() itself is being traced by jax.jit.
        with jax.ensure_compile_time_eval():
            ts = _resolve_grid(path, solver, grid, num_steps, t_start, t_end, rho)
            if isinstance(ts, np.ndarray):
                check_grid_on_path(path, target, solver, ts)

    if noise is None:
        if key is None or shape is None:
            raise ValueError("pass noise=..., or key=... and shape=(batch, ...) to draw it")
        key, noise_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, tuple(shape), dtype)
    elif shape is not None and tuple(shape) != tuple(jnp.shape(noise)):
        raise ValueError(f"shape={tuple(shape)} disagrees with noise of shape {jnp.shape(noise)}")
    noise = jnp.asarray(noise)
    if noise.ndim < 1:
        raise ValueError(f"noise must have a leading batch axis; got shape {noise.shape}")
    if not jnp.issubdtype(noise.dtype, jnp.floating):
        raise ValueError(f"noise must be a floating-point array; got dtype {noise.dtype}")

    guided = guidance is not None
    if guided:
        if cond is None or null_cond is None:
            raise ValueError("classifier-free guidance needs cond=... and null_cond=... (the unconditional label)")
        if isinstance(guidance, (bool, str)) or np.ndim(guidance) != 0 or not jnp.issubdtype(
                jnp.result_type(guidance), jnp.number):
            raise ValueError(f"guidance must be a scalar weight (a number or a 0-d array); got {guidance!r}")
        if _is_concrete(guidance) and not np.isfinite(float(guidance)):
            raise ValueError(f"guidance must be finite; got {guidance!r}")
        null_cond = jax.tree.map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, jnp.asarray(c).dtype), jnp.shape(c)),
                                 cond, null_cond)
    elif null_cond is not None:
        raise ValueError("null_cond is only used with guidance=w")

    # Times stay in the time dtype whatever the state's (a traced grid keeps a wider dtype if it has one). A host
    # grid is converted by numpy and transferred as is (jnp.asarray would compile a copy once per grid length).
    if isinstance(ts, np.ndarray):
        grid_arr = jax.device_put(ts.astype(time_dtype()))
    else:
        grid_arr = jnp.asarray(ts, dtype=jnp.promote_types(jnp.result_type(ts), time_dtype()))
    has_params, has_cond = params is not None, cond is not None
    weight = jnp.asarray(1.0 if guidance is None else guidance, time_dtype())
    x, info = _sample_jit(
        noise, grid_arr, key, params, cond, null_cond, weight,
        model=model, path=path, target=target, solver=solver, has_params=has_params, has_cond=has_cond,
        guided=guided, denoise=denoise,
    )
    if _is_concrete(x) and all(_is_concrete(v) for v in jax.tree.leaves(info)):
        solver.check_result(x, info, np.asarray(info["grid"]))
    return x, info


def _check_model_output(model, x, t, params, cond, has_params, has_cond) -> None:
    """Abstractly evaluate one model call (no compilation) and require output shape == input shape."""
    call = _model_caller(model, has_params, has_cond, guided=False, dtype=x.dtype)
    try:
        out = jax.eval_shape(lambda x, p, c: call(x, t, p, c, None, None), x, params, cond)
    except Exception as e:  # the model's own error, with the call that caused it
        raise ValueError(f"calling the model on x_t of shape {x.shape} failed: {type(e).__name__}: {e}") from e
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        raise ValueError(
            f"the model must return a prediction shaped like x_t {tuple(x.shape)}; it returned "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
