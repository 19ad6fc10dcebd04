"""Write a Flax KL autoencoder as a diffusers ``AutoencoderKL`` folder: ``config.json`` and
``diffusion_pytorch_model.safetensors`` in PyTorch layouts — the inverse of :mod:`flowgen.autoencoders.convert`, so
``from_pretrained(save_pretrained(vae, folder))`` gives the same parameters bit for bit, and diffusers'
``AutoencoderKL.from_pretrained(folder)`` reads it.

    kernel (kh, kw, I, O) → weight (O, I, kh, kw);  kernel (I, O) → weight (O, I);  scale → weight;  bias → bias

An existing folder is never replaced: the files are written into ``FOLDER.tmp-<pid>`` and the finished folder is
renamed into place (``FileExistsError`` if ``folder`` exists).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from flowgen.autoencoders.config import DOWN_BLOCK, UP_BLOCK, AutoencoderConfig
from flowgen.autoencoders.convert import _flatten, path_to_torch_key
from flowgen.autoencoders.pretrained import WEIGHTS


def config_dict(config: AutoencoderConfig) -> dict:
    """The diffusers ``config.json`` of ``config`` (every key, lists for tuples)."""
    d = {"_class_name": "AutoencoderKL"}
    for k, v in dataclasses.asdict(config).items():
        d[k] = list(v) if isinstance(v, tuple) else v
    levels = len(config.block_out_channels)
    d["down_block_types"], d["up_block_types"] = [DOWN_BLOCK] * levels, [UP_BLOCK] * levels
    return d


def state_dict(params) -> dict[str, np.ndarray]:
    """Flax ``{"params": …}`` of a ``KLAutoencoder`` → diffusers state dict (float32, PyTorch layouts)."""
    tree = params["params"] if "params" in params else params
    out = {}
    for path, value in _flatten(jax.device_get(tree)).items():
        a = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
        out[path_to_torch_key(path)] = np.ascontiguousarray(a)
    return out


def save_pretrained(vae, folder, extra_files: dict[str, dict] | None = None) -> Path:
    """Write ``vae`` (an ``Autoencoder``) as a diffusers folder; ``extra_files``: name → JSON object written beside
    (e.g. how it was trained). Returns the folder."""
    from safetensors.numpy import save_file

    folder = Path(folder).expanduser()
    if folder.exists():
        raise FileExistsError(f"{folder} exists; an autoencoder folder is never replaced (choose another --out)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(config_dict(vae.config), indent=2, sort_keys=True) + "\n")
    save_file(state_dict(vae.params), str(tmp / WEIGHTS), metadata={"format": "pt"})
    for name, obj in (extra_files or {}).items():
        (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.rename(tmp, folder)                 # fails (and keeps tmp) if folder appeared meanwhile
    return folder
