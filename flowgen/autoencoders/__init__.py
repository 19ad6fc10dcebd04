"""Pretrained image autoencoders for latent flow matching: the KL autoencoder of Stable Diffusion (Rombach et al.
2022; 4 channels, scaling 0.18215) and its 16-channel SD3/FLUX variant (Esser et al. 2024; no quant convs, scaling
and shift), in Flax, loaded from diffusers-format folders. See ``docs/latent.md``.

    vae = flowgen.autoencoders.from_pretrained(folder)
    mean, std = vae.encode(x)       # NHWC float32 in [−1, 1] → unscaled latents
    y = vae.decode(z)
"""

from flowgen.autoencoders.config import (
    FULL_SIZE,
    AutoencoderConfig,
    config_from_dict,
    full_size_config,
    read_config,
)
from flowgen.autoencoders.convert import convert_state_dict, read_safetensors
from flowgen.autoencoders.kl import KLAutoencoder, posterior
from flowgen.autoencoders.pretrained import (
    KNOWN,
    Autoencoder,
    abstract_params,
    fetch_instructions,
    from_pretrained,
    known_folder,
    param_count,
)

__all__ = [
    "FULL_SIZE", "KNOWN", "Autoencoder", "AutoencoderConfig", "KLAutoencoder", "abstract_params", "config_from_dict",
    "convert_state_dict", "fetch_instructions", "from_pretrained", "full_size_config", "known_folder", "param_count",
    "posterior", "read_config", "read_safetensors",
]
