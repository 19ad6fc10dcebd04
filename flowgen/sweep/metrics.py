"""The sweep's metrics: an explicit table, name → Metric class. A metric knows which data it fits, its reference
statistics (described in words for the results table) and its floor (the value real data reaches).

    metric = METRICS["pixel_fd"]("flowgen_digits", num_samples=1000)
    metric(samples)          # float, lower is better; samples (N, *element_shape) in the model's data range
    metric.floor             # float or None
    metric.reference         # "train split (1500 digits): 64-D pixel mean and covariance"

Adding a metric is one class and one entry in ``METRICS``; ``check_fits`` is what the sweep's config check calls.

A model trained on latents (``data.name = "latents"``) has two data: its own (the latents) and the image dataset its
decoded samples belong to. ``scored_data`` is the one rule of which a metric scores: image metrics the decoded images,
context metrics (``needs_context``: the model's own ODE) the latents.
"""

from __future__ import annotations

import math

import numpy as np

from flowgen.evals.sample_metrics import random_directions, sliced_w2

DIGITS = "flowgen_digits"


class Metric:
    """Base: ``name``, ``data`` (the dataset names it fits), ``reference`` and ``floor``; ``__call__`` scores.

    ``needs_context``: the metric is called as ``metric(samples, context)`` with the cell's ``CellContext``
    (``flowgen.sweep.runner``: the noise, the model and the grid's ends), e.g. to solve the same ODE accurately.
    ``fit_order``: the report fits a convergence order (−slope of log metric against log NFE) per solver."""

    name = "metric"
    description = ""
    needs_context = False
    fit_order = False

    @classmethod
    def fits(cls, data_name: str) -> bool:
        raise NotImplementedError

    def __init__(self, data_name: str, num_samples: int):
        self.data_name, self.num_samples = data_name, num_samples
        self.reference, self.floor, self.floor_note = "", None, ""
        self.floor_samples = num_samples      # the sample count the floor was measured at

    def __call__(self, samples: np.ndarray) -> float:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------- digits
# Adapters of flowgen.evals.digits_fid: the statistics, the distance and the floors live there.

class _DigitsMetric(Metric):
    """Base of the digits metrics (``flowgen.evals.digits_fid``): they fit the embedded digits only."""

    @classmethod
    def fits(cls, data_name):
        return data_name == DIGITS


class _DigitsDistance(_DigitsMetric):
    """A Fréchet distance of ``flowgen.evals.digits_fid`` (its function ``score``, in ``space``) to the train split;
    floor: what real held-out digits score *at the cells' sample count* (``digits_fid.floor_at``: the test split's
    value at sizes 60..297, fitted as a + b/N and evaluated at N; a Fréchet distance's bias falls as 1/N)."""

    score = ""
    space = ""
    floor_space = ""

    def __init__(self, data_name, num_samples):
        from flowgen.evals import digits_fid

        super().__init__(data_name, num_samples)
        self.reference = f"train split ({len(digits_fid.split_images('train')[0])} digits): {self.space} mean and " \
                         "covariance"
        self.floor = digits_fid.floor_at(num_samples, self.floor_space)
        self.floor_samples = num_samples
        self.floor_note = (f"the {digits_fid.FLOOR_SAMPLES} test digits, extrapolated to {num_samples} samples by a "
                           "+ b/N over subsets")

    def __call__(self, samples):
        from flowgen.evals import digits_fid

        return float(getattr(digits_fid, self.score)(np.asarray(samples, np.float32)))


class PixelFrechet(_DigitsDistance):
    """Fréchet distance between Gaussians fitted to the 64 pixels (clipped to [-1, 1]) of samples and of the train
    digits: a stand-in for digits-FID with no feature network, sensitive to the first two pixel moments only."""

    name = "pixel_fd"
    description = "Fréchet distance of 64-D pixel statistics to the train split"
    score, space, floor_space = "pixel_fid", "pixel", "pixels"


class DigitsFID(_DigitsDistance):
    """digits-FID: Fréchet distance in the features of a classifier trained on the digits."""

    name = "digits_fid"
    description = "digits-FID (classifier features) to the train split"
    score, space, floor_space = "digits_fid", "classifier-feature", "features"


