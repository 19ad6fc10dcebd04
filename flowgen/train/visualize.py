"""Periodic samples during training: a PNG in ``workdir/samples/`` and a quick quality metric.

2-D data: a scatter plot and the sliced Wasserstein-2 distance to data samples (64 random directions).
Images: a grid of samples and the gap in per-channel pixel mean/std to data (a cheap sanity number, not FID).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import flowgen as fg
from flowgen.evals.sample_metrics import random_directions, sliced_w2


def draw_samples(config, state, sample_apply, path, element_shape, num_classes, key, num: int):
    which = config.sample.ema
    if which == "ema":
        which = max(state.ema, key=lambda name: float(name.split("_", 1)[1]))   # the slowest EMA
    params = state.params if which == "params" else state.ema[which]
    kwargs = {}
    if num_classes:
        labels = jnp.arange(num) % num_classes
        kwargs = dict(cond=labels)
        if config.sample.guidance is not None:     # fg.sample's convention: w = 1 conditional, 0 unconditional
            kwargs.update(guidance=config.sample.guidance, null_cond=num_classes)
    x, info = fg.sample(sample_apply, path, target=config.loss.target, solver=config.sample.solver,
                        num_steps=config.sample.num_steps, grid=config.sample.grid, key=key,
                        shape=(num, *element_shape), params=params, **kwargs)
    return np.asarray(jax.device_get(x)), int(info["nfe"])


def sample_and_report(config, workdir, step, state, sample_apply, path, data, num_classes, key, drawn=None,
                      png_name=None) -> dict:
    """Draw samples (or use ``drawn`` = (samples, nfe)), write ``samples/<png_name>`` (default step_<step>.png)
    and return the quality metrics."""
    num = config.sample.num_samples
    if drawn is None:
        drawn = draw_samples(config, state, sample_apply, path, data.element_shape, num_classes, key, num)
    samples, nfe = drawn
    reference = data.reference(num)
    out_dir = os.path.join(workdir, "samples")
    png_name = png_name or f"step_{step:07d}.png"
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if samples.ndim == 2:
        metrics = {"sample/sliced_w2": sliced_w2(samples, reference[: len(samples)], random_directions(64, 2)),
                   "sample/nfe": nfe}
        if jax.process_index() == 0:
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, label="data")
            ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, label=f"samples (NFE {nfe})")
            ax.set_title(f"step {step}: sliced W2 {metrics['sample/sliced_w2']:.3f}")
            ax.legend(loc="upper right", fontsize=7)
            fig.savefig(os.path.join(out_dir, png_name), dpi=100)
            plt.close(fig)
        return metrics
    axes = tuple(range(samples.ndim - 1))
    gap = float(np.abs(samples.mean(axes) - reference.mean(axes)).mean()
                + np.abs(samples.std(axes) - reference.std(axes)).mean())
    if jax.process_index() == 0:
        n = min(64, len(samples))
        side = int(np.ceil(np.sqrt(n)))
        h, w, c = samples.shape[1:]
        grid = np.ones((side * h, side * w, c), np.float32)
        for i in range(n):
            r, q = divmod(i, side)
            grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = np.clip((samples[i] + 1) / 2, 0, 1)
        plt.imsave(os.path.join(out_dir, png_name), grid.squeeze(-1) if c == 1 else grid,
                   cmap="gray" if c == 1 else None)
    return {"sample/pixel_moment_gap": gap, "sample/nfe": nfe}
