"""Sample metrics: exact values on small sets, closed forms for Gaussians, estimator bias, noise floors."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from flowgen.evals import sample_metrics as sm


def _gauss(mean, std):
    mean = np.atleast_1d(np.asarray(mean, float))
    return lambda rng, n: mean + std * rng.normal(size=(n, mean.size))


def test_wasserstein2_equals_brute_force_over_all_permutations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    best = min(cost[np.arange(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert sm.wasserstein2(x, y) == pytest.approx(math.sqrt(best), rel=1e-12)
    assert sm.wasserstein2(x, x[::-1]) == 0.0                       # order does not matter


def test_wasserstein2_between_gaussians_equals_the_closed_form():
    # W2²(N(m1, s1²I), N(m2, s2²I)) = ||m1 − m2||² + d·(s1 − s2)² (here 9 + 2·1 = 11), attained by the map
    # T(x) = m2 + (s2/s1)(x − m1). T is the gradient of a convex function, so on the empirical measures too the
    # pairing x_i -> T(x_i) is optimal: the solver must find exactly its cost, whatever the order of the points.
    rng = np.random.default_rng(1)
    m1, m2, s1, s2 = np.array([0.0, 0.0]), np.array([3.0, 0.0]), 1.0, 2.0
    z = rng.normal(size=(300, 2))
    z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T, bias=True))).T   # mean 0, covariance I
    x = m1 + s1 * z                                      # a sample whose moments are exactly those of N(m1, s1²I)
    tx = m2 + (s2 / s1) * (x - m1)
    assert sm.wasserstein2(x, rng.permutation(tx)) ** 2 == pytest.approx(9.0 + 2 * (s1 - s2) ** 2, rel=1e-10)
    # In 1-D the sorted pairing is optimal: the same value as the sorted (monotone) coupling.
    a, b = rng.normal(size=(300, 1)), 2 * rng.normal(size=(300, 1)) + 1
    assert sm.wasserstein2(a, b) == pytest.approx(np.sqrt(np.mean((np.sort(a, 0) - np.sort(b, 0)) ** 2)), rel=1e-12)


def test_sliced_w2_of_a_shift_is_unchanged():
    x = np.random.default_rng(2).normal(size=(50, 2))
    dirs = sm.random_directions(16, 2)
    shift = np.array([1.0, -2.0])
    assert sm.sliced_w2(x, x[::-1], dirs) == 0.0
    assert sm.sliced_w2(x, x + shift, dirs) == pytest.approx(np.sqrt(np.mean((dirs @ shift) ** 2)))


def test_mmd_is_zero_for_identical_sets_and_unbiased_for_one_distribution():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    assert sm.mmd2_rbf(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-14)
    # Unbiased: over many pairs of samples of N(0, I) the mean is 0 within its standard error, at a fixed h.
    values = [sm.mmd2_rbf(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), bandwidth=1.0) for _ in range(300)]
    mean, se = np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(mean) < 3.5 * se
    biased = [sm.mmd2_rbf(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), 1.0, unbiased=False) for _ in range(50)]
    assert np.mean(biased) > 10 * se                                 # the V-statistic is biased upwards
    # A shifted distribution scores well above the floor.
    assert sm.mmd2_rbf(x, x + 1.0) > 10 * np.std(values)


def test_mmd_matches_a_direct_double_loop():
    rng = np.random.default_rng(4)
    x, y, h = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 0.3, 0.8
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    kxx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    kyy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    kxy = sum(k(a, b) for a in x for b in y) / 35
    assert sm.mmd2_rbf(x, y, bandwidth=h) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)


def test_energy_distance_in_1d_equals_twice_the_integrated_squared_cdf_difference():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 1)), rng.normal(size=(20, 1)) * 1.5 + 0.4
    # scipy's energy_distance is sqrt(2·∫(F − G)²) of the empirical CDFs.
    expected = scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2
    assert sm.energy_distance(x, y, unbiased=False) == pytest.approx(expected, rel=1e-10)


def test_energy_distance_of_two_gaussians_matches_the_closed_form():
    # E|Z| for Z ~ N(m, s²) = s·sqrt(2/π)·exp(−m²/2s²) + m·(1 − 2Φ(−m/s)).
    def mean_abs(m, s):
        return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * scipy.stats.norm.cdf(-m / s))

    mu, s = 1.0, 2.0
    truth = 2 * mean_abs(mu, math.sqrt(1 + s * s)) - mean_abs(0, math.sqrt(2)) - mean_abs(0, math.sqrt(2) * s)
    rng = np.random.default_rng(6)
    values = [sm.energy_distance(rng.normal(size=(300, 1)), mu + s * rng.normal(size=(300, 1))) for _ in range(20)]
    mean, se = np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(mean - truth) < 4 * se
    # Unbiased: mean 0 within its standard error for one distribution.
    same = [sm.energy_distance(rng.normal(size=(50, 2)), rng.normal(size=(50, 2))) for _ in range(200)]
    assert abs(np.mean(same)) < 3.5 * np.std(same, ddof=1) / np.sqrt(len(same))


def test_nll_and_its_gap_under_an_exact_density():
    log_prob = lambda x: scipy.stats.norm.logpdf(x).sum(axis=1)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(100000, 2))
    assert sm.nll(x, log_prob) == pytest.approx(1 + math.log(2 * math.pi), rel=1e-2)   # entropy of N(0, I₂)
    assert sm.nll_gap(2 * x, x, log_prob) == pytest.approx(1.5 * 2, rel=2e-2)           # E[(4 − 1)·z²/2]·2
    assert math.isnan(sm.nll(np.full((2, 2), np.nan), log_prob))


def _quarter_circle(num):
    times = np.linspace(0.0, 1.0, num + 1)
    angle = 0.5 * math.pi * times
    positions = np.stack([np.cos(angle), np.sin(angle)], -1)[:, None]                  # (K + 1, 1, 2)
    velocities = 0.5 * math.pi * np.stack([-np.sin(angle), np.cos(angle)], -1)[:, None]
    return times, positions, velocities


def test_straightness_and_path_energy_of_known_trajectories():
    # Straight at constant speed: S = 0, PE = ||x1 − x0||².
    times = np.linspace(0, 1, 11)
    start, end = np.random.default_rng(8).normal(size=(2, 5, 3))
    positions = start + times[:, None, None] * (end - start)
    assert sm.straightness(times, positions) == pytest.approx(0.0, abs=1e-24)
    assert sm.path_energy(times, positions) == pytest.approx(np.mean(np.sum((end - start) ** 2, -1)))
    # Straight at varying speed, x = t²·e: S = ∫(2t − 1)² dt = 1/3, PE = ∫4t² dt = 4/3.
    fine = np.linspace(0, 1, 2001)
    pos = (fine**2)[:, None, None] * np.ones((1, 1, 1))
    vel = (2 * fine)[:, None, None] * np.ones((1, 1, 1))
    assert sm.straightness(fine, pos, vel) == pytest.approx(1 / 3, rel=1e-6)
    assert sm.path_energy(fine, pos, vel) == pytest.approx(4 / 3, rel=1e-6)
    # Quarter circle: PE = π²/4 and S = PE − ||chord||² = π²/4 − 2, from velocities or from the polyline.
    times, positions, velocities = _quarter_circle(2000)
    assert sm.path_energy(times, positions, velocities) == pytest.approx(math.pi**2 / 4, rel=1e-6)
    assert sm.straightness(times, positions, velocities) == pytest.approx(math.pi**2 / 4 - 2, rel=1e-5)
    assert sm.straightness(times, positions) == pytest.approx(math.pi**2 / 4 - 2, rel=1e-5)


def test_normalized_path_energy():
    rng = np.random.default_rng(9)
    start = rng.normal(size=(20, 2))
    end = start + np.array([3.0, 1.0])                   # a translation: the identity pairing is optimal
    times = np.linspace(0, 1, 5)
    straight = start + times[:, None, None] * (end - start)
    assert sm.normalized_path_energy(times, straight) == pytest.approx(0.0, abs=1e-12)
    # Time units do not matter: the same trajectories over [0, 2] (velocities halve) give the same NPE.
    times, positions, velocities = _quarter_circle(400)
    npe = sm.normalized_path_energy(times, positions, velocities, w2_squared=2.0)
    assert npe == pytest.approx((math.pi**2 / 4 - 2) / 2, rel=1e-4)                   # |PE − W2²| / W2²
    assert sm.normalized_path_energy(2 * times, positions, velocities / 2, w2_squared=2.0) == pytest.approx(npe)


@pytest.mark.parametrize("metric", [
    sm.wasserstein2,
    lambda x, y: sm.energy_distance(x, y, unbiased=False),
    lambda x, y: sm.mmd2_rbf(x, y, bandwidth=1.0, unbiased=False),
])
def test_noise_floors_decrease_with_the_sample_count(metric):
    sampler = _gauss([0.0, 0.0], 1.0)
    small = sm.noise_floor(metric, sampler, 32, repeats=8)
    large = sm.noise_floor(metric, sampler, 256, repeats=8)
    assert large.mean < 0.7 * small.mean
    assert (small.n, large.n, large.repeats) == (32, 256, 8)


def test_noise_floor_of_an_unbiased_estimate_is_its_spread():
    sampler = _gauss([0.0], 1.0)
    small = sm.noise_floor(lambda x, y: sm.mmd2_rbf(x, y, 1.0), sampler, 20, repeats=30)
    large = sm.noise_floor(lambda x, y: sm.mmd2_rbf(x, y, 1.0), sampler, 200, repeats=30)
    assert large.std < 0.3 * small.std


def test_non_finite_clouds_score_nan_and_bad_shapes_are_refused():
    x = np.zeros((4, 2))
    bad = x.copy()
    bad[0, 0] = np.inf
    for metric in (sm.wasserstein2, sm.mmd2_rbf, sm.energy_distance):
        assert math.isnan(metric(bad, x + 1))
    with pytest.raises(ValueError, match="equal shape"):
        sm.wasserstein2(x, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        sm.mmd2_rbf(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="strictly increasing"):
        sm.straightness(np.array([0.0, 0.0]), np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="n must be"):
        sm.noise_floor(sm.wasserstein2, _gauss([0.0], 1.0), 1)
