"""Text conditioning from precomputed embeddings: no text encoder runs at training time (as SD3 trains from cached
encoder outputs). A caption enters the network as

    cond = {"context": (B, L, D_ctx) float32,     the text encoder's token sequence (SD3: CLIP-L ‖ CLIP-G ‖ T5)
            "pooled":  (B, D_pool) float32}        a pooled sentence vector (SD3: CLIP-L ‖ CLIP-G pooled outputs)

and the null caption of classifier-free guidance is all zeros (both entries): dropped captions are trained as
zeros (``loss.label_dropout``) and guided sampling evaluates the net at zeros. Zeros, not the embedding of an empty
prompt: Stability's generative-models conditioner drops an embedder by multiplying its output by zero (its
``ucg_rate``), and diffusers' SD3 pipeline feeds zeros in place of an absent T5 encoder; and a data set of cached
embeddings can represent zeros without any encoder.

Two sources of such data (``config.data``):

- ``data.captions = "digits"`` on a labelled image dataset (``flowgen_digits``): every class has a fixed caption
  ("a handwritten seven") embedded by ``CaptionSet`` — a shipped word tokenizer and a deterministic embedding
  table (each word and each caption a seeded random vector), no model involved. Batches carry the caption of each
  example's label instead of the label; samples are drawn with caption ``i % 10`` for sample i.
- ``data.name = "text_embeddings"`` with ``data.data_dir`` a folder of precomputed arrays (``write_text_folder``):
  ``x.npy`` (N, H, W, C) images or latents, ``context.npy`` (N, L, D_ctx), ``pooled.npy`` (N, D_pool) and
  ``text.json`` (provenance: encoders, tokens, autoencoder, ...). Shapes are declared in ``data.kwargs`` (``shape``,
  ``context_len``, ``context_dim``, ``pooled_dim``) so a run is built without reading the folder, and checked
  against the files when they are opened. ``data.mock = True`` serves seeded random arrays of those shapes instead
  (smoke runs). Samples are drawn with the captions of the folder's first examples.

``TextConditioning`` is what a run knows of its text conditioning: shapes, the null caption, the captions samples
are drawn with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib

import numpy as np

COND_KEYS = ("context", "pooled")
TEXT_FOLDER = "text_embeddings"          # data.name of a folder of precomputed embeddings
FOLDER_FILES = ("x.npy", "context.npy", "pooled.npy")
MOCK_EXAMPLES = 1024                     # examples of a mocked text_embeddings folder (made when read)
MOCK_SEED = 0
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _word_vector(text: str, dim: int, salt: str) -> np.ndarray:
    """A fixed N(0, 1/dim) vector for ``text``, seeded by CRC-32 of ``salt:text`` (stable across platforms)."""
    seed = zlib.crc32(f"{salt}:{text}".encode())
    return (np.random.default_rng(seed).standard_normal(dim) / np.sqrt(dim)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CaptionSet:
    """One caption per class, embedded without a model: the tokenizer splits a caption into lowercase words; token j
    of the context is the word's fixed vector (``context_dim`` columns), padded with zero rows to ``context_len``; the
    pooled vector is the whole caption's own fixed vector (``pooled_dim`` columns). Every vector is a seeded random
    N(0, I/dim) draw, so captions differ in their class word (context) and in the pooled vector."""

    name: str
    captions: tuple[str, ...]
    context_len: int = 4
    context_dim: int = 32
    pooled_dim: int = 32

    def __post_init__(self):
        longest = max(len(self.tokenize(c)) for c in self.captions)
        if longest > self.context_len:
            raise ValueError(f"caption set {self.name!r}: a caption has {longest} words, more than context_len="
                             f"{self.context_len}")

    @staticmethod
    def tokenize(caption: str) -> list[str]:
        return caption.lower().split()

    def table(self) -> dict[str, np.ndarray]:
        """``{"context": (K, L, D_ctx), "pooled": (K, D_pool)}`` float32 for the K captions, in class order."""
        context = np.zeros((len(self.captions), self.context_len, self.context_dim), np.float32)
        for i, caption in enumerate(self.captions):
            for j, word in enumerate(self.tokenize(caption)):
                context[i, j] = _word_vector(word, self.context_dim, "token")
        pooled = np.stack([_word_vector(c, self.pooled_dim, "pooled") for c in self.captions])
        return {"context": context, "pooled": pooled}

    def embed(self, labels) -> dict[str, np.ndarray]:
        """The captions of integer ``labels`` (B,): ``{"context": (B, L, D_ctx), "pooled": (B, D_pool)}``."""
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.captions)):
            raise ValueError(f"caption set {self.name!r}: labels must be in [0, {len(self.captions) - 1}]; got "
                             f"{labels.min()}..{labels.max()}")
        return {k: v[labels] for k, v in self.table().items()}


#: Caption sets a labelled dataset can be captioned with (``data.captions``).
CAPTION_SETS = {
    "digits": CaptionSet("digits", tuple(f"a handwritten {w}" for w in _DIGIT_WORDS)),
}


def get_caption_set(name: str) -> CaptionSet:
    if name not in CAPTION_SETS:
        raise ValueError(f"data.captions={name!r} is not a caption set; valid: '' (no captions), "
                         f"{', '.join(map(repr, CAPTION_SETS))}")
    return CAPTION_SETS[name]


@dataclasses.dataclass(frozen=True)
class TextConditioning:
    """What a run knows of its text conditioning without reading data: shapes, the null caption, and where the
    captions that samples are drawn with come from (a caption set, or a folder's first examples)."""

    context_len: int
    context_dim: int
    pooled_dim: int
    caption_set: CaptionSet | None = None
    folder: str = ""          # a text_embeddings folder (its first captions condition the samples)
    mock: bool = False        # a mocked folder (data.mock): its seeded random captions

    @property
    def num_captions(self) -> int:
        """Distinct captions samples cycle through (a caption set's size), 0 if every sample has its own."""
        return len(self.caption_set.captions) if self.caption_set is not None else 0

    def null(self) -> dict:
        """The null caption as scalars that broadcast to any batch (``fg.sample``'s ``null_cond``)."""
        return {k: np.float32(0.0) for k in COND_KEYS}

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        return {"context": np.zeros((batch, self.context_len, self.context_dim), np.float32),
                "pooled": np.zeros((batch, self.pooled_dim), np.float32)}

    def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"context": (batch, self.context_len, self.context_dim), "pooled": (batch, self.pooled_dim)}

    def sample_cond(self, n: int) -> dict[str, np.ndarray]:
        """The captions of n samples: caption ``i % K`` of a caption set for sample i, or the captions of a folder's
        first n examples (repeated if it has fewer)."""
        if self.caption_set is not None:
            return self.caption_set.embed(np.arange(n) % len(self.caption_set.captions))
        if self.mock:
            arrays = mock_text_arrays((1,), self.context_len, self.context_dim, self.pooled_dim)
        else:
            arrays = open_text_folder(self.folder)
        idx = np.arange(n) % len(arrays["pooled"])
        return {k: np.asarray(arrays[k][idx], np.float32) for k in COND_KEYS}


