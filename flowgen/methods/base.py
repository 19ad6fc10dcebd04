"""The interface every training method implements (one module per method, one entry in ``flowgen.methods.METHODS``).

A method answers three questions, and nothing else in flowgen asks them by name:

1. **What does the network take?** ``extra_times``: the time-like inputs besides x and t (MeanFlow's r, a shortcut
   model's step size d), passed to the network as ``times={name: (B,)}``; labels when the run is conditional, or
   a caption's embeddings ``{"context", "pooled"}`` (``text_cond``, for methods with ``supports_text``).
2. **What is the loss?** ``make_loss(apply) -> loss(params, state, batch, key) -> (loss, aux)``, where
   ``apply(params, x_t, t, cond, rng, **times)`` is the training-mode network, ``params`` the parameters being
   differentiated and ``state`` the whole train state (``step``, ``params``, ``opt_state``, ``ema``) — not
   differentiated, so a method may regress onto its EMA, a stop-gradient copy, or a frozen teacher it holds.
   ``aux`` is a dict of scalars that are logged.
3. **How does it sample?** ``sample(apply, params, noise, *, key, solver, num_steps, grid, cond, guidance,
   null_cond) -> (x, info)`` with ``apply(params, x_t, t[, cond])`` the sampling-mode network, and ``info["nfe"]``
   (model calls per sample) and ``info["forward_passes"]`` *measured*, as ``fg.sample`` counts them.
   ``prediction`` names what the sampling-mode network predicts (a ``flowgen.paths`` target), so any solver of
   ``fg.sample`` and the sweep can use a trained model of this method on its ``path``.

Methods are frozen dataclasses built from the run's config before anything compiles; ``__post_init__`` checks
every option and raises ValueError naming the bad value and the valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flowgen.paths.schedules import Path
from flowgen.sources import GAUSSIAN, Source


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """Base class; see the module docstring. Subclasses set ``name`` and implement ``make_loss`` (and ``sample`` if
    the default, ``fg.sample`` on the method's path and prediction, is not how it samples)."""

    name: ClassVar[str] = "method"
    #: Time-like inputs of the network besides t.
    extra_times: ClassVar[tuple[str, ...]] = ()
    #: Names of the method's own samplers that ``sample.solver`` may name besides ``fg.sample``'s solvers (a
    #: few-step method's sampler, e.g. "meanflow"); ``sample`` dispatches on them.
    samplers: ClassVar[tuple[str, ...]] = ()
    #: Those of ``samplers`` that draw fresh noise (a sweep reports no ODE error for them).
    stochastic_samplers: ClassVar[tuple[str, ...]] = ()
    #: True if the method trains on a teacher's pairs only (``data.name = "pairs"``, coupling "given"; e.g.
    #: distillation), never on a data set directly.
    trains_on_pairs: ClassVar[bool] = False
    #: True if the method takes text conditioning (batches with precomputed caption embeddings "context" and
    #: "pooled", ``flowgen.data.text``) besides labels.
    supports_text: ClassVar[bool] = False

    path: Path
    source: Source = GAUSSIAN
    num_classes: int | None = None
    text_cond: bool = False      # conditioned on captions: cond = {"context", "pooled"}, null caption = zeros

    @property
    def prediction(self) -> str:
        raise NotImplementedError

    def make_loss(self, apply):
        raise NotImplementedError

    def solver_model(self, apply):
        """The network as ``fg.sample``'s solvers call it: ``(params, x_t, t[, cond])`` → a ``prediction``."""
        return apply

    def sampler_steps(self, sampler: str, nfe_budget: int) -> int | None:
        """The most steps of the method's own ``sampler`` whose NFE fits ``nfe_budget``, or None if none does (what
        an NFE sweep asks). Default: one network call per step, and the largest count ``check_sampler`` accepts."""
        for num_steps in range(int(nfe_budget), 0, -1):
            try:
                self.check_sampler(sampler, num_steps, "uniform")
            except ValueError:
                continue
            return num_steps
        return None

    def check_sampler(self, solver: str, num_steps: int, grid: str, guidance=None) -> None:
        """Raise ValueError (naming the ``sample.*`` key, the value and the valid ones) if the method's own sampler
        ``solver`` cannot take these settings; config validation calls it, so a run fails before it trains."""

    def sample(self, apply, params, noise, *, key, solver: str, num_steps: int, grid: str = "uniform",
               cond=None, guidance=None, null_cond=None, solver_options=None):
        """Integrate from ``σ(t₀)·noise`` (noise drawn from the source) with one of ``fg.sample``'s solvers."""
        import flowgen as fg

        kwargs = {} if cond is None else {"cond": cond}
        if guidance is not None:
            kwargs.update(guidance=guidance, null_cond=null_cond)
        return fg.sample(apply, self.path, target=self.prediction, solver=solver, num_steps=num_steps, grid=grid,
                         key=key, noise=noise, params=params, solver_options=solver_options, **kwargs)
