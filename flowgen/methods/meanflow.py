"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling"): a network for the
average velocity, trained from the instantaneous one by an identity, sampled in 1 or a few jumps.

**Average velocity, in flowgen's time** (t = 0 noise, t = 1 data; the paper runs time the other way). For the point
z_t at time t of a probability-flow trajectory and a later time r ≥ t,

    u(z_t, t, r) = 1/(r − t) · ∫_t^r v(z_τ, τ) dτ = (Φ_{t→r}(z_t) − z_t)/(r − t),      u(z_t, t, t) = v(z_t, t),

so one jump z_r = z_t + (r − t)·u(z_t, t, r) moves noise towards data. Differentiating (r − t)·u(z_t, t, r) =
Φ_{t→r}(z_t) − z_t in t along the trajectory (Φ_{t→r}(z_t) = z_r does not move) gives −u + (r − t)·du/dt = −v:

    u(z_t, t, r) = v(z_t, t) + (r − t) · d/dt u(z_t, t, r),      d/dt = v·∂_z + ∂_t   (dz/dt = v, dr/dt = 0).

The paper writes u = v − (t − r)·du/dt with its r ≤ t; in our direction r ≥ t and the factor is (r − t) ≥ 0. The
sign is the same formula, but v here is *our* velocity (towards data: α̇·x_data + σ̇·noise, x_data − noise on the
linear path), never the paper's ε − x; ``tests/test_analytic_flow_map.py`` checks the identity on the exact mixture.

**Network**: u_θ(z, t, h) with the interval h = r − t ∈ [0, 1] as its extra time input (``extra_times = ("h",)``):
the paper's ablation (its Table 1c) finds (t, t − r) slightly better than (t, r); with h the special case r = t is
the fixed input h = 0, where u_θ *is* a velocity network (so any ``fg.sample`` solver samples it at h = 0).

**Loss**: with the conditional velocity v_t = α̇·x_data + σ̇·x₀ (any affine path; any coupling of x_data and x₀),

    u_tgt = sg( v_t + h · (v_t·∂_z + ∂_t − ∂_h) u_θ(z_t, t, h) ),    Δ = u_θ(z_t, t, h) − u_tgt,
    L = E[ sg(w) · ‖Δ‖²/D ],   w = 1/(‖Δ‖² + c)^p         (adaptive weighting; p = 0 is the plain squared error)

where the total derivative is one ``jax.jvp`` of the network with tangents (v_t, 1, −1) on its inputs (z, t, h)
(h = r − t falls as t rises at fixed r), computed in float32. The target is linear in v_t given z_t, so replacing
the marginal v(z_t, t) by v_t leaves the minimiser unchanged: the identity, hence the method, holds on any affine
path and for any flow (not only the linear path of the paper). ‖Δ‖² is the squared norm over the D dimensions (the
paper's); dividing the loss by D only rescales it, and makes r = t with p = 0 *exactly* flow matching's velocity
loss (``FlowMatching`` with target "velocity", the same batch and key).

**Times**: t is drawn from the configured time sampler (``loss.time_sampler``; the paper: logit-normal, (−0.4, 1)
in its time, i.e. ``m = 0.4, s = 1`` in ours). For the first ``round(ratio·B)`` examples of each batch a second
draw r' is taken and (t, r) = (min, max)(t, r'); the rest have r = t (flow matching). The paper's ratio of r ≠ t is
25% (its best in Table 1a). The JVP runs on the r ≠ t examples only (they are the only ones whose target needs it).

**Sampling** (``sample.solver = "meanflow"``): ``num_steps`` jumps z ← z + (t' − t)·u_θ(z, t, t' − t) on a uniform
grid of [t_min, t_max]; 1 step = 1 NFE (measured, ``flowgen.methods.jumps``).

