"""Digits-FID: the Fréchet distance in the feature space of a small CNN trained on scikit-learn's 8×8 digits.

The Fréchet (2-Wasserstein between Gaussians) distance of Heusel et al. 2017,

    FD = ||μ₁ − μ₂||² + tr(Σ₁ + Σ₂ − 2·(Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}),

between the mean and covariance of a model's samples and those of the ``flowgen_digits`` **train** split
(images 0..1499, the split the digits configs train on), computed on the 64 penultimate (post-ReLU) features of
``DigitsClassifier``. The classifier is trained on the train split only by
``python -m flowgen.evals.train_digits_classifier`` and ships in ``flowgen/evals/data/`` with its sha256 and
accuracy (``digits_classifier.json``); ``load_classifier`` refuses a file whose hash differs.

Images are float in [-1, 1] of shape (N, 8, 8, 1) or (N, 8, 8), scaled as the data pipeline scales the dataset
(``flowgen.data.pipeline.to_model_range``: uint8 p → p/255·2 − 1, where p = round(v·255/16) for scikit-learn's
intensities v ∈ 0..16). Generated images are clipped to [-1, 1] and are *not* quantised (the dataset's pixels take
only 17 levels; snapping to them would change every model's score by a different amount). A set containing a
non-finite value scores NaN.

Like every FID, the estimate is biased upwards by a term that shrinks as 1/N: compare sets of equal size, and
report ``floor()`` — the digits-FID of the 297 held-out **test** digits against the train statistics — as the
value real data of that size reaches. ``pixel_fid`` is the same distance on the raw 64 pixels.

The classifier runs over all devices of all processes (``flowgen.evals.sharded``: fixed micro-batches, outputs
gathered), so every process gets every image's features and the same statistics, bit for bit those of one process on
one device (``tests/test_evals_layout.py``). In a multi-process job every process must make the same calls.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgen.evals import sharded
from flowgen.evals.fid import frechet_distance

WEIGHTS_FILE = "digits_classifier.npz"
METADATA_FILE = "digits_classifier.json"
FEATURE_DIM = 64
_BATCH = 1024  # images per step over all devices: memory is bounded by the batch, not by the sample count
MICRO_BATCH = 128  # images per classifier call on each device (fixed: the outputs do not depend on the layout)


class DigitsClassifier(nn.Module):
    """conv3×3(16)-ReLU → conv3×3(32)-ReLU → 2×2 average pool → dense(64)-ReLU [features] → dense(10) [logits].

    Call: images (N, 8, 8, 1) float32 in [-1, 1] → (logits (N, 10), features (N, 64)).
    """

    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Conv(16, (3, 3), name="conv1")(images))
        h = nn.relu(nn.Conv(32, (3, 3), name="conv2")(h))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h.reshape(h.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(h))
        return nn.Dense(10, name="logits")(features), features


# --- data -----------------------------------------------------------------------------------------------------


@functools.cache
def split_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``flowgen_digits`` split as the training pipeline sees it: images (N, 8, 8, 1) float32 in [-1, 1] and
    labels (N,) int64 (train = digits 0..1499, test = 1500..1796, scikit-learn's order)."""
    from flowgen.data.digits import SPLITS, digits_images
    from flowgen.data.pipeline import to_model_range

    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    images, labels = digits_images()
    start, stop = SPLITS[split]
    out = to_model_range(images[start:stop]), labels[start:stop]
    for a in out:
        a.setflags(write=False)
    return out


def as_images(images) -> np.ndarray:
    """Validate and return (N, 8, 8, 1) float32 (no clipping)."""
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[1:] == (8, 8):
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1) or images.shape[0] < 1:
        raise ValueError(f"images must have shape (N, 8, 8, 1) or (N, 8, 8) with N >= 1; got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [-1, 1]; got dtype {images.dtype}")
    return images.astype(np.float32)


# --- the classifier -------------------------------------------------------------------------------------------


def _data_file(name: str):
    return importlib.resources.files("flowgen.evals").joinpath("data", name)


def metadata() -> dict:
    """The shipped classifier's record: sha256 of the weights file, train/test accuracy, training settings."""
    return json.loads(_data_file(METADATA_FILE).read_text())


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b": x} → {"a": {"b": x}} (the layout of the weights file, one array per parameter)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


@functools.cache
def load_classifier() -> dict:
    """The shipped classifier's parameters ``{"params": ...}`` (float32), after checking the file's sha256."""
    data = _data_file(WEIGHTS_FILE).read_bytes()
    expected = metadata()["sha256"]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{WEIGHTS_FILE}: sha256 {actual} differs from the recorded {expected}; "
                         "retrain with `python -m flowgen.evals.train_digits_classifier`")
    import io

    with np.load(io.BytesIO(data)) as f:
        flat = {k: jnp.asarray(f[k], jnp.float32) for k in f.files}
    return {"params": unflatten(flat)}


def _apply(variables, images):
    """(logits, features) of one micro-batch (m, 8, 8, 1): ``flowgen.evals.sharded``'s per-device function."""
    return DigitsClassifier().apply(variables, images)


