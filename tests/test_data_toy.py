"""2-D toy sets: stateless in (seed, step), jittable, the right shapes and (for mixtures) the right moments."""

import numpy as np
import pytest

from flowgen.analytic import GaussianMixture
from flowgen.data import toy

B = 4096  # one batch size throughout: eager JAX compiles each op once per shape
KWARGS = {"gaussian_mixture": {"means": [[-2.0, 0.0], [1.0, 1.0]], "std": [0.5, 0.2], "weights": [0.3, 0.7]}}


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_batch_is_a_function_of_seed_and_step(name):
    kw = KWARGS.get(name, {})
    a = np.asarray(toy.toy_batch(name, seed=3, step=7, batch_size=B, **kw))
    b = np.asarray(toy.toy_batch(name, seed=3, step=7, batch_size=B, **kw))
    assert a.shape == (B, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, np.asarray(toy.toy_batch(name, seed=3, step=8, batch_size=B, **kw)))
    assert not np.allclose(a, np.asarray(toy.toy_batch(name, seed=4, step=7, batch_size=B, **kw)))


@pytest.mark.parametrize("name", ["moons", "8gaussians"])
def test_jitted_sampler_matches_eager(name):
    sample = toy.toy_sampler(name, batch_size=B)
    for step in (0, 5):
        np.testing.assert_allclose(
            np.asarray(sample(1, step)), np.asarray(toy.toy_batch(name, 1, step, B)), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("8gaussians", {}),
        ("circle", {"num_components": 5, "radius": 3.0, "std": 0.3}),
        ("gaussian_mixture", KWARGS["gaussian_mixture"]),
    ],
)
def test_mixture_batches_have_the_mixture_moments(name, kwargs):
    mixture = toy.toy_mixture(name, **kwargs)
    x = np.concatenate([np.asarray(toy.toy_batch(name, 0, step, B, **kwargs), np.float64) for step in range(5)])
    scale = np.sqrt(np.trace(mixture.covariance()))
    np.testing.assert_allclose(x.mean(0), mixture.mean(), atol=0.03 * scale)
    np.testing.assert_allclose(np.cov(x.T), mixture.covariance(), atol=0.05 * scale**2)


def test_eight_gaussians_is_ffjords_and_has_labels():
    mixture = toy.eight_gaussians()
    assert mixture.num_components == 8
    np.testing.assert_allclose(np.linalg.norm(mixture.means, axis=1), 4 / np.sqrt(2))
    x, labels = toy.toy_batch("8gaussians", 0, 0, B, return_labels=True)
    x, labels = np.asarray(x), np.asarray(labels)
    assert labels.shape == (B,) and set(np.unique(labels)) == set(range(8))
    nearest = np.argmin(np.linalg.norm(x[:, None] - mixture.means[None], axis=-1), axis=1)
    assert np.mean(nearest == labels) > 0.99  # std 0.35 against centres 2.2 apart


def test_mixture_object_can_be_passed():
    mixture = GaussianMixture([[0.0, 0.0], [5.0, 5.0]], 0.1)
    x = np.asarray(toy.toy_batch("gaussian_mixture", 0, 0, B, mixture=mixture))
    assert np.all(np.minimum(np.linalg.norm(x, axis=1), np.linalg.norm(x - 5.0, axis=1)) < 1.0)


def test_checkerboard_lies_on_the_black_squares():
    x = np.asarray(toy.toy_batch("checkerboard", 0, 0, B))
    assert np.all(np.abs(x) <= 4.0)
    assert np.all((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0)
    squares = {(int(a), int(b)) for a, b in np.floor(x / 2)}
    assert len(squares) == 8


def test_moons_and_spirals_shapes():
    moons = np.asarray(toy.toy_batch("moons", 0, 0, B, noise=0.0))
    # noise-free moons: the two unit half circles, scaled by 2 and shifted by (-1, -0.2)
    u = (moons - np.array([-1.0, -0.2])) / 2
    on_outer = np.isclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-4)
    on_inner = np.isclose(np.linalg.norm(u - np.array([1.0, 0.5]), axis=1), 1.0, atol=1e-4)
    assert np.all(on_outer | on_inner) and 0.4 < on_outer.mean() < 0.6
    spirals = np.asarray(toy.toy_batch("spirals", 0, 0, B))
    assert np.abs(spirals.mean(0)).max() < 0.2  # the two arms are point reflections of each other
    assert np.abs(spirals).max() < 5.0


def test_scurve_has_scikit_learns_moments():
    """make_s_curve's (x, z) with t uniform on [−3π/2, 3π/2], scaled by 1.5: E x = E z = 0, Var x = 1.5²(1/2 +
    noise²), Var z = 1.5²(E(cos t − 1)² + noise²) = 1.5²(3/2 + 4/(3π) + noise²) (E cos t = −2/(3π), E cos² t = 1/2
    on that interval); the noise-free points lie on the curve."""
    x = np.asarray(toy.toy_batch("scurve", 0, 0, 200_000), np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(x.var(0), [2.25 * (0.5 + 0.0025), 2.25 * (1.5 + 4 / (3 * np.pi) + 0.0025)], rtol=0.02)
    clean = np.asarray(toy.toy_batch("scurve", 0, 0, 1000, noise=0.0), np.float64) / 1.5
    t = np.arcsin(np.clip(clean[:, 0], -1, 1))
    np.testing.assert_allclose(np.abs(clean[:, 1]), 1.0 - np.cos(np.where(np.abs(clean[:, 1]) > 1, np.pi - t, t)),
                               atol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="moons"):
        toy.toy_batch("nope", 0, 0, 8)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            toy.toy_batch("moons", 0, 0, bad)
    with pytest.raises(ValueError, match="mixture"):
        toy.toy_batch("moons", 0, 0, 8, return_labels=True)
    with pytest.raises(ValueError, match="means"):
        toy.toy_batch("gaussian_mixture", 0, 0, 8)
    with pytest.raises(ValueError, match="dimension"):
        toy.toy_batch("gaussian_mixture", 0, 0, 8, means=[[0.0, 0.0, 0.0]], std=1.0)
