"""Samples of a run trained on latents, as images: the one place that knows "this run's data are latents of
autoencoder X". ``run_decoder(config)`` reads the latent dataset's provenance (``data.kwargs.dir``), loads the
autoencoder folder recorded there, checks that its weights have the recorded sha256, and returns a ``LatentDecoder``:

    images = decoder(z_scaled)     # (B, h, w, Z) model-space samples → (B, H, W, 3) in about [−1, 1]
                                   # = vae.decode(z_scaled / scaling_factor + shift_factor)

Sample grids, ``--mode=sample`` files and hence FID (``python -m flowgen.evals.fid`` on the ``images`` of the
``.npz``) see decoded images. A missing folder fails before anything is drawn or written, naming what to fetch.
"""

from __future__ import annotations

import os

import numpy as np

from flowgen.train.resume import RunRefusedError


class AutoencoderMissingError(RunRefusedError, FileNotFoundError):
    """The autoencoder a latent dataset was encoded with is not on this machine (nothing was drawn or written)."""


class LatentDecoder:
    """Decodes model-space latents with the autoencoder of a latent dataset's provenance, ``batch`` at a time."""

    def __init__(self, provenance: dict, batch: int = 64):
        from flowgen import autoencoders
        from flowgen.latents.encode import sha256

        ae = provenance["autoencoder"]
        folder = ae["folder"]
        if not os.path.isdir(folder) and ae["name"] in autoencoders.KNOWN:
            folder = os.fspath(autoencoders.known_folder(ae["name"]))
        try:
            self.vae = autoencoders.from_pretrained(folder)
        except FileNotFoundError as e:
            raise AutoencoderMissingError(
                f"this run trained on latents of the autoencoder {ae['name']!r} (weights sha256 "
                f"{ae['weights_sha256']}), which its samples are decoded with; {e}") from None
        found = sha256(os.path.join(self.vae.folder, ae["weights"]))
        if found != ae["weights_sha256"]:
            raise AutoencoderMissingError(
                f"{self.vae.folder}: its weights have sha256 {found}, but the latents were encoded with weights of "
                f"sha256 {ae['weights_sha256']}: decoding with other weights gives other images; fetch those")
        self.scale = float(provenance["scaling_factor"])
        self.shift = float(provenance.get("shift_factor") or 0.0)
        self.batch = batch

    def __call__(self, z_scaled) -> np.ndarray:
        """(N, h, w, Z) model-space latents → (N, H, W, C) float32 images, about [−1, 1]."""
        z = np.asarray(z_scaled, np.float32) / np.float32(self.scale) + np.float32(self.shift)
        out = []
        for start in range(0, len(z), self.batch):      # fixed batch shape: one compilation
            block = z[start:start + self.batch]
            pad = self.batch - len(block)
            if pad:
                block = np.concatenate([block, np.zeros((pad, *block.shape[1:]), block.dtype)])
            out.append(np.asarray(self.vae.decode(block))[:self.batch - pad])
        return np.concatenate(out)


def run_decoder(config) -> LatentDecoder | None:
    """The decoder of a run on ``data.name = "latents"`` (None for other data and for mock latents)."""
    from flowgen.train import config as config_lib

    if config.data.name != config_lib.LATENTS or config.data.get("mock", False):
        return None
    return LatentDecoder(config_lib.latents_header(config.data))


def to_uint8(images) -> np.ndarray:
    """Images in [−1, 1] → uint8 by round((x + 1)·127.5), clipped: what FID reads."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
