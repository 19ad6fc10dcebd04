"""Exact log-likelihood through the probability-flow ODE (instantaneous change of variables) and bits per dimension.

Along the flow dx/dt = u(x, t) the density obeys d log p_t(x_t)/dt = −div u(x_t, t) (Chen et al. 2018, "Neural
ODEs", Thm. 1), so for data x at the path's data end t₁ (= t_max) and its latent z = x_{t₀} at the noise end
t₀ (= t_min):

    log p_{t₁}(x) = log p_{t₀}(z) − ∫_{t₀}^{t₁} div u(x_t, t) dt,        p_{t₀} ≈ N(0, σ(t₀)²·I) (the prior).

The pair (x, ∫ div u) is integrated backwards from t₁ to t₀ by one of flowgen's own ODE solvers (rk4 and the
other explicit Runge–Kutta methods on a uniform grid, or adaptive dopri5), run in reversed time τ = t₁ − t so
that they step forwards; every stage time lies in [t₀, t₁] ⊆ [t_min, t_max], so the model is never evaluated
outside the path's interval. u is the model's prediction of any target converted to velocity (the solvers'
``Context``).

Divergence (per sample; the model must treat samples independently):
- ``"exact"``: tr ∂u/∂x from D forward-mode JVPs u'(x)·e_i (``jax.jvp``; D = dimension, small data only);
- ``"hutchinson"``: εᵀ(∂u/∂x)ε with probes ε drawn once per sample and held fixed along the trajectory
  (Hutchinson 1989; Grathwohl et al. 2019, FFJORD), Rademacher or Gaussian, averaged over ``num_probes``;
  one JVP per probe (forward mode, never reverse). The trajectory itself does not depend on ε, so the estimate of
  log p is unbiased.

Bits per dimension of 8-bit images with uniform dequantisation, as the data pipeline scales them
(``flowgen.data.pipeline.to_model_range``): pixels p ∈ {0..255} and u ~ U[0, 1)^D give x = (p + u)·(2/256) − 1
∈ [−1, 1). The density of y = p + u is p_y(y) = p_x(x)·(2/256)^D and, as the unit bins tile the space,
log P(p) ≥ E_u[log p_y(p + u)] (Theis et al. 2016). Hence

    bpd = −(log p_x(x) + D·log(2/256)) / (D·ln 2) = −log p_x(x)/(D·ln 2) + 7         (for 8 bits: log₂ 128 = 7),

an upper bound on the discrete code length, averaged over pixels and u (score_sde's convention).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowgen import paths as paths_lib
from flowgen import solvers as solvers_lib
from flowgen.paths import targets as targets_lib
from flowgen.paths.schedules import Path
from flowgen.solvers.base import Context

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
#: The solvers that integrate any vector field (``Solver.velocity_only``): the augmented ODE (x, log p) is no path.
SOLVERS = tuple(name for name, cls in solvers_lib.SOLVERS.items() if cls.velocity_only)


def divergence_exact(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(fn(x), tr ∂fn/∂x per sample) for a per-sample map fn: (B, D) → (B, D), by D batched JVPs."""
    d = x.shape[1]
    basis = jnp.eye(d, dtype=x.dtype)

    def column(e):
        return jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))

    values, columns = jax.vmap(column)(basis)                  # (D, B, D): columns[i] = J e_i for every sample
    return values[0], jnp.einsum("ibi->b", columns)


def divergence_hutchinson(fn: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array):
    """(fn(x), mean over probes of εᵀ(∂fn/∂x)ε per sample); probes (P, B, D), one JVP each."""

    def one(eps):
        return jax.jvp(fn, (x,), (eps,))

    values, jvps = jax.vmap(one)(probes)
    return values[0], jnp.mean(jnp.sum(probes * jvps, axis=-1), axis=0)


