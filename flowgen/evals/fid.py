"""Fréchet distance between Gaussians fitted to features, streaming feature statistics, cached reference statistics.

    FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½            (Heusel et al. 2017; Dowson & Landau 1982)

The core (:func:`frechet_distance`, :class:`StreamingStats`, :class:`FIDStats`) is pure numpy/JAX and imports no
network, so any feature extractor (the FID Inception-v3 of :mod:`flowgen.evals.inception`, a digits classifier)
can feed it. :func:`inception_stats` and :func:`cached_reference_stats` add the Inception features.

    python -m flowgen.evals.fid A.npz B.npz [--resize tf_legacy|pytorch_fid] [--save-stats SA.npz SB.npz]

Each of A and B holds uint8 (N, H, W, 3) images (key ``images`` or its only array) or statistics (``mu``,
``sigma``: ours, pytorch-fid's or TTUR's); the settings of each side are printed, then ``FID: <value>`` last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np

#: Dimension of the Inception pool features; fewer images than this give a singular covariance.
FEATURES = 2048


def _psd_eigenvalues_floor(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those below its round-off floor (D·ε·λ_max) set to 0.

    ``eigh`` returns the zero eigenvalues of a rank-deficient covariance (fewer samples than dimensions) as ±ε·λ_max
    noise; their square roots, ~sqrt(ε·λ_max) each, would add up to a spurious 1e-5 in FID(s, s).
    """
    floor = len(w) * np.finfo(np.float64).eps * max(float(np.max(w)), 0.0)
    return np.where(w > floor, w, 0.0)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(_psd_eigenvalues_floor(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64.

    mu*: (D,), sigma*: (D, D) symmetric PSD. The cross term uses tr (Σ₁Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½ (similar
    matrices, same eigenvalues); the right-hand matrix is symmetric PSD, so its square root comes from ``eigh``
    and is real by construction. ``scipy.linalg.sqrtm(Σ₁Σ₂)`` (pytorch-fid) takes a Schur decomposition of a
    non-symmetric product, which turns complex or non-finite for the rank-deficient covariances of fewer samples
    than feature dimensions and needs an ε·I retry and a discarded imaginary part; the symmetric form needs
    neither and agrees with it to round-off where it succeeds (tested).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of one shape; got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}) to match the means; got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite entries")
    root1 = _sqrt_psd((sigma1 + sigma1.T) / 2)
    inner = root1 @ ((sigma2 + sigma2.T) / 2) @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sum(np.sqrt(_psd_eigenvalues_floor(eig)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


#: Rows per block of :class:`StreamingStats`: (BLOCK, D) float64 is 16 MB at D = 2048.
BLOCK = 1024


def _block_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, mean (D,), Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ (D, D)) of an (n, D) float64 block; centring first avoids the
    cancellation of E[xxᵀ] − x̄x̄ᵀ."""
    mean = x.mean(axis=0)
    centred = x - mean
    return len(x), mean, centred.T @ centred


def _combine(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s exact merge of two (n, mean, scatter) moments."""
    (na, ma, sa), (nb, mb, sb) = a, b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + np.outer(delta, delta) * (na * nb / n)


class StreamingStats:
    """Mean and covariance of (N, D) feature rows, accumulated in float64; memory O(block·D + D²), not O(N).

    Rows are taken in blocks of exactly ``block`` consecutive rows, however ``update`` was called (the last block
    partial); each block's mean x̄ᵦ and centred scatter Mᵦ are computed on the host in float64 and merged in order
    (Chan, Golub & LeVeque 1979): n = nₐ + nᵦ, δ = x̄ᵦ − x̄ₐ, x̄ = x̄ₐ + δ·nᵦ/n, M = Mₐ + Mᵦ + δδᵀ·nₐnᵦ/n. The
    covariance is M/(n − 1), as ``np.cov`` (pytorch-fid, TTUR) computes it. So the statistics are a function of the
    rows and their order only, bit for bit: not of the batch sizes, the device count or the number of processes.
    A jax.Array batch (sharded over any devices, other processes' included) is gathered first; in a multi-process
    job every process passes the same rows and gets the same statistics.
    """

    def __init__(self, block: int = BLOCK):
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"block={block!r}; choose an integer >= 2")
        self.block = block
        self._merged: tuple = (0, None, None)      # (n, mean, scatter) of the full blocks so far
        self._pending: list[np.ndarray] = []       # fewer than ``block`` rows not yet merged
        self._dim: int | None = None

    @property
    def count(self) -> int:
        return self._merged[0] + sum(len(p) for p in self._pending)

    def update(self, features) -> StreamingStats:
        """Add an (N, D) batch (numpy, or a possibly sharded jax.Array); returns self."""
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D); got shape {tuple(features.shape)}")
        if self._dim is not None and features.shape[1] != self._dim:
            raise ValueError(f"feature dimension {features.shape[1]} differs from earlier batches' {self._dim}")
        if features.shape[0] == 0:
            return self
        from flowgen.evals import sharded

        x = np.asarray(sharded.to_host(features) if isinstance(features, jax.Array) else features, np.float64)
        self._dim = x.shape[1]
        self._pending.append(x)
        pending = sum(len(p) for p in self._pending)
        if pending >= self.block:
            rows = np.concatenate(self._pending)
            full = pending - pending % self.block
            for start in range(0, full, self.block):
                self._merged = _combine(self._merged, _block_moments(rows[start:start + self.block]))
            self._pending = [rows[full:]] if full < pending else []
        return self

    def merge(self, other: StreamingStats) -> StreamingStats:
        """Add another accumulator's samples (e.g. from another shard of the data set); returns self. Exact up to
        float64 round-off, but the blocks are no longer those of the concatenated rows."""
        if other.count:
            if self._dim is not None and other._dim != self._dim:
                raise ValueError(f"feature dimension {other._dim} differs from this accumulator's {self._dim}")
            self._merged, self._pending, self._dim = _combine(self._moments(), other._moments()), [], other._dim
        return self

    def _moments(self) -> tuple:
        """(count, mean, scatter) of every row so far, the pending partial block included."""
        if not self._pending:
            return self._merged
        return _combine(self._merged, _block_moments(np.concatenate(self._pending)))

    @property
    def mean(self) -> np.ndarray:
        count, mean, _ = self._moments()
        if not count:
            raise ValueError("no samples yet: call update() first")
        return mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        count, _, scatter = self._moments()
        if count < 2:
            raise ValueError(f"a covariance needs at least 2 samples; have {count}")
        cov = scatter / (count - 1)
        return (cov + cov.T) / 2

    def finalize(self, **metadata) -> FIDStats:
        """Freeze into :class:`FIDStats` (μ, Σ, count) with ``metadata`` recorded beside them."""
        return FIDStats(mu=self.mean, sigma=self.covariance, count=self.count, metadata=dict(metadata))


