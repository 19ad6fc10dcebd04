"""Training inputs with text conditioning (``flowgen.data.text``), behind the ``input.py`` interface. Batches are
``{"x": (B, ...), "context": (B, L, D_ctx), "pooled": (B, D_pool)}`` host arrays (this process's share).

``CaptionedInput`` wraps a labelled input (``ImageInput``) and replaces each label by its class's caption
embeddings; its state and reference images are the wrapped input's. ``TextFolderInput`` reads a
``text_embeddings`` folder (memory-mapped ``.npy`` files) or, with ``data.mock``, seeded random arrays of the
declared shapes: every epoch a fresh permutation of the N examples from ``(seed, epoch)``, cut into
``process_count`` strided shards of ``N // process_count`` (so processes read disjoint examples and the same number
of batches), ``batch_size / process_count`` examples per step, the last incomplete batch of an epoch dropped. Its
state is ``{"epoch", "position"}``, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import jax
import numpy as np

from flowgen.data import text as text_lib


class CaptionedInput:
    """A labelled input whose batches carry caption embeddings instead of labels (``data.captions``)."""

    def __init__(self, inner, caption_set: text_lib.CaptionSet):
        self._inner, self.caption_set = inner, caption_set
        self.on_device = False
        self.element_shape = inner.element_shape
        self.num_classes = 0
        self._table = caption_set.table()

    def next(self) -> dict:
        batch = dict(self._inner.next())
        labels = batch.pop("label")
        return {**batch, **{k: v[labels] for k, v in self._table.items()}}

    def get_state(self) -> dict:
        return self._inner.get_state()

    def set_state(self, state: dict) -> None:
        self._inner.set_state(state)

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return self._inner.reference(n, seed)


class TextFolderInput:
    """Examples and their precomputed text embeddings from a ``text_embeddings`` folder (see the module docstring)."""

    on_device = False

    def __init__(self, data_cfg, seed: int, text: text_lib.TextConditioning, element_shape: tuple[int, ...]):
        n_proc = jax.process_count()
        if data_cfg.batch_size % n_proc:
            raise ValueError(f"data.batch_size={data_cfg.batch_size} is not divisible by the number of processes "
                             f"({n_proc})")
        if text.mock:
            self._arrays = text_lib.mock_text_arrays(element_shape, text.context_len, text.context_dim,
                                                     text.pooled_dim)
        else:
            self._arrays = text_lib.open_text_folder(data_cfg.data_dir)
        want = {"x": tuple(element_shape), **{k: v[1:] for k, v in text.shapes(1).items()}}
        got = {k: tuple(v.shape[1:]) for k, v in self._arrays.items()}
        if got != want:
            raise ValueError(f"{data_cfg.data_dir}: the arrays have per-example shapes {got}, but data.kwargs declares "
                             f"{want}")
        self.element_shape, self.num_classes, self.seed = tuple(element_shape), 0, seed
        self._local = data_cfg.batch_size // n_proc
        self._shard, self._count = jax.process_index(), n_proc
        self._per_epoch = len(self._arrays["x"]) // n_proc
        if self._per_epoch < self._local:
            raise ValueError(f"{data_cfg.data_dir}: {len(self._arrays['x'])} examples give each of {n_proc} processes "
                             f"{self._per_epoch}, fewer than its batch of {self._local}")
        self.epoch, self.position = 0, 0

    def _indices(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self._arrays["x"]))
        return perm[self._shard::self._count][:self._per_epoch]

    def next(self) -> dict:
        if self.position + self._local > self._per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._indices(self.epoch)[self.position:self.position + self._local]
        self.position += self._local
        order = np.argsort(idx)            # read the memory map in increasing order, then restore the batch order
        rows = {k: np.asarray(v[idx[order]], np.float32) for k, v in self._arrays.items()}
        inverse = np.argsort(order)
        return {k: v[inverse] for k, v in rows.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        """The first n examples (stored order), for sample-quality numbers."""
        return np.asarray(self._arrays["x"][:n], np.float32)
