"""Latent datasets: an image dataset encoded once by a pretrained autoencoder (``flowgen.autoencoders``), with its
provenance, for latent flow matching (Rombach et al. 2022; DiT, Peebles & Xie 2023; SiT, Ma et al. 2024).

    python -m flowgen.latents --dataset=flowgen_digits --autoencoder=FOLDER --resolution=16 --out=DIR
    latents = open_latents(DIR)     # {"mean", "std"[, "label"]} memory maps and latents.provenance

Training on them: ``data.name = "latents"``, ``data.kwargs.dir = DIR`` (``flowgen.train.latent_input``). See
``docs/latent.md``.
"""

from flowgen.latents.encode import encode_dataset, read_provenance
from flowgen.latents.protocol import PROTOCOLS, adm_center_crop
from flowgen.latents.store import LatentDataset, open_latents

__all__ = ["PROTOCOLS", "LatentDataset", "adm_center_crop", "encode_dataset", "open_latents", "read_provenance"]