@dataclasses.dataclass(frozen=True)
class FIDStats:
    """Gaussian statistics of a feature set and how they were made.

    mu: (D,) float64; sigma: (D, D) float64; count: number of samples; metadata: JSON-serialisable settings
    (for reference statistics: dataset, split, count, resize, weights sha256; for samples: sampler, NFE, seed).
    Stored as ``.npz`` with keys ``mu``, ``sigma``, ``count`` and ``metadata`` (a JSON string); :meth:`load` also
    reads pytorch-fid's and TTUR's statistics files (only ``mu`` and ``sigma``).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    metadata: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_features(cls, features, **metadata) -> FIDStats:
        return StreamingStats().update(features).finalize(**metadata)

    def save(self, path, overwrite: bool = False) -> None:
        """Write ``path`` (.npz); refuses to replace an existing file unless ``overwrite``."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"statistics files end in .npz; got {path!r}")
        with open(path, "wb" if overwrite else "xb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                     metadata=np.array(json.dumps(self.metadata, sort_keys=True)))

    @classmethod
    def load(cls, path) -> FIDStats:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            if not {"mu", "sigma"} <= set(data.files):
                raise ValueError(f"{path} is not a statistics file: keys {sorted(data.files)}, need 'mu' and 'sigma'")
            count = int(data["count"]) if "count" in data.files else -1
            metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
            return cls(mu=np.asarray(data["mu"], np.float64), sigma=np.asarray(data["sigma"], np.float64),
                       count=count, metadata=metadata)

    def distance(self, other: FIDStats) -> float:
        """Fréchet distance to ``other``."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def check_comparable(a: FIDStats, b: FIDStats) -> None:
    """Refuse to compare statistics made with different features: resize mode or weights recorded differently."""
    for key in ("resize", "weights_sha256", "features"):
        va, vb = a.metadata.get(key), b.metadata.get(key)
        if va is not None and vb is not None and va != vb:
            raise ValueError(f"statistics differ in {key}: {va!r} vs {vb!r}; recompute one of them")


def fid_result(samples: FIDStats, reference: FIDStats) -> dict:
    """FID of ``samples`` against ``reference`` with the settings a reader needs to trust it.

    Records the sample count, the reference's dataset/split/count, the resize mode and the weights, and whatever
    the samples' metadata holds (sampler, NFE, seed).
    """
    check_comparable(samples, reference)
    ref = {k: reference.metadata.get(k) for k in ("dataset", "split")} | {"count": reference.count}
    meta = {k: v for k, v in samples.metadata.items() if k not in ("resize", "weights_sha256")}
    return {"fid": samples.distance(reference), "count": samples.count, "reference": ref,
            "resize": samples.metadata.get("resize", reference.metadata.get("resize")),
            "weights_sha256": samples.metadata.get("weights_sha256", reference.metadata.get("weights_sha256")),
            **meta}


def inception_stats(images, params, resize: str = "tf_legacy", batch_size: int = 64, mesh=None,
                    micro_batch: int | None = None, **metadata) -> FIDStats:
    """FID Inception statistics of uint8 (N, H, W, 3) images, the same on every process.

    The features are computed over all devices of all processes, each device running the network on fixed blocks
    of ``micro_batch`` images (default ``inception.MICRO_BATCH``), and gathered; :class:`StreamingStats` reduces them
    on the host in fixed blocks. So the statistics depend only on the images (and ``micro_batch``): not on the
    device or process count, ``batch_size`` or the padding of a last partial batch (``tests/test_evals_layout.py``).
    In a multi-process job every process passes the same images. ``metadata`` (e.g. dataset, split, sampler, nfe,
    seed, weights_sha256) is recorded beside count and resize.
    """
    from flowgen.evals import inception

    micro_batch = inception.MICRO_BATCH if micro_batch is None else micro_batch
    stats = StreamingStats()
    for batch in inception.feature_batches(params, images, resize=resize, batch_size=batch_size, mesh=mesh,
                                           micro_batch=micro_batch):
        stats.update(batch)
    return stats.finalize(resize=resize, features="fid_inception_2015_12_05_pool3", **metadata)


def cached_reference_stats(dataset: str, split: str, images, params, resize: str = "tf_legacy",
                           weights_sha256: str = "", cache_dir=None, batch_size: int = 64) -> FIDStats:
    """Reference statistics of a data set split, computed once and then read from the cache.

    ``images``: uint8 (N, H, W, 3) array or a zero-argument callable returning it (called only when the cache has
    no entry). The file name carries dataset, split, resize and weights; a cached file whose recorded metadata
    disagrees with the request is refused rather than silently used.
    """
    from flowgen.evals import inception_weights

    directory = inception_weights.cache_dir() if cache_dir is None else cache_dir
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"fid_ref_{dataset}_{split}_{resize}_{weights_sha256[:12] or 'weights'}.npz")
    want = {"dataset": dataset, "split": split, "resize": resize, "weights_sha256": weights_sha256}
    if os.path.exists(path):
        stats = FIDStats.load(path)
        have = {k: stats.metadata.get(k) for k in want}
        if have != want:
            raise ValueError(f"cached {path} was made with {have}, not {want}; move it away to recompute")
        return stats
    stats = inception_stats(images() if callable(images) else images, params, resize, batch_size, dataset=dataset,
                            split=split, weights_sha256=weights_sha256)
    stats.save(path)
    return stats


def _load_input(path: str):
    """(FIDStats or None, images or None) from an .npz of statistics or of uint8 NHWC images."""
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: expected an .npz of uint8 images (key 'images') or of statistics (mu, sigma)")
    with np.load(path, allow_pickle=False) as data:
        if {"mu", "sigma"} <= set(data.files):
            return FIDStats.load(path), None
        if "images" in data.files:
            images = data["images"]
        elif len(data.files) == 1:
            images = data[data.files[0]]
        else:
            raise ValueError(f"{path}: no 'images' key and several arrays {data.files}; cannot tell which to use")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        hint = (" (floats in [-1, 1] become uint8 by np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8))"
                if np.issubdtype(images.dtype, np.floating) else "")
        raise ValueError(f"{path}: images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}{hint}")
    return None, images


def main(argv=None) -> int:
    """``python -m flowgen.evals.fid A B``: FID between two .npz files of uint8 NHWC images or cached statistics."""
    import argparse

    from flowgen.evals import inception, inception_weights

    parser = argparse.ArgumentParser(prog="python -m flowgen.evals.fid", description=main.__doc__)
    parser.add_argument("a", help=".npz with uint8 (N, H, W, 3) images ('images' or its only array) or statistics")
    parser.add_argument("b", help="the same for the other set")
    parser.add_argument("--resize", default="tf_legacy", choices=inception.RESIZE_MODES)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", default=None, help="Inception weights file (default: fetch into the cache)")
    parser.add_argument("--save-stats", nargs=2, metavar=("A_OUT", "B_OUT"), default=None,
                        help="also write each side's statistics (.npz, never overwriting)")
    args = parser.parse_args(argv)
    try:
        loaded = [_load_input(p) for p in (args.a, args.b)]
        params, sha = None, None
        if any(st is None for st, _ in loaded):
            weights = inception_weights.fetch() if args.weights is None else args.weights
            sha = inception_weights.sha256(weights)
            params = inception.load_params(weights)
    except (ValueError, OSError, inception_weights.WeightsUnavailable) as e:   # one message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = []
    for path, (st, images) in zip((args.a, args.b), loaded, strict=True):
        if st is None:
            if len(images) < FEATURES:
                print(f"warning: {path} has {len(images)} images, fewer than the {FEATURES} feature dimensions: its "
                      "covariance is singular and the FID is biased upwards; FID is meaningful from ~10,000 images "
                      "(50,000 is the standard)", file=sys.stderr)
            st = inception_stats(images, params, args.resize, args.batch_size, source=os.path.basename(path),
                                 weights_sha256=sha)
        stats.append(st)
    check_comparable(*stats)           # e.g. a cached file made with the other resize
    if args.save_stats:
        for st, out in zip(stats, args.save_stats, strict=True):
            st.save(out)
    for name, st in zip("AB", stats, strict=True):
        meta = {k: v for k, v in st.metadata.items() if k != "features"}
        print(f"{name}: {getattr(args, name.lower())}  count={st.count}  {json.dumps(meta, sort_keys=True)}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}  batch_size={args.batch_size}  "
          f"micro_batch={inception.MICRO_BATCH}  resize={args.resize}")
    print(f"FID: {stats[0].distance(stats[1]):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
