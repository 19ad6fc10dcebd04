"""Flax Linen networks. Everything outside this package sees only ``apply``.

    mlp.py          MLP for low-dimensional data (time- and optionally label-conditioned)
    embeddings.py   sinusoidal and Gaussian Fourier time features, DiT-style TimestepEmbedder, LabelEmbedder
                    (with the null label of classifier-free guidance)
    unet.py         DDPM / DDPM++ U-Net (Ho et al. 2020; Song et al. 2021); presets in UNET_PRESETS
    dit.py          DiT with adaLN-Zero (Peebles & Xie 2023); presets S/B/L/XL × patch 2/4/8 in DIT_PRESETS
    mmdit.py        MM-DiT of Stable Diffusion 3 (Esser et al. 2024): joint image-text attention, text-conditioned;
                    SD3 presets in MMDIT_PRESETS

Every network is a Flax Linen module with fields ``num_classes`` and ``dtype``, listed in ``NETWORKS`` under the
name a config uses. It is called as ``apply(variables, x, t[, labels], ...)`` with x (batch, ...), t (batch,) and
integer labels in [0, num_classes] (num_classes = the null label), and returns an array of x's shape and dtype.
A text-conditioned network (class attribute ``text_conditioned``, the MM-DiT) takes a caption's embeddings
``{"context", "pooled"}`` (``flowgen.data.text``) in place of labels.
"""

from flowgen.networks.dit import DIT_PRESETS, DiT, dit_param_count
from flowgen.networks.embeddings import (
    EMBEDDINGS,
    GaussianFourierEmbedding,
    LabelEmbedder,
    SinusoidalEmbedding,
    TimestepEmbedder,
    fourier_embedding,
    sinusoidal_embedding,
)
from flowgen.networks.mlp import MLP, param_count
from flowgen.networks.mmdit import MMDIT_PRESETS, MMDiT, mmdit_param_count
from flowgen.networks.unet import UNET_PRESETS, UNet, unet_cifar10_ddpm

# The networks a config can name (``model.name``); each is built as ``cls(num_classes=..., dtype=..., **kwargs)``.
NETWORKS = {"mlp": MLP, "unet": UNet, "dit": DiT, "mmdit": MMDiT}

__all__ = [
    "DIT_PRESETS", "EMBEDDINGS", "MLP", "MMDIT_PRESETS", "NETWORKS", "UNET_PRESETS", "DiT", "GaussianFourierEmbedding",
    "LabelEmbedder", "MMDiT", "SinusoidalEmbedding", "TimestepEmbedder", "UNet", "dit_param_count",
    "fourier_embedding", "mmdit_param_count", "param_count", "sinusoidal_embedding", "unet_cifar10_ddpm",
]