class _DigitsHeldOut(_DigitsMetric):
    """A digits metric whose floor is its value on the 297 real test digits (``value(images)``)."""

    def __init__(self, data_name, num_samples):
        from flowgen.evals import digits_fid

        super().__init__(data_name, num_samples)
        self.reference = f"train split ({len(digits_fid.split_images('train')[0])} digits)"
        self.floor = float(self.value(digits_fid.split_images("test")[0]))
        self.floor_samples = num_samples            # not a Fréchet distance: no sample-size bias to correct
        self.floor_note = f"real: the {digits_fid.FLOOR_SAMPLES} test digits"

    def value(self, images) -> float:
        raise NotImplementedError

    def __call__(self, samples):
        return float(self.value(np.asarray(samples, np.float32)))


class DigitsKID(_DigitsHeldOut):
    """Kernel Inception distance in the digits classifier's features (unbiased MMD², cubic polynomial kernel;
    ``flowgen.evals.feature_metrics.kid``): unbiased at any sample count, so cells and floor compare directly."""

    name = "digits_kid"
    description = "KID (classifier features, unbiased; lower is better) to the train split"

    def value(self, images):
        from flowgen.evals import digits_fid

        return digits_fid.kid(images)[0]


class _DigitsManifold(_DigitsHeldOut):
    """Precision and recall depend on the sample count (k-NN radii): the floor is measured at the 297 real test
    digits, and the report says so beside cells of another size."""

    def __init__(self, data_name, num_samples):
        from flowgen.evals import digits_fid

        super().__init__(data_name, num_samples)
        self.floor_samples = digits_fid.FLOOR_SAMPLES


class DigitsPrecision(_DigitsManifold):
    """Precision (Kynkäänniemi et al. 2019): the fraction of samples inside the k = 3 nearest-neighbour balls of
    the train digits' features. Higher is better; low precision = samples off the data (blurry, malformed)."""

    name = "digits_precision"
    description = "precision, k-NN manifold of the train digits' features (higher is better)"

    def value(self, images):
        from flowgen.evals import digits_fid

        return digits_fid.precision_recall(images)[0]


class DigitsRecall(_DigitsManifold):
    """Recall (Kynkäänniemi et al. 2019): the fraction of train digits inside the samples' k-NN balls. Higher is
    better; low recall = a narrow model (missing styles or classes)."""

    name = "digits_recall"
    description = "recall, k-NN manifold of the samples' features (higher is better)"

    def value(self, images):
        from flowgen.evals import digits_fid

        return digits_fid.precision_recall(images)[1]


class Legible(_DigitsHeldOut):
    """The fraction of samples the shipped classifier assigns to one class with probability ≥ 0.9
    (``digits_fid.legible_fraction``); real held-out digits score the floor. Higher is better. A figure that
    digits-FID can hide: half-formed digits may still match the features' first two moments."""

    name = "legible"
    description = "fraction classified with probability >= 0.9 (higher is better)"

    def value(self, images):
        from flowgen.evals import digits_fid

        return digits_fid.legible_fraction(images)


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


class _ToyDistance(Metric):
    """A distance to ``num_samples`` fresh points of a 2-D toy set (drawn with ``TRUE_SEED``); floor: the same
    distance between independent true sets of that size (``_floor``)."""

    TRUE_SEED = 0

    @classmethod
    def fits(cls, data_name):
        from flowgen.data import toy

        return data_name in toy.TOY_DATASETS

    def __init__(self, data_name, num_samples):
        from flowgen.data import toy

        super().__init__(data_name, num_samples)
        self._true = np.asarray(toy.toy_batch(data_name, self.TRUE_SEED, 0, num_samples), np.float64)
        self.reference = f"{num_samples} samples of {data_name!r}"
        self.floor, self.floor_note = _floor(self, data_name, num_samples, lambda v: v)


class SlicedW2(_ToyDistance):
    """Sliced W2 (128 directions) to as many fresh samples of the 2-D data set; floor: other true samples of the
    same size (the Monte-Carlo noise of the estimate, averaged over several sets)."""

    name = "sliced_w2"
    description = "sliced W2 to fresh data samples (128 directions)"
    TRUE_SEED = 12345
    _directions = random_directions(128, 2, seed=0)

    def __call__(self, samples):
        return sliced_w2(np.asarray(samples, np.float64).reshape(len(samples), -1), self._true, self._directions)


class ExactW2(_ToyDistance):
    """Exact W2 (an optimal assignment by scipy, ``flowgen.evals.sample_metrics.wasserstein2``) to as many fresh
    held-out samples of the 2-D data set; floor: the same between independent true sets of that size (averaged)."""

    name = "w2"
    description = "exact W2 (optimal assignment) to fresh held-out data samples"
    TRUE_SEED = 23456

    def __call__(self, samples):
        from flowgen.evals.sample_metrics import wasserstein2

        return wasserstein2(np.asarray(samples, np.float64).reshape(len(samples), -1), self._true)


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


