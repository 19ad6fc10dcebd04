"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models"): a network
s_θ(x, t, d) conditioned on the step size d, trained by flow matching at d = 0 and by self-consistency across
step sizes, sampled in 1, 2, 4, … 2^K jumps.

**Shortcut, in flowgen's time** (t = 0 noise, t = 1 data, as in the paper): the exact shortcut is the average
velocity over the step, s(x_t, t, d) = (Φ_{t→t+d}(x_t) − x_t)/d, s(x_t, t, 0) = v(x_t, t), so x_t + d·s lands on
the probability flow. It composes: two d-steps make one 2d-step,

    s(x_t, t, 2d) = ½·[ s(x_t, t, d) + s(x'_{t+d}, t + d, d) ],      x'_{t+d} = x_t + d·s(x_t, t, d).

**Loss**: the batch of B is split; the first m = round(f·B) examples (f = ``self_consistency_fraction``, the paper's
1/4) train self-consistency, the other B − m flow matching at d = 0 (``FlowMatching``'s velocity loss on them, the
network called with d = 0):

    L = [ (B − m)·E‖s_θ(x_t, t, 0) − (α̇·x_data + σ̇·x₀)‖²/D  +  m·E‖s_θ(x_t, t, 2d) − sg(s_tgt)‖²/D ] / B,
    s_tgt = ½·[ s_θ⁻(x_t, t, d) + s_θ⁻(x_t + d·s_θ⁻(x_t, t, d), t + d, d) ].

θ⁻ are the slowest EMA's parameters (``target_params = "ema"``, the authors' released code: ``bootstrap_ema = 1``;
``"params"`` uses the online parameters under stop-gradient). Step sizes are powers of two of the path's interval
T = t_max − t_min: the self-consistency examples cycle through 2d = T·2^−j, j = 0 … K − 1 (1 … 1/64 for K = 7) with
t on that step's grid, t = t_min + k·2d, k uniform in [0, 2^j) (so t + 2d ≤ t_max); the finest half step d = T/2^K
(1/128) is queried at d = 0 (the paper: "when d is at its smallest value, we instead query the model at d = 0"),
so the flow-matching velocity anchors the recursion. The conditional velocity makes the d = 0 term valid on any
affine path and coupling; the self-consistency term holds for any flow.

**Sampling** (``sample.solver = "shortcut"``): M = ``num_steps`` ∈ {1, 2, 4, …, 2^K} jumps of d = T/M,
x ← x + d·s_θ(x, t, d) (d = T/2^K queried at 0, as in training); NFE = M, measured (``flowgen.methods.jumps``).
Classifier-free guidance of s at sampling is available (the paper's ImageNet runs use it).

Options (``config.method.kwargs``): ``self_consistency_fraction`` (0.25), ``levels`` (K = 7: d down to 1/128),
``target_params`` ("ema" or "params"). From ``config.loss``: time_sampler (+ options; the flow-matching part's t),
coupling, label_dropout (flow-matching part only); target must be "velocity" and weighting "uniform".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.couplings import get_coupling
from flowgen.methods.jumps import JumpMethod

TARGET_PARAMS = ("ema", "params")


def _bcast(v, x):
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


@dataclasses.dataclass(frozen=True, eq=False)
class Shortcut(JumpMethod):
    name: ClassVar[str] = "shortcut"
    extra_times: ClassVar[tuple[str, ...]] = ("d",)
    samplers: ClassVar[tuple[str, ...]] = ("shortcut",)

    self_consistency_fraction: float = 0.25
    levels: int = 7
    target_params: str = "ema"

    def __post_init__(self):
        super().__post_init__()
        f = self.self_consistency_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"method.kwargs.self_consistency_fraction={f!r}: must be a number in [0, 1)")
        k = self.levels
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 16:
            raise ValueError(f"method.kwargs.levels={self.levels!r}: must be an integer in [1, 16] (the finest step "
                             "is 2^-levels of the path's interval)")
        if self.target_params not in TARGET_PARAMS:
            raise ValueError(f"method.kwargs.target_params={self.target_params!r} is not one of: "
                             f"{', '.join(TARGET_PARAMS)}")

    @property
    def span(self) -> float:
        return float(self.path.t_max - self.path.t_min)

    def query_step(self, d):
        """The step size the network is given for a step of size d: d, except the finest d = T/2^K, queried at 0."""
        finest = self.span / 2**self.levels
        return jnp.where(d <= finest * (1 + 1e-3), jnp.zeros_like(d), d)

    def jump_times(self, t0, t1) -> dict:
        return {"d": self.query_step(t1 - t0)}

    def check_jumps(self, num_steps) -> None:
        valid = [2**j for j in range(self.levels + 1)]
        if num_steps not in valid:
            raise ValueError(f"sample.num_steps={num_steps}: sampler 'shortcut' takes a power of two up to "
                             f"2^levels = {valid[-1]}: one of {valid}")

    def make_loss(self, apply):
        flow_matching = self._regression(lambda p, x, t, c, rng: apply(p, x, t, c, rng, d=jnp.zeros_like(t)))
        couple = get_coupling(self.coupling)
        span, levels = self.span, self.levels

        def loss(params, state, batch, key):
            b = batch["x"].shape[0]
            m = int(round(self.self_consistency_fraction * b))
            fm_batch = jax.tree.map(lambda a: a[m:], batch)
            fm_loss, aux = flow_matching(params, fm_batch, key) if m < b else (0.0, {})
            if not m:
                return fm_loss, aux
            if self.target_params == "ema":
                if not state.ema:
                    raise ValueError("method 'shortcut' with target_params='ema' needs an EMA (ema.decays); or set "
                                     "method.kwargs.target_params='params'")
                target_p = state.ema[max(state.ema, key=lambda name: float(name.split("_", 1)[1]))]
            else:
                target_p = params
            target_p = jax.lax.stop_gradient(target_p)
            k_couple, k_time, k_model = jax.random.split(jax.random.fold_in(key, 1), 3)
            sc_batch = jax.tree.map(lambda a: a[:m], batch)
            x_data, noise = couple(k_couple, sc_batch["x"], sc_batch, self.source)
            cond = sc_batch.get("label") if self.num_classes else None
            j = jnp.arange(m) % levels                                   # level of each example: 2d = T·2^-j
            two_d = span * jnp.exp2(-j.astype(x_data.dtype))
            d = two_d / 2
            k = jnp.floor(jax.random.uniform(k_time, (m,), x_data.dtype) * jnp.exp2(j.astype(x_data.dtype)))
            t = self.path.t_min + k * two_d
            x_t = self.path.sample(x_data, noise, t)
            d_query = self.query_step(d)

            def target_net(x, tt):
                return apply(target_p, x, tt, cond, k_model, d=d_query)

            s1 = target_net(x_t, t)
            s2 = target_net(x_t + _bcast(d, x_t) * s1, t + d)
            goal = jax.lax.stop_gradient(0.5 * (s1 + s2)).astype(jnp.float32)
            pred = apply(params, x_t, t, cond, k_model, d=two_d).astype(jnp.float32)
            sc_err = jnp.mean(jnp.reshape((pred - goal) ** 2, (m, -1)), axis=1)
            sc_loss = jnp.mean(sc_err)
            value = ((b - m) * fm_loss + m * sc_loss) / b
            return value, {**{f"fm_{k}": v for k, v in aux.items()}, "loss": value, "sc_mse": sc_loss}

        return loss