def write_text_folder(folder: str | os.PathLike, x, context, pooled, provenance: dict | None = None) -> None:
    """Write a ``text_embeddings`` folder: ``x.npy``, ``context.npy``, ``pooled.npy`` and ``text.json`` (the shapes
    plus ``provenance``: which encoders, tokens, autoencoder and protocol made it). Refuses to overwrite."""
    x, context, pooled = np.asarray(x), np.asarray(context), np.asarray(pooled)
    n = len(x)
    if x.ndim != 4 or context.ndim != 3 or pooled.ndim != 2 or len(context) != n or len(pooled) != n:
        raise ValueError(f"write_text_folder: need x (N, H, W, C), context (N, L, D_ctx), pooled (N, D_pool) with one "
                         f"N; got shapes {x.shape}, {context.shape}, {pooled.shape}")
    os.makedirs(folder, exist_ok=True)
    existing = [f for f in (*FOLDER_FILES, "text.json") if os.path.exists(os.path.join(folder, f))]
    if existing:
        raise FileExistsError(f"write_text_folder: {folder} already has {existing}; refusing to overwrite")
    for name, array in zip(FOLDER_FILES, (x, context, pooled), strict=True):
        np.save(os.path.join(folder, name), array)
    meta = {"num_examples": n, "shape": list(x.shape[1:]), "context_len": int(context.shape[1]),
            "context_dim": int(context.shape[2]), "pooled_dim": int(pooled.shape[1]),
            "provenance": provenance or {}}
    with open(os.path.join(folder, "text.json"), "w") as f:
        json.dump(meta, f, indent=1)


def open_text_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``text_embeddings`` folder, memory-mapped (read-only). FileNotFoundError naming the missing
    files and how to make them; ValueError if the arrays disagree in their number of examples."""
    folder = os.fspath(folder)
    missing = [f for f in FOLDER_FILES if not os.path.isfile(os.path.join(folder, f))]
    if not folder or missing:
        raise FileNotFoundError(
            f"data.name={TEXT_FOLDER!r}: data.data_dir={folder!r} lacks {missing or list(FOLDER_FILES)}. It must hold "
            "x.npy (N, H, W, C) images or latents, context.npy (N, L, D_ctx) and pooled.npy (N, D_pool), the text "
            "encoders' outputs computed once beforehand (flowgen.data.text.write_text_folder); or set data.mock=True "
            "for random arrays of the declared shapes")
    arrays = {k: np.load(os.path.join(folder, f), mmap_mode="r")
              for k, f in zip(("x", *COND_KEYS), FOLDER_FILES, strict=True)}
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{folder}: x.npy, context.npy and pooled.npy disagree in their number of examples: {sizes}")
    return arrays


class _MockRows:
    """A mocked array: row i is standard normal from the generator seeded by (``MOCK_SEED``, ``which``, i), made
    when read, so a mocked folder of any size costs nothing until used and its rows never depend on other arrays."""

    def __init__(self, which: int, n: int, row_shape: tuple[int, ...]):
        self.which, self.row_shape, self.shape = which, tuple(row_shape), (n, *row_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        out = np.stack([np.random.default_rng([MOCK_SEED, self.which, int(i)]).standard_normal(self.row_shape,
                                                                                              np.float32)
                        for i in np.atleast_1d(rows)]) if np.size(rows) else np.zeros((0, *self.row_shape), np.float32)
        return out if np.ndim(rows) else out[0]


def mock_text_arrays(shape, context_len: int, context_dim: int, pooled_dim: int,
                     n: int = MOCK_EXAMPLES) -> dict:
    """Arrays shaped like a ``text_embeddings`` folder of n examples (``data.mock``): standard-normal rows, each
    made from its own seeded generator when it is read."""
    return {"x": _MockRows(0, n, shape), "context": _MockRows(1, n, (context_len, context_dim)),
            "pooled": _MockRows(2, n, (pooled_dim,))}