**Two cautions** (measured on the 2-D toy, ``configs/toy2d_meanflow.py``): (1) the JVP differentiates the network
in t and h, so high-frequency time features blow the target up: with the MLP's default sinusoidal features of
1000·t the r ≠ t residuals reached ‖Δ‖²/D ~ 10³–10⁵ and 1-NFE samples 1.7× the data floor, with ``time_scale = 10``
~5 and 0.85×. (2) p > 0 reweights by the residual, so the minimiser is no longer the conditional mean: at p = 1 the
r = t part (plain flow matching) learnt a biased velocity (32 Heun steps at h = 0: W2 1.6× the floor, 0.93× at
p = 0.5). Hence the default p = 0.5 (the paper's ablation: 0.5 and 1.0 both beat 0; 1.0 best on ImageNet).

Options (``config.method.kwargs``): ``ratio`` (fraction of r ≠ t, 0.25), ``p`` (adaptive-weight power, 0.5; the
paper uses 1.0 on ImageNet, 0.75 on CIFAR-10), ``c`` (1e-3). From ``config.loss``: time_sampler (+ options), coupling,
label_dropout; target must be "velocity" and weighting "uniform".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.couplings import get_coupling
from flowgen.methods.jumps import JumpMethod
from flowgen.paths.targets import target_from_pair
from flowgen.paths.time_samplers import get_time_sampler


def meanflow_target(net, z, t, h, v):
    """``(u_θ(z, t, h), v + h·(d/dt) u_θ(z, t, h))`` in float32: the prediction and the (not yet stop-gradient)
    MeanFlow target of a network ``net(z, t, h)`` at points z (B, ...) at times t (B,) with intervals h = r − t (B,)
    and velocities v (B, ...), the total derivative by one ``jax.jvp`` with tangents (v, 1, −1) on (z, t, h).
    With the exact average velocity and the exact marginal velocity v(z, t) the target equals u exactly."""
    f32 = lambda a: jnp.asarray(a).astype(jnp.float32)  # noqa: E731
    ones = jnp.ones(jnp.shape(t), jnp.float32)
    u, du_dt = jax.jvp(lambda zz, tt, hh: f32(net(zz, tt, hh)), (f32(z), f32(t), f32(h)), (f32(v), ones, -ones))
    return u, f32(v) + jnp.reshape(f32(h), (-1,) + (1,) * (u.ndim - 1)) * du_dt


@dataclasses.dataclass(frozen=True, eq=False)
class MeanFlow(JumpMethod):
    name: ClassVar[str] = "meanflow"
    extra_times: ClassVar[tuple[str, ...]] = ("h",)
    samplers: ClassVar[tuple[str, ...]] = ("meanflow",)
    guidable: ClassVar[bool] = False       # the paper trains guidance into the target; not implemented here

    ratio: float = 0.25
    p: float = 0.5
    c: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio <= 1:
            raise ValueError(f"method.kwargs.ratio={self.ratio!r}: the fraction of r ≠ t must be a number in [0, 1]")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or self.p < 0:
            raise ValueError(f"method.kwargs.p={self.p!r}: the adaptive-weight power must be a number >= 0")
        if isinstance(self.c, bool) or not isinstance(self.c, (int, float)) or self.c <= 0:
            raise ValueError(f"method.kwargs.c={self.c!r}: must be a number > 0")

    def jump_times(self, t0, t1) -> dict:
        return {"h": t1 - t0}

    def make_loss(self, apply):
        sampler = get_time_sampler(self.time_sampler, self.path, **dict(self.time_sampler_options))
        couple = get_coupling(self.coupling)

        def loss(params, state, batch, key):
            del state
            # The keys and draws of flowgen.losses.make_loss, so that ratio = 0 is flow matching draw for draw.
            k_couple, k_time, k_drop, k_model = jax.random.split(key, 4)
            x_data, noise = couple(k_couple, batch["x"], batch, self.source)
            b = x_data.shape[0]
            n = int(round(self.ratio * b))                       # examples with r ≠ t (static)
            t = sampler.sample(k_time, (b,), x_data.dtype)
            other = sampler.sample(jax.random.fold_in(k_time, 1), (n,), x_data.dtype)
            t_mf, r_mf = jnp.minimum(t[:n], other), jnp.maximum(t[:n], other)
            h = jnp.concatenate([r_mf - t_mf, jnp.zeros((b - n,), t.dtype)])        # h = r − t ≥ 0
            t = jnp.concatenate([t_mf, t[n:]])
            x_t = self.path.sample(x_data, noise, t)
            v = target_from_pair("velocity", self.path, x_data, noise, t)
            cond = self.training_labels(batch, k_drop)

            def net(z, tt, hh, c):
                return apply(params, z, tt, c, k_model, h=hh)

            f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
            preds, goals = [], []
            if n:
                c_mf = None if cond is None else cond[:n]
                u, goal = meanflow_target(lambda z, tt, hh: net(z, tt, hh, c_mf), x_t[:n], t[:n], h[:n], v[:n])
                preds.append(u)
                goals.append(goal)
            if n < b:
                preds.append(f32(net(x_t[n:], t[n:], h[n:], None if cond is None else cond[n:])))
                goals.append(f32(v[n:]))
            pred = jnp.concatenate(preds)
            goal = jax.lax.stop_gradient(jnp.concatenate(goals))
            if pred.shape != x_t.shape:
                raise ValueError(f"the model returned shape {pred.shape}; expected the input's {x_t.shape}")
            sq = jnp.sum(jnp.reshape((pred - goal) ** 2, (b, -1)), axis=1)            # ‖Δ‖² per example
            w = jax.lax.stop_gradient(1.0 / (sq + self.c) ** self.p)
            dim = sq.dtype.type(x_t[0].size)
            value = jnp.mean(w * sq / dim)
            aux = {"loss": value, "mse": jnp.mean(sq / dim), "t_mean": jnp.mean(t)}
            if n:
                aux["mse_r_ne_t"] = jnp.mean(sq[:n] / dim)
            if n < b:
                aux["mse_r_eq_t"] = jnp.mean(sq[n:] / dim)
            return value, aux

        return loss
