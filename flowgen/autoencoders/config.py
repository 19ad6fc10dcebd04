"""The configuration of a KL autoencoder, read from a diffusers ``AutoencoderKL`` ``config.json``.

Keys and their defaults are diffusers' (a key missing from the file takes diffusers' default, so old configs such as
sd-vae-ft-mse's, written before ``scaling_factor`` existed, read as diffusers reads them). Keys starting with ``_``
(``_class_name``, ``_diffusers_version``, ``_name_or_path``) are metadata; any other unknown key, a wrong type, or a
value flowgen does not implement raises a short ``ValueError`` naming the key, the value and the valid choices.

Full-size configurations shipped with flowgen (``configs/*.json`` beside this file; :func:`full_size_config`):

- ``sd_vae_ft_mse``: the SD 1.x/2.x autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
  Diffusion Models", KL-f8): widths (128, 256, 512, 512), 2 ResNet blocks per level, 4 latent channels, quant convs,
  scaling 0.18215, no shift. ``stabilityai/sd-vae-ft-mse`` and ``sd-vae-ft-ema`` share it (different weights).
- ``sd3_vae``: the 16-channel autoencoder of SD3 (Esser et al. 2024, "Scaling Rectified Flow Transformers for
  High-Resolution Image Synthesis"): the same widths, 16 latent channels, no quant convs, scaling 1.5305, shift
  0.0609. FLUX.1's autoencoder has this architecture with scaling 0.3611, shift 0.1159.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FULL_SIZE = ("sd_vae_ft_mse", "sd3_vae")
ACTIVATIONS = ("silu", "swish")          # the same function; diffusers accepts both names
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """diffusers ``AutoencoderKL`` configuration (defaults are diffusers' defaults).

    ``block_out_channels[i]`` is the width of encoder level i (decoder levels in reverse); the image is downsampled
    by 2 between levels, so latents are ``H / 2^(L−1)`` × ``W / 2^(L−1)`` × ``latent_channels``.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downsampling_factor(self) -> int:
        """Image side / latent side: 2^(number of levels − 1), 8 for SD and SD3."""
        return 2 ** (len(self.block_out_channels) - 1)


_BLOCK_TYPES = ("down_block_types", "up_block_types")
_FIELDS = {f.name for f in dataclasses.fields(AutoencoderConfig)}
VALID_KEYS = tuple(sorted(_FIELDS | set(_BLOCK_TYPES)))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def config_from_dict(d: dict) -> AutoencoderConfig:
    """Validate a diffusers ``AutoencoderKL`` config dict and return it as an :class:`AutoencoderConfig`."""
    if not isinstance(d, dict):
        raise ValueError(f"an autoencoder config must be a JSON object, got {type(d).__name__}")
    cls = d.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"_class_name={cls!r}: flowgen reads only diffusers' 'AutoencoderKL' configs")
    unknown = sorted(k for k in d if not k.startswith("_") and k not in VALID_KEYS)
    if unknown:
        raise ValueError(f"unknown AutoencoderKL config key(s) {unknown}; valid keys: {', '.join(VALID_KEYS)}")
    kw = {k: v for k, v in d.items() if k in _FIELDS}
    for k in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if k in kw and not (_is_int(kw[k]) and kw[k] > 0):
            raise ValueError(f"{k}={kw[k]!r}: must be a positive integer")
    if "block_out_channels" in kw:
        ch = kw["block_out_channels"]
        if not (isinstance(ch, list | tuple) and ch and all(_is_int(c) and c > 0 for c in ch)):
            raise ValueError(f"block_out_channels={ch!r}: must be a non-empty list of positive integers")
        kw["block_out_channels"] = tuple(ch)
    for k in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", "force_upcast"):
        if k in kw and not isinstance(kw[k], bool):
            raise ValueError(f"{k}={kw[k]!r}: must be true or false")
    if "scaling_factor" in kw and not (_is_number(kw["scaling_factor"]) and kw["scaling_factor"] > 0):
        raise ValueError(f"scaling_factor={kw['scaling_factor']!r}: must be a positive number")
    if kw.get("shift_factor") is not None and not _is_number(kw["shift_factor"]):
        raise ValueError(f"shift_factor={kw['shift_factor']!r}: must be a number or null")
    for k in ("latents_mean", "latents_std"):
        if kw.get(k) is not None:
            if not (isinstance(kw[k], list | tuple) and all(_is_number(v) for v in kw[k])):
                raise ValueError(f"{k}={kw[k]!r}: must be a list of numbers or null")
            kw[k] = tuple(float(v) for v in kw[k])
    if isinstance(kw.get("sample_size"), list):
        kw["sample_size"] = tuple(kw["sample_size"])
    act = kw.get("act_fn", "silu")
    if act not in ACTIVATIONS:
        raise ValueError(f"act_fn={act!r}: flowgen implements {ACTIVATIONS} (the SD/SD3/FLUX autoencoders use silu)")
    cfg = AutoencoderConfig(**kw)
    levels = len(cfg.block_out_channels)
    for key, want in zip(_BLOCK_TYPES, (DOWN_BLOCK, UP_BLOCK), strict=True):
        types = d.get(key, [want])
        if not isinstance(types, list | tuple) or any(t != want for t in types):
            raise ValueError(f"{key}={types!r}: flowgen implements only {want!r} blocks")
        if len(types) != levels:
            raise ValueError(f"{key} has {len(types)} entries but block_out_channels has {levels}")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={cfg.norm_num_groups} does not divide block_out_channels {bad}")
    for k in ("latents_mean", "latents_std"):
        v = getattr(cfg, k)
        if v is not None and len(v) != cfg.latent_channels:
            raise ValueError(f"{k} has {len(v)} entries, latent_channels is {cfg.latent_channels}")
    return cfg


def read_config(path) -> AutoencoderConfig:
    """Read ``path`` (a ``config.json`` or a folder holding one) as an :class:`AutoencoderConfig`."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    try:
        return config_from_dict(d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def full_size_config(name: str) -> dict:
    """The diffusers config dict of a full-size autoencoder shipped with flowgen: one of :data:`FULL_SIZE`."""
    if name not in FULL_SIZE:
        raise ValueError(f"full-size autoencoder {name!r}; choose one of {FULL_SIZE}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())
