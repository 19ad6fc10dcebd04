"""diffusers ``AutoencoderKL`` state dict (PyTorch layouts) → Flax parameters of ``KLAutoencoder``.

The conversion only renames and transposes, so it is exact (float16/bfloat16 files are widened to float32):

- key ``a.b.0.c.weight`` → path ``("a", "b_0", "c", leaf)``: a numeric part joins the name before it with ``_``;
- convolution ``weight`` (O, I, kh, kw) → ``kernel`` (kh, kw, I, O);
- linear ``weight`` (O, I) → ``kernel`` (I, O) (attention ``to_q``, ``to_k``, ``to_v``, ``to_out.0``);
- GroupNorm ``weight`` (C,) → ``scale``; every ``bias`` stays ``bias``.

Checkpoints saved before diffusers 0.14 name the mid-block attention ``query``, ``key``, ``value``, ``proj_attn``;
they are read as ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (as diffusers does on load). The result must match the
expected parameter tree exactly: a missing, unexpected or mis-shaped tensor raises ``ValueError`` listing them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_SHOWN = 6


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file as numpy arrays (no torch; bfloat16 through ``ml_dtypes``)."""
    import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which safetensors' numpy reader needs)
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            out[key] = f.get_tensor(key)
    return out


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """``"encoder.down_blocks.0.resnets.1.conv1.weight"`` → ``("encoder", "down_blocks_0", "resnets_1", "conv1",
    "weight")`` (the leaf is renamed by :func:`convert_state_dict`)."""
    m = _LEGACY_RE.match(key)
    if m:
        key = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
    parts: list[str] = []
    for p in key.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return tuple(parts)


def _leaf(path: tuple[str, ...], value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    *module, name = path
    if name == "bias":
        return path, value
    if name != "weight":
        raise ValueError(f"{'.'.join(path)}: unknown tensor kind {name!r} (expected weight or bias)")
    if value.ndim == 4:
        return (*module, "kernel"), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return (*module, "kernel"), value.T
    if value.ndim == 1:
        return (*module, "scale"), value
    raise ValueError(f"{'.'.join(path)}: a weight of shape {value.shape}")


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out |= _flatten(v, (*prefix, k))
        return out
    return {prefix: tree}


def _listing(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def path_to_torch_key(path: tuple[str, ...]) -> str:
    """Inverse of the renaming: ``("decoder", "up_blocks_1", "resnets_0", "norm1", "scale")`` →
    ``"decoder.up_blocks.1.resnets.0.norm1.weight"``."""
    *module, leaf = path
    parts = [re.sub(r"_(\d+)$", r".\1", p) for p in module]
    return ".".join([*parts, "weight" if leaf in ("kernel", "scale") else leaf])


def _torch_shape(path, flax_shape) -> tuple[int, ...]:
    if path[-1] == "kernel" and len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if path[-1] == "kernel" and len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def match_state_dict(state: dict[str, np.ndarray], expected, source: str = "state dict") -> dict:
    """Check a diffusers state dict against the parameter tree ``expected`` (shapes only, e.g. from
    ``jax.eval_shape(module.init, …)``, with or without the outer ``"params"``) and return ``{path: (key, array)}``
    with every array in Flax layout (a transposed view: nothing is copied).

    Raises ``ValueError`` naming the missing, unexpected, mis-shaped and non-floating-point tensors.
    """
    want = expected["params"] if "params" in expected else expected
    want_flat = {p: tuple(v.shape) for p, v in _flatten(want).items()}
    got: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
    for key, value in state.items():
        path, array = _leaf(torch_key_to_path(key), np.asarray(value))
        if path in got:
            raise ValueError(f"{source}: {key} and {got[path][0]} both give parameter {path_to_torch_key(path)}")
        got[path] = (key, array)
    missing = want_flat.keys() - got.keys()
    unexpected = got.keys() - want_flat.keys()
    misshaped = sorted(p for p in want_flat.keys() & got.keys() if got[p][1].shape != want_flat[p])
    not_float = sorted(p for p in got if not np.issubdtype(got[p][1].dtype, np.floating))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(path_to_torch_key(p) for p in missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(got[p][0] for p in unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with the wrong shape: " + ", ".join(
            f"{got[p][0]} {tuple(np.shape(state[got[p][0]]))} (expected {_torch_shape(p, want_flat[p])})"
            for p in misshaped[:_SHOWN]))
    if not_float:
        problems.append(f"{len(not_float)} not floating point: "
                        + ", ".join(f"{got[p][0]} ({got[p][1].dtype})" for p in not_float[:_SHOWN]))
    if problems:
        raise ValueError(f"{source} does not match the configured autoencoder: " + "; ".join(problems)
                         + ". Is config.json the one saved with these weights?")
    return got


def convert_state_dict(state: dict[str, np.ndarray], expected, source: str = "state dict") -> dict:
    """Flax ``{"params": …}`` tree of float32 numpy arrays from a diffusers state dict (:func:`match_state_dict`
    checks it first)."""
    params: dict = {}
    for path, (_, array) in match_state_dict(state, expected, source).items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(array, dtype=np.float32)
    return {"params": params}


def load_safetensors(path: Path, expected) -> dict:
    """:func:`convert_state_dict` of the tensors in ``path``."""
    return convert_state_dict(read_safetensors(path), expected, source=str(path))
