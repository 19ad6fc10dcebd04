"""Digits-FID: the shipped classifier, its statistics, the floor, and monotonicity under corruption."""

import hashlib
import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from flowgen.evals import digits_fid


@pytest.fixture(scope="module")
def test_images():
    return digits_fid.split_images("test")[0]


def test_shipped_classifier_is_accurate_small_and_matches_its_record():
    meta = digits_fid.metadata()
    data = digits_fid._data_file(digits_fid.WEIGHTS_FILE).read_bytes()
    assert len(data) <= 1_000_000 and len(data) == meta["bytes"]
    assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    acc = digits_fid.accuracy(digits_fid.load_classifier(), "test")
    assert acc >= 0.97
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-12)


def test_tampered_weights_are_refused(monkeypatch):
    digits_fid.load_classifier.cache_clear()
    monkeypatch.setattr(digits_fid, "metadata", lambda: {"sha256": "0" * 64})
    try:
        with pytest.raises(ValueError, match="sha256"):
            digits_fid.load_classifier()
    finally:
        digits_fid.load_classifier.cache_clear()


def test_splits_are_the_pipeline_scaling_of_the_flowgen_digits_splits():
    from sklearn.datasets import load_digits

    train, train_labels = digits_fid.split_images("train")
    test, test_labels = digits_fid.split_images("test")
    raw = load_digits()
    assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
    np.testing.assert_array_equal(test_labels, raw.target[1500:])
    expected = np.round(raw.images[:1500] * 255 / 16) * (2 / 255) - 1
    np.testing.assert_allclose(train[..., 0], expected, atol=1e-6)
    assert train.min() == -1.0 and train.max() == 1.0
    with pytest.raises(ValueError, match="split must be one of"):
        digits_fid.split_images("validation")


def test_train_split_scores_zero_and_the_floor_is_the_test_split(test_images):
    train = digits_fid.split_images("train")[0]
    assert digits_fid.digits_fid(train) == pytest.approx(0.0, abs=1e-6)
    assert digits_fid.pixel_fid(train) == pytest.approx(0.0, abs=1e-8)
    assert digits_fid.floor() == digits_fid.digits_fid(test_images) > 0
    assert digits_fid.pixel_floor() == digits_fid.pixel_fid(test_images) > 0
    assert digits_fid.FLOOR_SAMPLES == len(test_images)


def test_order_and_layout_do_not_matter(test_images):
    perm = np.random.default_rng(0).permutation(len(test_images))
    assert digits_fid.digits_fid(test_images[perm]) == pytest.approx(digits_fid.floor(), rel=1e-6)
    assert digits_fid.digits_fid(test_images[..., 0]) == digits_fid.floor()       # (N, 8, 8) is accepted
    big = np.concatenate([test_images] * 5)                                        # > one batch of 1024
    np.testing.assert_allclose(digits_fid.features(digits_fid.load_classifier(), big)[-297:],
                               digits_fid.features(digits_fid.load_classifier(), test_images), rtol=1e-5, atol=1e-6)


def _blur(images, sigma):
    return scipy.ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="nearest")


def _noise(images, std, seed=0):
    return np.clip(images + std * np.random.default_rng(seed).normal(size=images.shape), -1, 1).astype(np.float32)


def _shuffle(images, seed=0):
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    return np.stack([rng.permutation(row) for row in flat]).reshape(images.shape)


def test_corruptions_score_above_the_floor_and_grow_with_their_strength(test_images):
    floor = digits_fid.floor()
    for corrupt, strengths in ((_blur, (0.5, 1.0, 2.0)), (_noise, (0.3, 0.6, 1.2))):
        for space in (digits_fid.digits_fid, digits_fid.pixel_fid):
            values = [space(corrupt(test_images, s)) for s in strengths]
            assert values == sorted(values), (corrupt.__name__, space.__name__, values)
        assert digits_fid.digits_fid(corrupt(test_images, strengths[0])) > floor
    uniform = np.random.default_rng(1).uniform(-1, 1, test_images.shape).astype(np.float32)
    assert digits_fid.digits_fid(_shuffle(test_images)) > 5 * floor
    assert digits_fid.digits_fid(uniform) > 5 * floor
    assert digits_fid.pixel_fid(uniform) > 5 * digits_fid.pixel_floor()


def test_non_finite_images_score_nan_and_bad_inputs_are_refused(test_images):
    bad = test_images.copy()
    bad[3, 2, 2, 0] = np.nan
    assert math.isnan(digits_fid.digits_fid(bad)) and math.isnan(digits_fid.pixel_fid(bad))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        digits_fid.digits_fid(np.zeros((10, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        digits_fid.digits_fid(np.zeros((10, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        digits_fid.digits_fid(test_images[:1])


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    # Commuting (diagonal) covariances: ||μ₁ − μ₂||² + Σ(√a − √b)².
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert digits_fid._frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # General covariances: the textbook tr(Σ₁ + Σ₂ − 2·sqrtm(Σ₁Σ₂)).
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert digits_fid._frechet_distance(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-9)
    assert digits_fid._frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Singular (rank-1) covariances are fine.
    v = rng.normal(size=(5, 1))
    assert digits_fid._frechet_distance(mu1, v @ v.T, mu1, v @ v.T) == pytest.approx(0.0, abs=1e-9)


def test_training_script_refuses_to_overwrite(tmp_path):
    from flowgen.evals import train_digits_classifier as train

    (tmp_path / digits_fid.WEIGHTS_FILE).write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="--overwrite"):
        train.main(["--out-dir", str(tmp_path), "--epochs", "1"])
    assert (tmp_path / digits_fid.WEIGHTS_FILE).read_bytes() == b"keep me"
    arrays = {"b/x": np.arange(3.0), "a": np.ones((2, 2), np.float32)}
    assert train.npz_bytes(arrays) == train.npz_bytes(dict(reversed(arrays.items())))   # byte-deterministic
    with np.load(__import__("io").BytesIO(train.npz_bytes(arrays))) as f:
        np.testing.assert_array_equal(f["b/x"], arrays["b/x"])


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_accuracy(tmp_path):
    from flowgen.evals import train_digits_classifier as train

    record = train.main(["--out-dir", str(tmp_path)])
    shipped = digits_fid.metadata()
    assert record["settings"] == shipped["settings"]
    assert record["test_accuracy"] >= 0.97
    # Same software, same machine: the same bytes. Elsewhere XLA's CPU kernels may round differently; then the
    # accuracy must still agree to within two of the 297 test digits.
    assert abs(record["test_accuracy"] - shipped["test_accuracy"]) <= 2 / 297 + 1e-12
    assert json.loads((tmp_path / digits_fid.METADATA_FILE).read_text())["sha256"] == record["sha256"]
