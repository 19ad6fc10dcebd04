"""Training on a latent dataset (``data.name = "latents"``, ``data.kwargs.dir``; written by ``python -m
flowgen.latents``), fed from the host like a large pairs file (``input.HostPairsInput``): the arrays stay
memory-mapped and each process reads only its share of each global batch.

Global batch ``step`` is a pure function of (seed, step), so a resumed run sees exactly the batches of an
uninterrupted one: rows ``pair_indices(seed, step, B, N)`` (uniform, with replacement), for each row one of its F
stored copies (F = 2: the image or its mirror, each with probability 1/2, as DiT's random flip) and a posterior draw

    x = (mean + std·ε − shift_factor)·scaling_factor,    ε ~ N(0, I) from fold_in(key(seed), step, global row)

(Rombach et al. 2022's scaled latents; DiT/SiT sample the posterior anew every step). ε of a row does not depend on
the process count. Labels come along for class-conditional models. ``data.mock``: seeded random latents of the
declared shape (``data.kwargs.shape``, ``num_classes``), scaling 1 and no shift, for smoke runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.train import config as config_lib
from flowgen.train.input import StepState, host_program, host_share, pair_indices

MOCK_EXAMPLES = 256


def _mock_arrays(shape, num_classes: int, copies: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"mean": rng.standard_normal((MOCK_EXAMPLES, copies, *shape), np.float32),
            "std": np.full((MOCK_EXAMPLES, copies, *shape), 0.1, np.float32),
            "label": (np.arange(MOCK_EXAMPLES) % num_classes).astype(np.int32) if num_classes else None}


@functools.lru_cache(maxsize=16)
def _draw_program(seed: int, batch_size: int, local: int, shape: tuple):
    """(step, N, F, start) → (rows, copies, ε) of the share [start, start + local) of global batch ``step``,
    compiled once per seed, batch layout and latent shape (host CPU)."""

    def draw(step, n, copies, start):
        key = jax.random.fold_in(jax.random.key(seed), step)
        idx = jax.lax.dynamic_slice_in_dim(pair_indices(seed, step, batch_size, n), start, local)
        copy = jax.lax.dynamic_slice_in_dim(
            jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0, copies), start, local)
        k_eps = jax.random.fold_in(key, 2)
        eps = jax.vmap(lambda r: jax.random.normal(jax.random.fold_in(k_eps, r), shape))(start + jnp.arange(local))
        return idx, copy, eps

    return host_program(draw)


class LatentInput(StepState):
    """Scaled posterior draws of a latent dataset (see the module docstring); the ``input.py`` interface."""

    on_device = False

    def __init__(self, data_cfg, seed: int, shard_index: int | None = None, shard_count: int | None = None):
        header = config_lib.latents_header(data_cfg)
        self._rows = host_share(data_cfg.batch_size, shard_index, shard_count)
        if header.get("mock"):
            arrays = _mock_arrays(tuple(header["latent_shape"]), header["num_classes"])
        else:
            from flowgen.latents.store import open_latents

            data = open_latents(config_lib._kwargs(data_cfg.kwargs)["dir"])
            arrays = {"mean": data.mean, "std": data.std, "label": data.label}
        self._mean, self._std, self._label = arrays["mean"], arrays["std"], arrays["label"]
        self.scale = np.float32(header["scaling_factor"])
        self.shift = np.float32(header["shift_factor"] or 0.0)
        self.element_shape = tuple(self._mean.shape[2:])
        self.num_classes = int(header["num_classes"] or 0)
        self.seed, self.batch_size = seed, data_cfg.batch_size
        program = _draw_program(seed, self.batch_size, self._rows.stop - self._rows.start, self.element_shape)
        self._draw = lambda step: program(step, len(self._mean), self._mean.shape[1], self._rows.start)
        self.step = 0

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, copies) of this process's share of global batch ``step``."""
        idx, copy, _ = self._draw(step)
        return idx, copy

    def batch(self, step: int) -> dict:
        """This process's share of global batch ``step``."""
        idx, copy, eps = self._draw(step)
        order = np.argsort(idx, kind="stable")        # read the memory map in increasing order
        mean, std = np.empty((len(idx), *self.element_shape), np.float32), np.empty_like(eps)
        mean[order] = self._mean[idx[order], copy[order]]
        std[order] = self._std[idx[order], copy[order]]
        out = {"x": ((mean + std * eps) - self.shift) * self.scale}
        if self.num_classes:
            out["label"] = np.asarray(self._label[idx], np.int32)
        return out

    def next(self) -> dict:
        out = self.batch(self.step)
        self.step += 1
        return out

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        """n scaled posterior means (unflipped copies) of rows drawn without replacement by ``seed``."""
        rows = np.sort(np.random.default_rng(seed).permutation(len(self._mean))[:n])
        return (np.asarray(self._mean[rows, 0], np.float32) - self.shift) * self.scale
