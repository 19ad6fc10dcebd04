"""The sweep's metrics: an explicit table, name → Metric class. A metric knows which data it fits, its reference
statistics (described in words for the results table) and its floor (the value real data reaches).

    metric = METRICS["pixel_fd"]("flowgen_digits", num_samples=1000)
    metric(samples)          # float, lower is better; samples (N, *element_shape) in the model's data range
    metric.floor             # float or None
    metric.reference         # "train split (1500 digits): 64-D pixel mean and covariance"

Adding a metric is one class and one entry in ``METRICS``; ``check_fits`` is what the sweep's config check calls.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from flowgen.evals.sample_metrics import random_directions, sliced_w2

DIGITS = "flowgen_digits"


class Metric:
    """Base: ``name``, ``data`` (the dataset names it fits), ``reference`` and ``floor``; ``__call__`` scores."""

    name = "metric"
    description = ""

    @classmethod
    def fits(cls, data_name: str) -> bool:
        raise NotImplementedError

    @classmethod
    def available(cls) -> str | None:
        """None if usable in this checkout, else why not."""
        return None

    def __init__(self, data_name: str, num_samples: int):
        self.data_name, self.num_samples = data_name, num_samples
        self.reference, self.floor, self.floor_note = "", None, ""
        self.floor_samples = num_samples      # the sample count the floor was measured at

    def __call__(self, samples: np.ndarray) -> float:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------- digits

def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁^½ Σ₂ Σ₁^½)^½ (Dowson & Landau 1982; FID, Heusel et al. 2017).

    The trace term is computed from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½, which stays exact
    when a covariance is singular (the digits' corner pixels never vary), where ``scipy.linalg.sqrtm(Σ₁Σ₂)`` warns.
    """
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def digits_split(split: str) -> np.ndarray:
    """The digits of a split as the models see them: (N, 8, 8, 1) float64 in [-1, 1]."""
    from flowgen.data import digits

    images, _ = digits.digits_images()
    start, stop = digits.SPLITS[split]
    return images[start:stop].astype(np.float64) * (2.0 / 255.0) - 1.0


def _stats(x: np.ndarray):
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    return flat.mean(0), np.cov(flat, rowvar=False)


class PixelFrechet(Metric):
    """Fréchet distance between Gaussians fitted to the 64 pixels of samples and of the train digits.

    A stand-in for digits-FID (no feature network): sensitive to the first two pixel moments only. Samples are
    clipped to the data range [-1, 1] first, as images are before they are shown or saved (and as digits-FID
    does)."""

    name = "pixel_fd"
    description = "Fréchet distance of 64-D pixel statistics to the train split"

    @classmethod
    def fits(cls, data_name):
        return data_name == DIGITS

    def __init__(self, data_name, num_samples):
        super().__init__(data_name, num_samples)
        train = digits_split("train")
        self._mu, self._cov = _stats(train)
        test = digits_split("test")
        self.reference = f"train split ({len(train)} digits): pixel mean and covariance"
        self.floor = self(test)
        self.floor_note, self.floor_samples = f"the {len(test)} test digits", len(test)

    def __call__(self, samples):
        samples = np.asarray(samples, np.float64)
        if not np.all(np.isfinite(samples)):
            return math.nan
        return frechet_distance(*_stats(np.clip(samples, -1.0, 1.0)), self._mu, self._cov)


class DigitsFID(Metric):
    """digits-FID: Fréchet distance in the features of a classifier trained on the digits
    (``flowgen.evals.digits_fid``), against the train split; floor: the test split's own value."""

    name = "digits_fid"
    description = "digits-FID (classifier features) to the train split"
    module = "flowgen.evals.digits_fid"

    @classmethod
    def fits(cls, data_name):
        return data_name == DIGITS

    @classmethod
    def available(cls):
        if importlib.util.find_spec(cls.module) is None:
            return f"{cls.module} is not in this checkout"
        return None

    def __init__(self, data_name, num_samples):
        super().__init__(data_name, num_samples)
        self._module = importlib.import_module(self.module)
        self.reference = "train split: classifier-feature mean and covariance"
        self.floor = float(self._module.floor())
        self.floor_samples = int(getattr(self._module, "FLOOR_SAMPLES", 297))
        self.floor_note = f"the {self.floor_samples} test digits"

    def __call__(self, samples):
        samples = np.asarray(samples, np.float32)
        if not np.all(np.isfinite(samples)):
            return math.nan
        return float(self._module.digits_fid(samples))


