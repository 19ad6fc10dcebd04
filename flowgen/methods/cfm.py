"""Conditional flow matching with Gaussian noise around the interpolant (Tong et al. 2023, "Improving and generalizing
flow-based generative models with minibatch optimal transport"): I-CFM, OT-CFM and SB-CFM.

For a pair (x₀, x₁) from a coupling (independent: I-CFM; minibatch OT: OT-CFM), t ~ U[0, 1] and ε ~ N(0, I), the
conditional path and its velocity are

    x_t = μ_t + s(t)·ε,    μ_t = t·x₁ + (1 − t)·x₀,    u_t = x₁ − x₀ + s'(t)·ε     (= dx_t/dt at fixed x₀, x₁, ε)

    constant   s(t) = σ                                  (I-CFM, OT-CFM: u_t = x₁ − x₀)
    bridge     s(t) = σ·sqrt(t(1 − t)),  s' = σ(1 − 2t) / (2·sqrt(t(1 − t)))      (SB-CFM, a Brownian bridge)

and the network regresses onto u_t: L(θ) = E ‖v_θ(x_t, t) − u_t‖² / dim. Unlike the affine paths of
``flow_matching.py`` the noise is *around* the straight line between the two samples, so x₀ may come from any source
(``flowgen.sources``, e.g. moons → 8 gaussians) and the marginal at t = 0 is the source smoothed by N(0, s(0)²).
SB-CFM pairs by the entropic plan with regularisation 2σ² in the paper; for σ² small against the batch's squared
distances that plan is the exact OT permutation, which is what torchcfm's ``SchrodingerBridgeConditionalFlowMatcher``
uses by default (``ot_method="exact"``) and what ``coupling = "ot"`` gives here.

The network predicts a velocity on the linear path, so every solver of ``fg.sample`` samples it, from x₀ itself.
Options: ``method.kwargs`` sigma (σ ≥ 0, default 0.1) and noise ("constant" or "bridge"); ``config.loss`` coupling,
coupling_options, time_sampler (target "velocity", weighting "uniform").
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.couplings import get_coupling
from flowgen.methods.flow_matching import FlowMatching
from flowgen.paths.schedules import LinearPath
from flowgen.paths.time_samplers import get_time_sampler

NOISE_SCHEDULES = ("constant", "bridge")


def conditional_flow(x_data, x0, eps, t, sigma: float, noise: str):
    """``(x_t, u_t)`` of the module docstring for x_data = x₁, x₀, ε of shape (B, ...) and t (B,)."""
    tb = jnp.reshape(t, (-1,) + (1,) * (x_data.ndim - 1)).astype(x_data.dtype)
    mu = tb * x_data + (1.0 - tb) * x0
    if noise == "constant":
        s, ds = sigma, 0.0
    else:                                           # bridge; t(1 − t) floored so t = 0 or 1 stays finite
        root = jnp.sqrt(jnp.maximum(tb * (1.0 - tb), 1e-12))
        s, ds = sigma * root, sigma * (1.0 - 2.0 * tb) / (2.0 * root)
    return mu + s * eps, (x_data - x0) + ds * eps


@dataclasses.dataclass(frozen=True, eq=False)
class ConditionalFlowMatching(FlowMatching):
    name: ClassVar[str] = "cfm"
    supports_text: ClassVar[bool] = False

    sigma: float = 0.1
    noise: str = "constant"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.path, LinearPath) or self.path.sigma_min != 0:
            raise ValueError(f"method 'cfm' interpolates on the straight line t·x₁ + (1 − t)·x₀: path.name must be "
                             f"'linear'; got {self.path!r}")
        if self.target != "velocity" or self.weighting != "uniform":
            raise ValueError(f"method 'cfm' regresses the velocity with uniform weights: loss.target='velocity', "
                             f"loss.weighting='uniform'; got {self.target!r}, {self.weighting!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (
                math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"method.kwargs.sigma={self.sigma!r}: must be a finite number ≥ 0")
        if self.noise not in NOISE_SCHEDULES:
            raise ValueError(f"method.kwargs.noise={self.noise!r}; valid: {', '.join(NOISE_SCHEDULES)}")

    def make_loss(self, apply):
        sampler = get_time_sampler(self.time_sampler, self.path, **dict(self.time_sampler_options))
        couple = get_coupling(self.coupling, **dict(self.coupling_options))

        def loss(params, state, batch, key):
            del state
            k_couple, k_time, k_eps, k_drop, k_model = jax.random.split(key, 5)
            x_data, x0 = couple(k_couple, batch["x"], batch, self.source)
            b = x_data.shape[0]
            t = sampler.sample(k_time, (b,), x_data.dtype)
            eps = jax.random.normal(k_eps, x_data.shape, x_data.dtype)
            x_t, goal = conditional_flow(x_data, x0, eps, t, self.sigma, self.noise)
            cond = self.training_labels(batch, k_drop)
            err = jnp.reshape(apply(params, x_t, t, cond, k_model).astype(jnp.float32) - goal, (b, -1))
            value = jnp.mean(err**2)
            return value, {"loss": value, "mse": value, "t_mean": jnp.mean(t)}

        return loss
