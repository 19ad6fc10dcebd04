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


def convert_state_dict(state: dict[str, np.ndarray], expected, source: str = "state dict") -> dict:
    """Flax ``{"params": …}`` tree of float32 numpy arrays from a diffusers state dict.

    ``expected``: the parameter tree the module wants (``jax.eval_shape(module.init, …)``: shapes only), with or
    without the outer ``"params"``. Raises ``ValueError`` naming the missing, unexpected and mis-shaped tensors.
    """
    want = expected["params"] if "params" in expected else expected
    want_flat = {p: tuple(v.shape) for p, v in _flatten(want).items()}
    got: dict[tuple[str, ...], np.ndarray] = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in state.items():
        path, array = _leaf(torch_key_to_path(key), np.asarray(value))
        if path in got:
            raise ValueError(f"{source}: {key} and {origin[path]} both give parameter {'/'.join(path)}")
        got[path], origin[path] = array, key
    missing = want_flat.keys() - got.keys()
    unexpected = got.keys() - want_flat.keys()
    misshaped = [p for p in want_flat.keys() & got.keys() if got[p].shape != want_flat[p]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing('/'.join(p) for p in missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(origin[p] for p in unexpected)}")
    if misshaped:
        shown = sorted(misshaped)[:_SHOWN]
        problems.append(f"{len(misshaped)} with the wrong shape: "
                        + ", ".join(f"{origin[p]} {got[p].shape} (expected {want_flat[p]} after transposing)"
                                    for p in shown))
    if problems:
        raise ValueError(f"{source} does not match the configured autoencoder: " + "; ".join(problems)
                         + ". Is config.json the one saved with these weights?")
    params: dict = {}
    for path, array in got.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{source}: {origin[path]} has dtype {array.dtype}, expected floating point")
        node[path[-1]] = np.ascontiguousarray(array, dtype=np.float32)
    return {"params": params}


def load_safetensors(path: Path, expected) -> dict:
    """:func:`convert_state_dict` of the tensors in ``path``."""
    return convert_state_dict(read_safetensors(path), expected, source=str(path))
