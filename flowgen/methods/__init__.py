"""Training methods: one module each, chosen by ``config.method.name`` from ``METHODS``.

    base.py            the interface (what the network takes, the loss given the train state, how it samples)
    flow_matching.py   flow matching / diffusion: regression onto a path target (the default)
    pseudo_huber.py    flow matching with the pseudo-Huber distance (a one-file method; docs/extending.md)
    cfm.py             Tong et al. 2023's I-/OT-/SB-CFM: Gaussian noise σ·s(t) around the straight interpolant
    jumps.py           what the few-step methods share: the average-velocity network's jump sampler
    meanflow.py        MeanFlow (Geng et al. 2025): average velocity u(z, t, r) from the MeanFlow identity, 1-NFE
    shortcut.py        shortcut models (Frans et al. 2024): s(x, t, d) by flow matching and self-consistency
    distill.py         one-step distillation (Liu et al. 2023): v(x₀, t_min) onto a teacher's pair, 1 NFE
    consistency.py     continuous-time consistency models (Lu & Song 2024): sCT / sCD in TrigFlow, 1-2 NFE

``build(name, path=..., source=..., num_classes=..., text_cond=..., **options)`` checks the options and builds the
method.
"""

from flowgen import options
from flowgen.methods.base import Method
from flowgen.methods.cfm import ConditionalFlowMatching
from flowgen.methods.consistency import ConsistencyModel
from flowgen.methods.distill import OneStepDistillation
from flowgen.methods.flow_matching import FlowMatching
from flowgen.methods.meanflow import MeanFlow
from flowgen.methods.pseudo_huber import PseudoHuberFlowMatching
from flowgen.methods.shortcut import Shortcut

#: The methods a config can name (``method.name``).
METHODS: dict[str, type[Method]] = {m.name: m for m in (FlowMatching, PseudoHuberFlowMatching, ConditionalFlowMatching,
                                                        MeanFlow, Shortcut, OneStepDistillation, ConsistencyModel)}


def build(name: str, **kwargs) -> Method:
    """The method ``name`` with ``kwargs`` (path, source, num_classes, text_cond and its own options), every option
    checked."""
    cls = options.choose(METHODS, name, "method")
    if kwargs.get("text_cond") and not cls.supports_text:
        raise ValueError(f"method.name={name!r} does not take text conditioning (precomputed caption embeddings); "
                         f"methods that do: {', '.join(n for n, m in METHODS.items() if m.supports_text)}")
    return options.build(METHODS, name, "method", kwargs, hidden=("path", "source", "num_classes", "text_cond"))


__all__ = ["METHODS", "ConditionalFlowMatching", "ConsistencyModel", "FlowMatching", "MeanFlow", "Method",
           "OneStepDistillation", "PseudoHuberFlowMatching", "Shortcut", "build"]
