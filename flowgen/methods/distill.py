"""One-step distillation of a flow (Liu, Gong & Liu 2023, "Flow Straight and Fast", §2.3 "distillation"): regress
the network at the start time onto the straight line from each x₀ to the endpoint a teacher's ODE sends it to.

A teacher (e.g. a k-rectified flow) gives pairs (x₀, x₁ = Φ_{t_min→t_max}(σ(t_min)·x₀)) by an accurate solve
(``flowgen.reflow.generate_pairs``; ``data.name = "pairs"``, coupling ``given``). With x_start = σ(t_min)·x₀ (where
every sampler of ``fg.sample`` starts) and T = t_max − t_min,

    L(θ) = E ‖ v_θ(x_start, t_min) − (x₁ − x_start)/T ‖² / D,

so one Euler step x_start + T·v_θ(x_start, t_min) is the student's sample: 1 network call, measured by
``fg.sample``. On the linear path (σ(0) = 1, T = 1) this is Liu et al.'s T(z₀) = z₀ + v(z₀, 0) fitted to z₁. The
network is trained at t_min only: it is a one-step map, not a velocity field (its values at other times are
untrained), so its sampler is ``one_step`` (``num_steps`` must be 1). The minimiser is the conditional mean
E[x₁ | x₀], which is x₁ itself for deterministic pairs: the better the teacher's ODE, the better the student.

Options (``config.loss``): coupling must be "given" (the pairs), target "velocity" (what the network predicts),
label_dropout (conditional models). The time sampler and weighting are not used (t = t_min).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.couplings import get_coupling
from flowgen.methods.flow_matching import FlowMatching


@dataclasses.dataclass(frozen=True, eq=False)
class OneStepDistillation(FlowMatching):
    name: ClassVar[str] = "distill"
    supports_text: ClassVar[bool] = False   # its loss conditions on labels only (not on caption embeddings)
    samplers: ClassVar[tuple[str, ...]] = ("one_step",)
    trains_on_pairs: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.coupling != "given":
            raise ValueError(f"loss.coupling={self.coupling!r}: method 'distill' regresses onto a teacher's pairs; "
                             "set loss.coupling='given' and data.name='pairs' (pairs from flowgen.reflow)")
        if self.target != "velocity":
            raise ValueError(f"loss.target={self.target!r}: method 'distill' predicts the step's velocity; set "
                             "loss.target='velocity'")

    def check_sampler(self, solver: str, num_steps: int, grid: str, guidance=None) -> None:
        if solver in self.samplers and num_steps != 1:
            raise ValueError(f"sample.num_steps={num_steps!r}: sampler {solver!r} is one step (the network is "
                             "trained at the start time only); set sample.num_steps=1")

    def sample(self, apply, params, noise, *, key, solver: str, num_steps: int, grid: str = "uniform",
               cond=None, guidance=None, null_cond=None, solver_options=None):
        """``one_step``: one Euler step over the whole interval (1 NFE); any other name: ``fg.sample``'s solver."""
        if solver in self.samplers:
            self.check_sampler(solver, num_steps, grid, guidance)
            solver, grid, solver_options = "euler", "uniform", None
        return super().sample(apply, params, noise, key=key, solver=solver, num_steps=num_steps, grid=grid,
                              cond=cond, guidance=guidance, null_cond=null_cond, solver_options=solver_options)

    def make_loss(self, apply):
        couple = get_coupling(self.coupling)
        path = self.path
        t_min, span = float(path.t_min), float(path.t_max - path.t_min)

        def loss(params, state, batch, key):
            del state                                  # the teacher is in the pairs
            k_couple, k_drop, k_model = jax.random.split(key, 3)
            x_data, noise = couple(k_couple, batch["x"], batch, self.source)
            b = x_data.shape[0]
            x_start = (path.sigma(t_min) * noise).astype(x_data.dtype)
            goal = ((x_data - x_start) / span).astype(jnp.float32)
            cond = self.training_labels(batch, k_drop)
            pred = apply(params, x_start, jnp.full((b,), t_min, x_data.dtype), cond, k_model).astype(jnp.float32)
            value = jnp.mean((pred - goal) ** 2)
            return value, {"loss": value}

        return loss
