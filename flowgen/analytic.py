"""Gaussian-mixture data with exact posterior means: a ground-truth model for any path and any target.

Data: ``x_data ~ Σ_k w_k·N(μ_k, s_k²·I)`` in d dimensions. Under ``x_t = α·x_data + σ·noise`` the marginal is again
a mixture, ``p_t(x) = Σ_k w_k·N(x; α·μ_k, v_k·I)`` with ``v_k = α²·s_k² + σ²``, and component by component

    E[x_data | x_t, k] = μ_k + (α·s_k²/v_k)·(x_t − α·μ_k),      E[noise | x_t, k] = (σ/v_k)·(x_t − α·μ_k),

weighted by the responsibilities ``r_k(x_t) ∝ w_k·N(x_t; α·μ_k, v_k·I)``. Neither mean divides by α or σ, so the
exact model is finite on the whole of [0, 1] (at σ = 0 the noise mean is 0; at α = 0 the data mean is E[x_data]).
Any target follows by ``flowgen.paths.targets.from_denoised`` — except the score, computed directly as
``−Σ_k r_k·(x_t − α·μ_k)/v_k`` so that it stays finite where σ = 0.

For a single component (K = 1) the probability-flow ODE has the closed-form flow map
``x_{t'} = α'μ + sqrt(v'/v)·(x_t − α·μ)``: ``exact_flow_map``.

For any mixture, ``flow_map`` is the flow map Φ_{t→r} of the probability-flow ODE dx/dτ = v(x, τ) (v the exact
velocity above): the closed form for K = 1, else classical RK4 on the exact velocity (256 steps by default: in
float64 on the toy mixtures it agrees with 1024 steps to ~1e-9). From it, the exact *average velocity* of few-step
methods (MeanFlow, Geng et al. 2025; shortcut models, Frans et al. 2024), for a point z at time t and a second time r:

    u(z, t, r) = (Φ_{t→r}(z) − z)/(r − t),      u(z, t, t) = v(z, t),

so that one jump z + (r − t)·u(z, t, r) lands exactly on Φ_{t→r}(z): ``average_velocity``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.paths import targets as targets_lib
from flowgen.paths.schedules import Path


def _per_sample(v, x):
    v = jnp.asarray(v)
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """``GaussianMixture(means, std, weights=None)``: means (K, d); std a scalar or (K,); weights (K,) summing to 1.

    Arrays are stored as float64 numpy and cast to the dtype of x_t in every computation.
    """

    means: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def __init__(self, means, std, weights=None):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got shape {means.shape}")
        k = means.shape[0]
        std = np.broadcast_to(np.asarray(std, dtype=np.float64), (k,)).copy() if np.ndim(std) == 0 else (
            np.asarray(std, dtype=np.float64)
        )
        if std.shape != (k,) or np.any(std <= 0):
            raise ValueError(f"std must be a positive scalar or an array of shape ({k},); got {std!r}")
        weights = np.full((k,), 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (k,) or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"weights must be ({k},), non-negative and sum to 1; got {weights!r}")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "weights", weights)

    # --- presets --------------------------------------------------------------------------------------
    @classmethod
    def circle(cls, num_components: int = 8, radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
        """``num_components`` equal-weight isotropic Gaussians evenly spaced on a circle in 2-D."""
        angles = 2 * np.pi * np.arange(num_components) / num_components
        return cls(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1), std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        mu = self.mean()
        centred = self.means - mu
        within = np.sum(self.weights * self.std**2) * np.eye(self.dim)
        return within + (self.weights[:, None] * centred).T @ centred

    # --- sampling and densities -------------------------------------------------------------------------
    def sample(self, key: jax.Array, num: int, dtype=jnp.float32, return_labels: bool = False):
        """``num`` samples of shape (num, d) (and their component labels if asked)."""
        k_comp, k_noise = jax.random.split(key)
        labels = jax.random.choice(k_comp, self.num_components, (num,), p=jnp.asarray(self.weights))
        z = jax.random.normal(k_noise, (num, self.dim), dtype)
        x = jnp.asarray(self.means, dtype)[labels] + jnp.asarray(self.std, dtype)[labels, None] * z
        return (x, labels) if return_labels else x

    def _component_terms(self, x_t, alpha, sigma):
        """Per-component log N(x_t; α·μ_k, v_k·I) + log w_k, the residuals x_t − α·μ_k and variances v_k."""
        dtype = x_t.dtype
        mu = jnp.asarray(self.means, dtype)                                    # (K, d)
        s2 = jnp.asarray(self.std, dtype) ** 2                                 # (K,)
        a = jnp.reshape(alpha, (-1, 1))                                        # (B or 1, 1)
        var = a**2 * s2 + jnp.reshape(sigma, (-1, 1)) ** 2                     # (B or 1, K)
        resid = x_t[:, None, :] - a[:, :, None] * mu[None]                     # (B, K, d)
        sq = jnp.sum(resid**2, axis=-1)                                        # (B, K)
        log_norm = -0.5 * sq / var - 0.5 * self.dim * jnp.log(2 * math.pi * var)
        return log_norm + jnp.log(jnp.asarray(self.weights, dtype)), resid, var

    def log_prob(self, x_t: jax.Array, t=None, path: Path | None = None) -> jax.Array:
        """Exact log p_t(x_t) (shape (B,)) of the marginal at time t on ``path``; the data density if t is None."""
        alpha, sigma = (jnp.ones((), x_t.dtype), jnp.zeros((), x_t.dtype)) if t is None else (
            path.alpha(t), path.sigma(t)
        )
        logits, _, _ = self._component_terms(x_t, alpha, sigma)
        return jax.nn.logsumexp(logits, axis=-1)

    def posterior(self, x_t: jax.Array, t, path: Path, labels: jax.Array | None = None):
        """Exact (E[x_data | x_t], E[noise | x_t], score) at (x_t, t); x_t (B, d), t scalar or (B,).

        With ``labels`` (B,) in [0, K), the posterior given the component (class-conditional ground truth);
        a label equal to K means "no label" (the full mixture), the null class of classifier-free guidance.
        """
        x_t = jnp.asarray(x_t)
        t = jnp.asarray(t, x_t.dtype)
        alpha, sigma = path.alpha(t), path.sigma(t)
        logits, resid, var = self._component_terms(x_t, alpha, sigma)
        if labels is not None:
            onehot = jax.nn.one_hot(labels, self.num_components, dtype=bool)   # all-False for the null label
            logits = jnp.where(onehot | ~onehot.any(-1, keepdims=True), logits, -jnp.inf)
        r = jax.nn.softmax(logits, axis=-1)[..., None]                         # (B, K, 1)
        a = jnp.reshape(alpha, (-1, 1, 1))
        s = jnp.reshape(sigma, (-1, 1, 1))
        s2 = jnp.asarray(self.std, x_t.dtype)[None, :, None] ** 2
        mu = jnp.asarray(self.means, x_t.dtype)[None]
        v = var[..., None]
        data = jnp.sum(r * (mu + a * s2 / v * resid), axis=1)
        noise = jnp.sum(r * (s / v * resid), axis=1)
        score = -jnp.sum(r * resid / v, axis=1)
        return targets_lib.Denoised(data, noise), score

    def model(self, path: Path, target: str = "velocity", conditional: bool = False) -> Callable:
        """The exact model ``(x_t, t) -> prediction`` of ``target`` (or ``(x_t, t, labels)`` if conditional).

        The same function object is returned for the same arguments, so ``fg.sample`` (which jits per model
        function) compiles once per (path, target), not once per call of ``model``.
        """
        targets_lib.check_target(target)
        cache = self.__dict__.setdefault("_models", {})
        if (path, target, conditional) not in cache:
            cache[(path, target, conditional)] = self._make_model(path, target, conditional)
        return cache[(path, target, conditional)]

    def _make_model(self, path: Path, target: str, conditional: bool) -> Callable:
        spec = targets_lib.get_target(target)

        def predict(x_t, t, labels=None):
            d, score = self.posterior(x_t, t, path, labels)
            return spec.from_posterior(d, score, x_t, path.coefficients(jnp.asarray(t, x_t.dtype)))

        if conditional:
            return predict
        return lambda x_t, t: predict(x_t, t)

    def exact_flow_map(self, path: Path, x_start: jax.Array, t_start, t_end) -> jax.Array:
        """Closed-form solution of the probability-flow ODE from t_start to t_end (single Gaussian only).

        With one component, standardised coordinates (x_t − α·μ)/sqrt(α²s² + σ²) are constant along the flow.
        """
        if self.num_components != 1:
            raise ValueError(f"exact_flow_map needs a single Gaussian; this mixture has {self.num_components}")
        dtype = x_start.dtype
        mu = jnp.asarray(self.means[0], dtype)
        s2 = float(self.std[0]) ** 2
        a0, a1 = path.alpha(jnp.asarray(t_start, dtype)), path.alpha(jnp.asarray(t_end, dtype))
        v0 = a0**2 * s2 + path.sigma(jnp.asarray(t_start, dtype)) ** 2
        v1 = a1**2 * s2 + path.sigma(jnp.asarray(t_end, dtype)) ** 2
        return a1 * mu + jnp.sqrt(v1 / v0) * (x_start - a0 * mu)

    def flow_map(self, path: Path, x_start: jax.Array, t_start, t_end, num_steps: int = 256) -> jax.Array:
        """Φ_{t_start→t_end}(x_start): the probability-flow ODE solved from t_start to t_end (either direction).

        x_start: (B, d); t_start, t_end: scalars or (B,) (each sample its own interval). The closed form for a single
        Gaussian (``exact_flow_map``); otherwise ``num_steps`` classical RK4 steps on the exact velocity, written in
        s ∈ [0, 1] with τ = t_start + s·(t_end − t_start), so every sample takes the same number of steps (also when
        t_end = t_start, where the map is the identity exactly).
        """
        x_start = jnp.asarray(x_start)
        dtype = x_start.dtype
        t0 = jnp.broadcast_to(jnp.asarray(t_start, dtype), x_start.shape[:1])
        t1 = jnp.broadcast_to(jnp.asarray(t_end, dtype), x_start.shape[:1])
        if self.num_components == 1:
            return self.exact_flow_map(path, x_start, _per_sample(t0, x_start), _per_sample(t1, x_start))
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}")
        velocity = self.model(path, "velocity")
        span = _per_sample(t1 - t0, x_start)
        h = 1.0 / num_steps

        def f(x, s):
            return span * velocity(x, t0 + s * (t1 - t0))

        def body(i, x):
            s = jnp.asarray(i, dtype) * h
            k1 = f(x, s)
            k2 = f(x + 0.5 * h * k1, s + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, s + 0.5 * h)
            k4 = f(x + h * k3, s + h)
            return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)

        return jax.lax.fori_loop(0, num_steps, body, x_start)

    def average_velocity(self, path: Path, z: jax.Array, t, r, num_steps: int = 256) -> jax.Array:
        """The exact average velocity u(z, t, r) = (Φ_{t→r}(z) − z)/(r − t) of a point z (B, d) at time t over
        [t, r] (t, r scalars or (B,); r < t allowed), and the exact velocity v(z, t) where r = t."""
        z = jnp.asarray(z)
        t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
        r = jnp.broadcast_to(jnp.asarray(r, z.dtype), z.shape[:1])
        same = r == t
        width = _per_sample(jnp.where(same, 1.0, r - t), z)
        mean = (self.flow_map(path, z, t, r, num_steps) - z) / width
        return jnp.where(_per_sample(same, z), self.model(path, "velocity")(z, t), mean)