# ----------------------------------------------------------------------------------------------------- 2-D

FLOOR_REPEATS = 8


def _floor(metric, data_name: str, num_samples: int, fold) -> tuple[float, str]:
    """Mean of ``fold(metric(true samples))`` over independent true sets of the cells' size (their spread is large:
    with 8 modes, the mode counts of two sets of n samples differ by about sqrt(n/8) each)."""
    from flowgen.data import toy

    values = [fold(metric(np.asarray(toy.toy_batch(data_name, 54321 + i, 0, num_samples), np.float64)))
              for i in range(FLOOR_REPEATS)]
    return float(np.mean(values)), (f"true samples of the same size: mean of {FLOOR_REPEATS} sets, std "
                                     f"{np.std(values, ddof=1):.2g}")


class SlicedW2(Metric):
    """Sliced W2 (128 directions) to as many fresh samples of the 2-D data set; floor: other true samples of the
    same size (the Monte-Carlo noise of the estimate, averaged over several sets)."""

    name = "sliced_w2"
    description = "sliced W2 to fresh data samples (128 directions)"

    @classmethod
    def fits(cls, data_name):
        from flowgen.data import toy

        return data_name in toy.TOY_DATASETS

    def __init__(self, data_name, num_samples):
        from flowgen.data import toy

        super().__init__(data_name, num_samples)
        self._directions = random_directions(128, 2, seed=0)
        self._true = np.asarray(toy.toy_batch(data_name, 12345, 0, num_samples), np.float64)
        self.reference = f"{num_samples} samples of {data_name!r}"
        self.floor, self.floor_note = _floor(self, data_name, num_samples, lambda v: v)

    def __call__(self, samples):
        return sliced_w2(np.asarray(samples, np.float64).reshape(len(samples), -1), self._true, self._directions)


class NLLGap(Metric):
    """mean −log p(samples) − mean −log p(true samples) under the exact density of a Gaussian-mixture data set."""

    name = "nll_gap"
    description = "mean NLL of samples minus that of true samples, exact mixture density"

    @classmethod
    def fits(cls, data_name):
        from flowgen.data import toy

        return data_name in toy.MIXTURE_DATASETS

    def __init__(self, data_name, num_samples):
        import jax.numpy as jnp

        from flowgen.data import toy

        super().__init__(data_name, num_samples)
        mixture = toy.toy_mixture(data_name)
        self._log_prob = lambda x: np.asarray(mixture.log_prob(jnp.asarray(x, jnp.float32)), np.float64)
        true = np.asarray(toy.toy_batch(data_name, 12345, 0, num_samples), np.float64)
        self._true_nll = -self._log_prob(true).mean()
        self.reference = f"{num_samples} samples of {data_name!r}"
        self.floor, self.floor_note = _floor(self, data_name, num_samples, abs)

    def __call__(self, samples):
        nll = -self._log_prob(np.asarray(samples).reshape(len(samples), -1))
        return float(nll.mean() - self._true_nll) if np.all(np.isfinite(nll)) else math.nan


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (DigitsFID, PixelFrechet, SlicedW2, NLLGap)}


def check_fits(metric: str, data_name: str, model: str) -> None:
    """ValueError unless ``metric`` exists, is available and fits the data of ``model``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    cls = METRICS[metric]
    if not cls.fits(data_name):
        fitting = [name for name, c in METRICS.items() if c.fits(data_name)]
        raise ValueError(f"metric {metric!r} does not fit the data {data_name!r} of model {model!r}; metrics for "
                         f"{data_name!r}: {', '.join(fitting) or 'none'}")
    why = cls.available()
    if why:
        raise ValueError(f"metric {metric!r} is not available: {why}")
