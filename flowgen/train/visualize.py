"""Periodic samples during training: a PNG in ``workdir/samples/`` and a quick quality metric.

2-D data: a scatter plot and the sliced Wasserstein-2 distance to data samples (64 random directions).
Images: a grid of samples and the gap in per-channel pixel mean/std to data (a cheap sanity number, not FID).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from etils import epath

from flowgen.evals.sample_metrics import random_directions, sliced_w2

log = logging.getLogger("flowgen")


def sample_path(workdir: str | os.PathLike, step: int) -> epath.Path:
    """The PNG written by ``sample_and_report`` at ``step`` (``workdir`` may be a URI such as gs://...)."""
    return epath.Path(os.fspath(workdir)) / "samples" / f"step_{step:07d}.png"


#: Sample grids show every image at least this many pixels high (nearest-neighbour upscaling by an integer).
MIN_IMAGE_PIXELS = 64


def image_grid(samples: np.ndarray, num_classes: int = 0, max_images: int = 64, gap: int = 2):
    """A grid of images in [-1, 1] as an (H, W, C) array in [0, 1], each image upscaled by an integer factor to at
    least ``MIN_IMAGE_PIXELS`` high (nearest neighbour) and separated by ``gap`` white pixels, and its row labels.

    Class-conditional samples (sample i has label ``i % num_classes``, as ``draw_samples`` makes them) are laid out
    one class per row, labelled with the class; unconditional ones fill a square of up to ``max_images``.
    Returns ``(grid, row_labels)`` (``row_labels`` is None for unconditional samples).
    """
    n = len(samples)
    if num_classes:
        per_class = max(1, min(n // num_classes, 16))
        rows = [[samples[i] for i in range(c, n, num_classes)][:per_class] for c in range(min(num_classes, n))]
        row_labels = [str(c) for c in range(len(rows))]
    else:
        n = min(max_images, n)
        side = int(np.ceil(np.sqrt(n)))
        rows = [list(samples[r * side:min((r + 1) * side, n)]) for r in range(int(np.ceil(n / side)))]
        row_labels = None
    h, w, c = samples.shape[1:]
    scale = max(1, -(-MIN_IMAGE_PIXELS // h))
    cols = max(len(r) for r in rows)
    hs, ws = h * scale, w * scale
    grid = np.ones((len(rows) * (hs + gap) - gap, cols * (ws + gap) - gap, c), np.float32)
    for r, row in enumerate(rows):
        for q, image in enumerate(row):
            big = np.repeat(np.repeat(np.clip((image + 1) / 2, 0, 1), scale, axis=0), scale, axis=1)
            grid[r * (hs + gap):r * (hs + gap) + hs, q * (ws + gap):q * (ws + gap) + ws] = big
    return grid, row_labels


def _save_figure(fig, filename: epath.Path, dpi: int) -> None:
    """``fig`` as a PNG at ``filename`` (local or a URI: matplotlib writes into the file epath opens)."""
    with filename.open("wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _save_grid(filename: epath.Path, grid: np.ndarray, row_labels, title: str) -> None:
    """Write the grid at one screen pixel per grid pixel, with the class of each row on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi, left, top = 100, 0.45, 0.3
    height, width = grid.shape[:2]
    fig = plt.figure(figsize=(width / dpi + left + 0.1, height / dpi + top + 0.1), dpi=dpi)
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, 0.1 / fh, width / dpi / fw, height / dpi / fh))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        row_h = height / len(row_labels)
        ax.set_yticks([(r + 0.5) * row_h for r in range(len(row_labels))], row_labels, fontsize=8)
        ax.set_ylabel("class", fontsize=8)
    else:
        ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    _save_figure(fig, filename, dpi)
    plt.close(fig)


def sample_and_report(run, workdir, step, state, data, key, drawn=None, png_name=None) -> dict:
    """Draw ``sample.num_samples`` samples with ``run.draw_samples`` (or use ``drawn`` = (samples, nfe)), write
    ``samples/<png_name>`` (default ``sample_path(workdir, step)``) and return the quality metrics.
    Logs one line: step, metric, NFE and the file written."""
    config, num_classes = run.config, run.sample_groups
    num = config.sample.num_samples
    if drawn is None:
        drawn = run.draw_samples(state, key, num)
    samples, nfe = drawn
    reference = data.reference(num)
    filename = epath.Path(os.fspath(workdir)) / "samples" / png_name if png_name else sample_path(workdir, step)
    writes = jax.process_index() == 0
    if writes:
        filename.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 2:
        metrics = {"sample/sliced_w2": sliced_w2(samples, reference[: len(samples)], random_directions(64, 2)),
                   "sample/nfe": nfe}
        if writes:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4, 4))
            ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, label="data")
            ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, label=f"samples (NFE {nfe})")
            ax.set_title(f"step {step}: {config.sample.solver}, NFE {nfe}, sliced W2 "
                         f"{metrics['sample/sliced_w2']:.3f}", fontsize=9)
            ax.legend(loc="upper right", fontsize=7)
            _save_figure(fig, filename, 100)
            plt.close(fig)
    else:
        axes = tuple(range(samples.ndim - 1))
        gap = float(np.abs(samples.mean(axes) - reference.mean(axes)).mean()
                    + np.abs(samples.std(axes) - reference.std(axes)).mean())
        metrics = {"sample/pixel_moment_gap": gap, "sample/nfe": nfe}
        if writes:
            grid, row_labels = image_grid(run.images(samples), num_classes or 0)   # latents: decoded
            guidance = config.sample.guidance
            guided = f", guidance {guidance:g}" if num_classes and guidance is not None else ""
            _save_grid(filename, grid, row_labels, f"step {step}: {config.sample.solver}, NFE {nfe}{guided}")
    if writes:
        quality = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in metrics.items() if k != "sample/nfe")
        log.info("samples step %d: %s (NFE %d) -> %s", step, quality, nfe, filename)
    return metrics
