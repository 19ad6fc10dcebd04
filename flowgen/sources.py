"""Source distributions: where x₀ (the "noise" end of a path, t = 0) comes from.

    gaussian     N(0, I): the prior of every diffusion model and of flow matching as usually trained (the default)
    <toy set>    any 2-D toy set of ``flowgen.data.toy`` (e.g. ``moons``): flow matching between two data sets,
                 as in Tong et al. 2023 (moons → 8 gaussians)

A source is ``sample(key, shape, dtype) -> x₀`` (pure, jittable). During training a coupling pairs a source batch with
a data batch (``flowgen.couplings``); at sampling time the first state is ``σ(t₀)·x₀`` (``fg.sample(noise=x₀)``).

Only a Gaussian source makes x₀ "noise" in the diffusion sense: with any other source the path
``x_t = α(t)·x_data + σ(t)·x₀`` is an interpolant, which needs α(0) = 0 and σ(0) = 1 (the sampler starts from the
source itself), and the score target (−x₀/σ) is no score. ``check_path`` refuses those combinations.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from flowgen.paths.schedules import Path, host_eval


@dataclasses.dataclass(frozen=True)
class Source:
    name: ClassVar[str] = "source"
    gaussian: ClassVar[bool] = False

    def sample(self, key, shape, dtype):
        raise NotImplementedError

    def check(self, path: Path, target: str) -> None:
        """Raise ValueError (naming the source, the path and what would work) if this source cannot train ``target``
        on ``path``."""

    def check_shape(self, element_shape) -> None:
        """Raise ValueError if this source cannot give examples of ``element_shape``."""


@dataclasses.dataclass(frozen=True)
class Gaussian(Source):
    """x₀ ~ N(0, I)."""

    name: ClassVar[str] = "gaussian"
    gaussian: ClassVar[bool] = True

    def sample(self, key, shape, dtype):
        return jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class ToySource(Source):
    """x₀ from a 2-D toy set of ``flowgen.data.toy`` (its parameters in ``kwargs``)."""

    name: ClassVar[str] = "toy"
    dataset: str = "moons"
    kwargs: tuple = ()

    def sample(self, key, shape, dtype):
        from flowgen.data import toy

        if len(shape) != 2 or shape[1] != 2:
            raise ValueError(f"source {self.dataset!r} gives 2-D points; asked for shape {shape}")
        return toy.TOY_DATASETS[self.dataset](key, shape[0], dtype, **dict(self.kwargs))

    def check_shape(self, element_shape) -> None:
        if tuple(element_shape) != (2,):
            raise ValueError(f"source.name={self.dataset!r} gives 2-D points; the data have shape "
                             f"{tuple(element_shape)}: use source 'gaussian'")

    def check(self, path: Path, target: str) -> None:
        a0, s0 = host_eval(path.alpha, np.zeros(1))[0], host_eval(path.sigma, np.zeros(1))[0]
        if abs(a0) > 1e-12 or abs(s0 - 1.0) > 1e-12:
            raise ValueError(f"source.name={self.dataset!r} is not Gaussian: the path must start at the source "
                             f"(α(0) = 0, σ(0) = 1), but {path!r} has α(0) = {a0:.3g}, σ(0) = {s0:.3g}; use path "
                             "'linear' or 'trig', or source 'gaussian'")
        from flowgen.paths.targets import get_target

        if get_target(target).needs_gaussian_source:
            raise ValueError(f"loss.target='score' is −x₀/σ, a score only for a Gaussian source; with source "
                             f"{self.dataset!r} use 'velocity', 'data' or 'noise'")


def source_names() -> list[str]:
    from flowgen.data import toy

    return ["gaussian", *sorted(toy.TOY_DATASETS)]


def get_source(name: str, **kwargs) -> Source:
    """``gaussian`` or the name of a 2-D toy set (with its keyword arguments)."""
    from flowgen.data import toy

    if name == "gaussian":
        if kwargs:
            raise ValueError(f"source 'gaussian' takes no options; got {sorted(kwargs)}")
        return Gaussian()
    if name in toy.TOY_DATASETS:
        return ToySource(name, tuple(sorted(kwargs.items())))
    raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(source_names())}")


#: The default source, N(0, I).
GAUSSIAN = Gaussian()