def make_probes(key: jax.Array, kind: str, shape: tuple[int, ...], dtype) -> jax.Array:
    """Probes with E[εεᵀ] = I: Rademacher (±1) or standard Gaussian."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    return jax.random.normal(key, shape, dtype)


def _check(path, target, x, divergence, probe, num_probes, key, solver, num_steps, t_start, t_end):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}; got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}; got {probe!r}")
    if divergence == "hutchinson":
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be an integer >= 1; got {num_probes!r}")
        if key is None:
            raise ValueError("divergence='hutchinson' needs key= (a jax.random key) to draw its probes")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
    steps_ok = not isinstance(num_steps, bool) and isinstance(num_steps, int) and num_steps >= 1
    if not solvers_lib.SOLVERS[solver].adaptive and not steps_ok:
        raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}")
    targets_lib.check_target(target)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x_data must have shape (batch, ...) with batch >= 1; got {x.shape}")
    if not (path.t_min <= t_start < t_end <= path.t_max):
        raise ValueError(f"need t_min <= t_start < t_end <= t_max = [{path.t_min}, {path.t_max}] of {path!r}; "
                         f"got t_start={t_start}, t_end={t_end}")
    # The sampler's own refusals (infinite coefficients, a noise/score target where α = 0, ...) on a fine grid.
    from flowgen.sampling import check_grid_on_path

    check_grid_on_path(path, target, solvers_lib.get("rk4"), np.linspace(t_start, t_end, 65))


def log_likelihood(
    model: Callable,
    path: str | Path,
    x_data: jax.Array,
    target: str = "velocity",
    *,
    params=None,
    divergence: str = "exact",
    probe: str = "rademacher",
    num_probes: int = 1,
    key: jax.Array | None = None,
    solver: str = "rk4",
    num_steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_start: float | None = None,
    t_end: float | None = None,
    prior_log_prob: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, dict]:
    """log p_{t_end}(x) (shape (B,)) under the model's probability-flow ODE, and ``info``.

    Args:
      model: ``model(x_t, t)`` (or ``model(params, x_t, t)`` with ``params=``), t of shape (batch,), returning a
        prediction of ``target`` shaped like x_t; samples must not interact (no batch statistics).
      path: a Path or a name in ``flowgen.paths.PATHS``.
      x_data: (B, ...) points at the data end (e.g. dequantised images in [−1, 1)).
      divergence: "exact" or "hutchinson" (``num_probes`` probes of kind ``probe`` drawn from ``key``).
      solver: "rk4" (default), "euler", "midpoint" or "heun" on ``num_steps`` uniform steps, or "dopri5" with
        ``rtol``/``atol``.
      t_start, t_end: the noise and data ends (default the path's [t_min, t_max]).
      prior_log_prob: log density of the latent at t_start, (B, ...) → (B,); default ``path.prior_log_prob``,
        the N(0, σ(t_start)²·I) that sampling starts from.

    Returns (log_p, info): info has ``latent`` z (B, ...), ``prior_log_prob`` (B,), ``delta_log_p`` = −∫ div u dt
    (B,), ``nfe`` (model calls per sample, each with its JVPs) and ``t_final`` for dopri5.
    """
    path = paths_lib.get(path) if isinstance(path, str) else path
    x_data = jnp.asarray(x_data)
    t_start = path.t_min if t_start is None else float(t_start)
    t_end = path.t_max if t_end is None else float(t_end)
    _check(path, target, x_data, divergence, probe, num_probes, key, solver, num_steps, t_start, t_end)
    adaptive = solvers_lib.SOLVERS[solver].adaptive
    solver_obj = solvers_lib.get(solver, rtol=rtol, atol=atol) if adaptive else solvers_lib.get(solver)
    if key is None:
        key = jax.random.key(0)
    z, delta, info = _integrate(model, path, target, solver_obj, divergence, probe, num_probes,
                                1 if adaptive else num_steps, t_start, t_end, params is not None,
                                x_data, params, key)
    prior = path.prior_log_prob(z, t_start) if prior_log_prob is None else prior_log_prob(z)
    prior = jnp.asarray(prior, x_data.dtype)
    return prior + delta, {"latent": z, "prior_log_prob": prior, "delta_log_p": delta, **info}


@functools.partial(jax.jit, static_argnames=("model", "path", "target", "solver", "divergence", "probe",
                                             "num_probes", "num_steps", "t_start", "t_end", "has_params"))
def _integrate(model, path, target, solver, divergence, probe, num_probes, num_steps, t_start, t_end, has_params,
               x_data, params, key):
    shape, dtype = x_data.shape, x_data.dtype
    batch, dim = shape[0], math.prod(shape[1:])

    def velocity(x_flat, t):
        x = x_flat.reshape(shape)
        t_batch = jnp.broadcast_to(jnp.asarray(t, dtype), (batch,))
        pred = (model(params, x, t_batch) if has_params else model(x, t_batch)).astype(dtype)
        pred = targets_lib.get_target(target).velocity(pred, x, path.coefficients(jnp.asarray(t, dtype)))
        return pred.reshape(batch, dim)

    probes = make_probes(key, probe, (num_probes, batch, dim), dtype) if divergence == "hutchinson" else None

    def reversed_field(y, tau):
        """d/dτ of (x, c) in reversed time τ = t_end − t: (−u, −div u), so c(τ_end) = −∫_{t_start}^{t_end} div u dt."""
        t = jnp.clip(t_end - tau, t_start, t_end)
        fn = functools.partial(velocity, t=t)
        x = y[:, :dim]
        u, div = divergence_exact(fn, x) if divergence == "exact" else divergence_hutchinson(fn, x, probes)
        return jnp.concatenate([-u, -div[:, None].astype(dtype)], axis=1)

    ctx = Context(path, "velocity", reversed_field)  # a velocity "model" of the augmented state: no conversion
    y0 = jnp.concatenate([x_data.reshape(batch, dim), jnp.zeros((batch, 1), dtype)], axis=1)
    grid = jnp.linspace(0.0, t_end - t_start, num_steps + 1, dtype=dtype)
    y, info = solver.solve(ctx, y0, grid, None)
    return y[:, :dim].reshape(shape), y[:, dim], info


def bits_per_dim(log_p, dim: int, bits: int = 8) -> jax.Array:
    """bpd = −(log p_x(x) + D·log(2/2^bits))/(D·ln 2) for data dequantised as x = (p + u)·2/2^bits − 1 (see the
    module docstring): −log p/(D·ln 2) + bits − 1."""
    return -jnp.asarray(log_p) / (dim * math.log(2.0)) + (bits - 1)


def dequantize(images: np.ndarray, key: jax.Array, bits: int = 8) -> jax.Array:
    """uint8 (or integer) images p → (p + u)·2/2^bits − 1 with u ~ U[0, 1) per pixel (the pipeline's scaling)."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must be integer pixels in [0, {2**bits - 1}]; got dtype {images.dtype}")
    u = jax.random.uniform(key, images.shape, jnp.float32)
    return (jnp.asarray(images, jnp.float32) + u) * (2.0 / 2**bits) - 1.0
