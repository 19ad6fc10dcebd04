"""Flow matching / denoising diffusion as one method: regression of the network onto a path target.

For data x_data, a source sample x₀ paired with it by a coupling, t from a time sampler and
``x_t = α(t)·x_data + σ(t)·x₀``,

    L(θ) = E [ w_T(t) · ‖F_θ(x_t, t) − T(x_data, x₀, t)‖² / dim ]

with T the prediction target (velocity: flow matching, Lipman et al. 2023 / Liu et al. 2023; noise: DDPM, Ho et al.
2020; data: EDM, Karras et al. 2022; v; score) and w_T a weighting (``flowgen.losses``). The network's output is
the target itself, so any solver of ``fg.sample`` samples it on its path (``prediction = target``). EDM's
preconditioning, when the run asks for it, wraps the network (``flowgen.paths.precond``) and leaves this loss as
it is (target ``data``).

Options (``config.loss``): target, weighting, time_sampler, time_sampler_options, coupling,
coupling_options (e.g. ``{"solver": "auction"}`` for ``ot``), label_dropout (the probability of replacing the
label by the null label, or a caption by the null caption, zeros, for a text-conditioned run).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flowgen import losses
from flowgen.methods.base import Method


@dataclasses.dataclass(frozen=True, eq=False)
class FlowMatching(Method):
    name: ClassVar[str] = "flow_matching"
    supports_text: ClassVar[bool] = True

    target: str = "velocity"
    weighting: str = "uniform"
    time_sampler: str = "uniform"
    time_sampler_options: dict = dataclasses.field(default_factory=dict)
    coupling: str = "independent"
    coupling_options: dict = dataclasses.field(default_factory=dict)
    label_dropout: float = 0.0

    def __post_init__(self):
        self.source.check(self.path, self.target)
        self._regression(lambda *a: None)          # checks every option (make_loss validates eagerly)

    @property
    def prediction(self) -> str:
        return self.target

    def _regression(self, apply):
        """``flowgen.losses.make_loss`` with this method's options: ``loss(params, batch, key)``."""
        dropout = self.label_dropout if (self.num_classes or self.text_cond) else 0.0
        loss = losses.make_loss(
            apply, self.path, self.target, self.weighting, self.time_sampler, self.coupling,
            label_dropout=dropout, null_label=self.num_classes if (dropout > 0 and self.num_classes) else None,
            text_cond=self.text_cond,
            time_sampler_options=dict(self.time_sampler_options),
            coupling_options=dict(self.coupling_options), source=self.source)
        if self.num_classes:
            return loss
        return lambda params, batch, key: loss(params, {k: v for k, v in batch.items() if k != "label"}, key)

    def training_labels(self, batch, key):
        """The batch's class labels, each replaced by the null label (``num_classes``) with probability
        ``label_dropout``; None for an unconditional method. For losses written out in a method's own module."""
        labels = batch.get("label") if self.num_classes else None
        if labels is None or not self.label_dropout:
            return labels
        return losses.drop_labels(key, labels, self.label_dropout, self.num_classes)

    def make_loss(self, apply):
        regression = self._regression(apply)

        def loss(params, state, batch, key):
            del state                                # plain regression: the target needs no model
            return regression(params, batch, key)

        return loss
