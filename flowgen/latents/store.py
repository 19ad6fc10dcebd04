"""Reading a latent dataset written by ``python -m flowgen.latents`` (``flowgen.latents.encode``): its arrays as
read-only memory maps, nothing read until rows are indexed."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from flowgen.latents.encode import FORMAT


@dataclasses.dataclass(frozen=True)
class LatentDataset:
    """``mean``, ``std``: (N, F, h, w, Z) memory maps (F = 2 with flipped copies, else 1); ``label``: (N,) int32
    or None; ``provenance``: the dict of ``provenance.json``."""

    folder: str
    mean: np.ndarray
    std: np.ndarray
    label: np.ndarray | None
    provenance: dict

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape[2:])

    @property
    def num_classes(self) -> int:
        return int(self.provenance.get("num_classes") or 0)

    @property
    def scaling_factor(self) -> float:
        return float(self.provenance["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        return float(self.provenance.get("shift_factor") or 0.0)


def read_header(folder: str) -> dict:
    """The provenance of a latent dataset, checked (ValueError naming the folder and what is wrong)."""
    if not folder:
        raise ValueError("data.name='latents' needs data.kwargs.dir: a folder written by python -m flowgen.latents")
    file = os.path.join(folder, "provenance.json")
    if not os.path.isfile(file):
        what = "no such folder" if not os.path.isdir(folder) else "it has no provenance.json"
        raise ValueError(f"data.kwargs.dir={folder!r} is not a latent dataset ({what}); write one with "
                         "python -m flowgen.latents")
    with open(file) as f:
        provenance = json.load(f)
    if provenance.get("format") != FORMAT:
        raise ValueError(f"{file}: format {provenance.get('format')!r}, expected {FORMAT!r}")
    return provenance


def open_latents(folder: str) -> LatentDataset:
    """The latent dataset in ``folder`` as memory maps, their shapes checked against its provenance."""
    provenance = read_header(folder)
    arrays = {}
    for name, shape in provenance["arrays"].items():
        arrays[name] = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
        if list(arrays[name].shape) != list(shape):
            raise ValueError(f"{folder}/{name}.npy has shape {arrays[name].shape}; its provenance says {shape}")
    return LatentDataset(folder, arrays["mean"], arrays["std"], arrays.get("label"), provenance)
