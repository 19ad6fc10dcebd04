"""Paired data sets: (x_data, x₀) pairs stored together, for training with the coupling ``given`` (e.g. reflow's
pairs of Liu et al. 2023, drawn by integrating a trained model from x₀ to x_data).

A pairs file is a ``.npz`` with arrays ``x_data`` (N, ...) and ``noise`` (N, ...) of the same shape, and optionally
``label`` (N,) integers. ``write_pairs`` writes one without ever replacing an existing file.
"""

from __future__ import annotations

import os

import numpy as np


def load_pairs(file: str) -> dict[str, np.ndarray]:
    """The arrays of a pairs file, checked (ValueError naming the file and what is wrong)."""
    if not file:
        raise ValueError("data.name='pairs' needs data.kwargs.file: a .npz with arrays x_data and noise")
    if not os.path.isfile(file):
        raise ValueError(f"data.kwargs.file={file!r}: no such file (a .npz with arrays x_data and noise)")
    with np.load(file) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    missing = [k for k in ("x_data", "noise") if k not in arrays]
    if missing:
        raise ValueError(f"pairs file {file!r} lacks array(s) {', '.join(missing)} (has {', '.join(arrays)})")
    if arrays["x_data"].shape != arrays["noise"].shape or arrays["x_data"].ndim < 2:
        raise ValueError(f"pairs file {file!r}: x_data {arrays['x_data'].shape} and noise {arrays['noise'].shape} "
                         "must have one shape (N, ...)")
    if "label" in arrays and arrays["label"].shape != arrays["x_data"].shape[:1]:
        raise ValueError(f"pairs file {file!r}: label has shape {arrays['label'].shape}; expected (N,)")
    return arrays


def pairs_element_shape(file: str) -> tuple[int, ...]:
    """Shape of one example of a pairs file, read from the file's header only."""
    if not file or not os.path.isfile(file):
        load_pairs(file)  # raises the message
    with np.load(file, mmap_mode="r") as f:
        return tuple(f["x_data"].shape[1:])


def write_pairs(file: str, x_data, noise, label=None, **provenance) -> None:
    """Write a pairs file (exclusive creation: an existing file is never replaced). ``provenance`` (teacher,
    solver, NFE, seeds, ...) is stored beside the arrays as 0-d string arrays under ``meta_<key>``."""
    arrays = {"x_data": np.asarray(x_data), "noise": np.asarray(noise)}
    if label is not None:
        arrays["label"] = np.asarray(label, np.int32)
    arrays.update({f"meta_{k}": np.asarray(str(v)) for k, v in provenance.items()})
    with open(file, "xb") as f:
        np.savez(f, **arrays)
