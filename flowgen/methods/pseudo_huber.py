"""Flow matching with the pseudo-Huber distance (Song & Dhariwal 2023, iCT; Lee et al. 2024 for rectified flows).

Flow matching (``flow_matching.py``) with the squared error replaced, per example, by

    d(F, T) = sqrt(‖F − T‖² + c²) − c

which is ‖F − T‖²/(2c) for small errors and ‖F − T‖ − c for large ones: outlying pairs (large errors early in
training, or in high dimension) pull less. ``c`` is absolute; Song & Dhariwal use c = 0.00054·sqrt(dim) on
CIFAR-10. The minimiser is no longer the conditional mean exactly, so this is a training-robustness trade.

This file is the worked example of docs/extending.md: a new method is one module and one entry in ``METHODS``.
Options (``config.loss`` as for flow matching, plus ``config.method.kwargs.c``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from flowgen.couplings import get_coupling
from flowgen.methods.flow_matching import FlowMatching
from flowgen.paths.targets import target_from_pair
from flowgen.paths.time_samplers import get_time_sampler


@dataclasses.dataclass(frozen=True, eq=False)
class PseudoHuberFlowMatching(FlowMatching):
    name: ClassVar[str] = "pseudo_huber"
    supports_text: ClassVar[bool] = False   # its loss conditions on labels only (not on caption embeddings)

    c: float = 0.03

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.c, (int, float)) and self.c > 0):
            raise ValueError(f"method.kwargs.c={self.c!r}: must be a number > 0")
        if self.label_dropout:
            raise ValueError(f"loss.label_dropout={self.label_dropout!r}: method 'pseudo_huber' has no label dropout")
        if self.weighting != "uniform":
            raise ValueError(f"loss.weighting={self.weighting!r}: method 'pseudo_huber' supports only 'uniform'")

    def make_loss(self, apply):
        sampler = get_time_sampler(self.time_sampler, self.path, **dict(self.time_sampler_options))
        couple = get_coupling(self.coupling, **dict(self.coupling_options))

        def loss(params, state, batch, key):
            k_couple, k_time, k_model = jax.random.split(key, 3)
            x_data, noise = couple(k_couple, batch["x"], batch, self.source)
            t = sampler.sample(k_time, (x_data.shape[0],), x_data.dtype)
            x_t = self.path.sample(x_data, noise, t)
            goal = jax.lax.stop_gradient(target_from_pair(self.target, self.path, x_data, noise, t))
            cond = batch.get("label") if self.num_classes else None
            err = jnp.reshape(apply(params, x_t, t, cond, k_model) - goal, (x_data.shape[0], -1))
            sq = jnp.sum(err**2, axis=1)
            dist = sq / (jnp.sqrt(sq + self.c**2) + self.c)      # = sqrt(‖e‖² + c²) − c, without cancellation
            value = jnp.mean(dist)
            return value, {"loss": value, "mse": jnp.mean(err**2)}

        return loss