def _batched(variables, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 10), features (N, 64)) over all devices of all processes (``flowgen.evals.sharded``): batches of
    ``_BATCH`` images, the classifier always run on ``MICRO_BATCH`` of them per device, so an image's outputs do not
    depend on the device count, the process count or its batch; every process gets all N rows."""
    return sharded.features(_apply, variables, images, batch_size=_BATCH, micro_batch=MICRO_BATCH)


def features(params: dict, images) -> np.ndarray:
    """Penultimate features (N, 64) float32 of images in [-1, 1], (N, 8, 8, 1) or (N, 8, 8); clipped to [-1, 1]."""
    images = np.clip(as_images(images), -1.0, 1.0)
    return _batched(params, images)[1]


def logits(params: dict, images) -> np.ndarray:
    """Class logits (N, 10) of images in [-1, 1]."""
    return _batched(params, np.clip(as_images(images), -1.0, 1.0))[0]


def accuracy(params: dict, split: str = "test") -> float:
    """Fraction of the split's digits classified correctly."""
    images, labels = split_images(split)
    return float(np.mean(np.argmax(logits(params, images), axis=-1) == labels))


# --- statistics and the distance ------------------------------------------------------------------------------


def statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64 of rows x (N, D)."""
    x = np.asarray(x, np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance; got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


@functools.cache
def reference_stats(split: str = "train", space: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of a split's classifier features (``space="features"``) or raw 64 pixels (``"pixels"``); cached."""
    if space not in ("features", "pixels"):
        raise ValueError(f"space must be 'features' or 'pixels'; got {space!r}")
    images, _ = split_images(split)
    x = features(load_classifier(), images) if space == "features" else images.reshape(len(images), -1)
    mu, sigma = statistics(x)
    mu.setflags(write=False)
    sigma.setflags(write=False)
    return mu, sigma


def _distance(images, space: str, reference_split: str) -> float:
    images = as_images(images)
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images; got {images.shape[0]}")
    if not np.all(np.isfinite(images)):
        return math.nan
    x = features(load_classifier(), images) if space == "features" else np.clip(images, -1, 1).reshape(
        len(images), -1)
    return frechet_distance(*statistics(x), *reference_stats(reference_split, space))


def digits_fid(images, reference_split: str = "train") -> float:
    """Digits-FID of images (N, 8, 8, 1) or (N, 8, 8) in [-1, 1] against the train split's feature statistics."""
    return _distance(images, "features", reference_split)


def pixel_fid(images, reference_split: str = "train") -> float:
    """Fréchet distance in pixel space (64-D) against the train split's pixel statistics."""
    return _distance(images, "pixels", reference_split)


FLOOR_SAMPLES = 297  # the size of the test split, the sample count at which floor() is measured


@functools.cache
def floor() -> float:
    """Digits-FID of the 297 test-split digits against the train statistics: what real data of that size scores."""
    return digits_fid(split_images("test")[0])


@functools.cache
def pixel_floor() -> float:
    """Pixel-space Fréchet distance of the test split against the train split."""
    return pixel_fid(split_images("test")[0])


# --- the floor at any sample size, and metrics beside the Fréchet distance -------------------------------------


@functools.cache
def floor_at(n: int, space: str = "features", repeats: int = 20, seed: int = 0) -> float:
    """The Fréchet distance real digits reach at ``n`` images (against the train statistics), where ``floor()`` is
    that value at the test split's 297 only. An FID estimate's bias is ∝ 1/N to first order (Chong & Forsyth 2020,
    "FID∞"), so random subsets of the test split of sizes 60..297 (``repeats`` each) are scored and a + b/size is
    fitted by least squares, then evaluated at n: the floor at a cell's own sample count."""
    images = split_images("test")[0]
    x = features(load_classifier(), images) if space == "features" else images.reshape(len(images), -1)
    reference = reference_stats("train", space)
    sizes = np.array([60, 90, 130, 190, 250, len(images)])
    rng = np.random.default_rng(seed)
    values = [np.mean([frechet_distance(*statistics(x[rng.choice(len(x), s, replace=False)]), *reference)
                       for _ in range(repeats)]) for s in sizes]
    b, a = np.polyfit(1.0 / sizes, values, 1)
    return float(a + b / n)


#: A digit is "legible" when the shipped classifier gives one class at least this probability.
LEGIBLE_PROBABILITY = 0.9


def legible_fraction(images, threshold: float = LEGIBLE_PROBABILITY) -> float:
    """Fraction of images the shipped classifier assigns to one class with probability ≥ ``threshold``: a figure
    digits-FID can hide (features of half-formed digits may still match the data's statistics). Compare with
    ``legible_fraction(split_images("test")[0])``, real held-out digits."""
    lg = logits(load_classifier(), images).astype(np.float64)
    p = np.exp(lg - lg.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean(p.max(axis=1) >= threshold))


def kid(images, reference_split: str = "train", blocks: int = 10) -> tuple[float, float]:
    """(KID, standard error) in the classifier's feature space against a split (``flowgen.evals.feature_metrics``)."""
    from flowgen.evals.feature_metrics import kid as kid_features

    params = load_classifier()
    return kid_features(features(params, images), features(params, split_images(reference_split)[0]), blocks)


def precision_recall(images, reference_split: str = "train", k: int = 3) -> tuple[float, float]:
    """(precision, recall) of images against a split in the classifier's feature space (Kynkäänniemi et al.)."""
    from flowgen.evals.feature_metrics import precision_recall as pr_features

    params = load_classifier()
    return pr_features(features(params, split_images(reference_split)[0]), features(params, images), k)
