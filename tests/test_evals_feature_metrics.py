"""KID (unbiased, with an honest standard error), precision/recall, the legible fraction and the floor at any N."""

import numpy as np
import pytest

from flowgen.evals.feature_metrics import kid, mmd2_unbiased_poly, precision_recall


def gaussians(n, shift=0.0, seed=0, d=8):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_kid_is_unbiased_at_zero_for_one_distribution_and_grows_with_a_shift():
    same = [kid(gaussians(400, seed=s), gaussians(400, seed=100 + s), blocks=4)[0] for s in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))      # mean 0 within its error: unbiased
    small, err_small = kid(gaussians(400), gaussians(400, 0.5, seed=1), blocks=4)
    large, _ = kid(gaussians(400), gaussians(400, 1.0, seed=1), blocks=4)
    assert 0 < small < large and err_small > 0


def test_mmd_is_exactly_the_u_statistic():
    x, y = gaussians(5, seed=1, d=3), gaussians(4, seed=2, d=3)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    assert mmd2_unbiased_poly(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_precision_and_recall_tell_narrow_from_blurry():
    real = gaussians(500)
    assert precision_recall(real, gaussians(500, seed=1)) > (0.8, 0.8)
    narrow = 0.2 * gaussians(500, seed=2)                  # sharp but narrow: inside the data, covering little
    precision, recall = precision_recall(real, narrow)
    assert precision > 0.9 and recall < 0.5
    blurry = 3.0 * gaussians(500, seed=3)                  # diverse but blurry: covers the data, mostly outside
    precision, recall = precision_recall(real, blurry)
    assert precision < 0.5 and recall > 0.8
    with pytest.raises(ValueError, match="k="):
        precision_recall(real, narrow, k=0)


@pytest.mark.slow
def test_digits_legible_fraction_kid_and_floor_at_any_n():
    from flowgen.evals import digits_fid

    test = digits_fid.split_images("test")[0]
    noise = np.random.default_rng(0).uniform(-1, 1, (297, 8, 8, 1)).astype(np.float32)
    assert digits_fid.legible_fraction(test) > 0.9 > 0.5 > digits_fid.legible_fraction(noise)
    assert digits_fid.kid(noise, blocks=5)[0] > 10 * digits_fid.kid(test, blocks=5)[0]
    assert digits_fid.floor_at(297) == pytest.approx(digits_fid.floor(), rel=0.05)   # the fit passes the data
    assert digits_fid.floor_at(1000) < digits_fid.floor() < digits_fid.floor_at(100)   # bias ∝ 1/N