# ----------------------------------------------------------------------------------------------------- any model

class ODEError(Metric):
    """The solver's own error: RMS over all coordinates of x − x_ref, where x_ref is the same model's
    probability-flow ODE solved from the same start σ(t₀)·noise over the same [t₀, t_N] by dopri5 at
    rtol = atol = ``REFERENCE_TOL`` (``context.reference()``; one solve per model, seed and interval). NaN for
    stochastic solvers (they solve no ODE). Use ``dtype = "float64"`` in the sweep config to resolve errors below
    float32's ~1e-6. Floor: none (0 is exact); the report fits convergence orders."""

    name = "ode_error"
    description = "RMS distance to the same ODE solved by dopri5 at rtol = atol = 1e-10 (float32: 1e-6)"
    needs_context = True
    fit_order = True

    @classmethod
    def fits(cls, data_name):
        return True

    def __init__(self, data_name, num_samples):
        super().__init__(data_name, num_samples)
        self.reference = "the same ODE from the same noise, dopri5"
        self.floor_note = "none: 0 is exact"

    def __call__(self, samples, context):
        if context.stochastic:
            return math.nan
        reference = context.reference()
        diff = np.asarray(samples, np.float64) - np.asarray(reference, np.float64)
        return float(np.sqrt(np.mean(diff**2)))


class Straightness(Metric):
    """Liu et al. 2023's straightness of the model's probability-flow ODE, S = (1/T)·∫ ‖(x_end − x_start)/T −
    v(x_t, t)‖² dt averaged over trajectories (``flowgen.evals.sample_metrics.straightness``; on [0, 1] exactly
    Liu et al.'s S, 0 for straight constant-speed paths), on the trajectories from the cell's noise over its
    interval solved by RK4 with ``STEPS`` steps (``context.trajectory``). A property of the model, not of the cell's
    solver: the same for every solver and budget of a model and seed. NaN for a method's own sampler (its jumps
    follow no ODE) and for guided cells."""

    name = "straightness"
    description = "Liu et al.'s straightness of the model's ODE (RK4, 64 steps), 0 = straight"
    needs_context = True
    STEPS = 64

    @classmethod
    def fits(cls, data_name):
        return True

    def __init__(self, data_name, num_samples):
        super().__init__(data_name, num_samples)
        self.reference = f"the model's own ODE from the cell's noise (RK4, {self.STEPS} steps)"
        self.floor_note = "none: 0 is straight"

    def __call__(self, samples, context):
        from flowgen.evals.sample_metrics import straightness

        if context.cell.solver.own or context.cell.guidance is not None:
            return math.nan
        times, xs, vs = context.trajectory(self.STEPS)
        flat = lambda a: a.reshape(a.shape[0], a.shape[1], -1)  # noqa: E731
        return straightness(times, flat(xs), flat(vs))


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (
    DigitsFID, PixelFrechet, DigitsKID, DigitsPrecision, DigitsRecall, Legible, SlicedW2, ExactW2, NLLGap, ODEError,
    Straightness)}


def score(metric: Metric, samples, context) -> float:
    """``metric`` on ``samples``, with the cell's context if it needs one."""
    return metric(samples, context) if metric.needs_context else metric(samples)


def scored_data(metric: str, data_name: str, decoded_data: str | None = None) -> str:
    """The data ``metric`` scores for a model of ``data_name`` whose samples decode to images of ``decoded_data``
    (a latent model; None: no decoder): the decoded images for an image metric, the model's own samples for a
    context metric (``needs_context``) and for every metric of a model without a decoder."""
    cls = METRICS.get(metric)
    return decoded_data if decoded_data is not None and cls is not None and not cls.needs_context else data_name


def check_fits(metric: str, data_name: str, model: str, decoded_data: str | None = None) -> None:
    """ValueError unless ``metric`` exists, is available and fits the data it scores of ``model``
    (``scored_data``: a latent model's image metrics score its decoded images of ``decoded_data``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    data = scored_data(metric, data_name, decoded_data)
    if not METRICS[metric].fits(data):
        fitting = [name for name in METRICS if METRICS[name].fits(scored_data(name, data_name, decoded_data))]
        what = f"{data!r} (its {data_name} decoded)" if data != data_name else repr(data)
        raise ValueError(f"metric {metric!r} does not fit the data {what} of model {model!r}; metrics for "
                         f"{what}: {', '.join(fitting) or 'none'}")
