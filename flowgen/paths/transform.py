"""Sample a model trained on one affine path under another: the exact time-and-scale change between paths.

Two affine paths ``x_t = α(t)·x_data + σ(t)·noise`` (source, the model's) and ``x'_r = α'(r)·x_data + σ'(r)·noise``
(dest) hold the same family of marginals up to scale: at times with equal signal-to-noise ratio,
λ(t) = λ'(r) with λ = log(α/σ),

    t(r) = λ⁻¹(λ'(r)),        x_t = s(r)·x'_r,        s(r) = α(t)/α'(r) = σ(t)/σ'(r),

and the posterior means E[x_data | x], E[noise | x] are the same at (x_t, t) and (x'_r, r). So the dest prediction
of any target is exact: call the source model at (s·x'_r, t(r)), convert its prediction to (x̂, ε̂) on the source
path, and from them to the dest target on the dest path (``flowgen.paths.targets``). This is the transformation of
Pokle et al. 2023 ("Training-free linear image inverses via flows") and of Meta flow_matching's
ScheduleTransformedModel, written here from the equations above. It is defined where λ'(r) lies in the source's
λ-range: ``matching_interval`` gives the dest interval that covers exactly the source's ``[t_min, t_max]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from flowgen.paths import targets as targets_lib
from flowgen.paths.schedules import Path, host_eval


def schedule_transformed(model: Callable, source: Path, source_target: str, dest: Path,
                         dest_target: str | None = None) -> Callable:
    """``model(x_t, t, *extra)`` predicting ``source_target`` on ``source`` → the same model as a prediction of
    ``dest_target`` (default: the same target) on ``dest``, called ``f(x'_r, r, *extra)`` (r of shape (batch,))."""
    targets_lib.check_target(source_target)
    dest_target = targets_lib.check_target(dest_target or source_target)

    def transformed(x_r, r, *extra):
        r = jnp.asarray(r, x_r.dtype)
        c_dest = dest.coefficients(r)
        t = source.t_from_log_snr(dest.log_snr(r)).astype(x_r.dtype)
        c_src = source.coefficients(t)
        # s = α/α' = σ/σ': take the ratio of the larger pair (stable at both ends of the path).
        scale = jnp.where(c_dest.sigma >= c_dest.alpha, c_src.sigma / c_dest.sigma, c_src.alpha / c_dest.alpha)
        scale = jnp.reshape(scale, scale.shape + (1,) * (x_r.ndim - scale.ndim))
        x_t = scale * x_r
        denoised = targets_lib.to_denoised(source_target, model(x_t, t, *extra), x_t, c_src)
        return targets_lib.from_denoised(dest_target, denoised, x_r, c_dest).astype(x_r.dtype)

    return transformed


def matching_interval(source: Path, dest: Path) -> tuple[float, float]:
    """The dest interval ``(r_start, r_end)`` with the same log-SNR range as the source's ``[t_min, t_max]``,
    intersected with the dest's own ``[t_min, t_max]`` (an infinite λ at a source end leaves that dest end as is)."""
    with np.errstate(divide="ignore"):
        lam = host_eval(source.log_snr, np.array([source.t_min, source.t_max], np.float64))
        r = host_eval(dest.t_from_log_snr, lam)
    r = np.clip(np.where(np.isfinite(r), r, [dest.t_min, dest.t_max]), dest.t_min, dest.t_max)
    if not r[0] < r[1]:
        raise ValueError(f"paths {source!r} and {dest!r} share no log-SNR range")
    return float(r[0]), float(r[1])
