"""How images become autoencoder input: the crop/resize protocols of latent datasets (recorded in their provenance).

- ``adm``: the centre crop of ADM (Dhariwal & Nichol 2021, guided-diffusion's ``center_crop_arr``), which DiT, SiT,
  REPA and the ImageNet FID reference batches use: while the short side is at least twice ``resolution``, halve the
  image with a box filter; then resize bicubically so that the short side is ``resolution`` (the long side rounded
  to the nearest pixel); then cut the central ``resolution``×``resolution`` square (offsets rounded down).
- ``stored``: the image as the dataset stores it (it must be square, of a side the autoencoder accepts).

Images are uint8 (H, W, C), C ∈ {1, 3}; greyscale is repeated to 3 channels for an RGB autoencoder
(``to_autoencoder_input``), and the result is scaled to [−1, 1] as ``p·2/255 − 1``, as
``flowgen.data.pipeline.to_model_range`` does.
"""

from __future__ import annotations

import numpy as np

PROTOCOLS = {
    "adm": "ADM centre crop (guided-diffusion center_crop_arr): box-halve while the short side >= 2·resolution, "
           "bicubic resize of the short side to resolution, central square",
    "stored": "the image as stored (square, side = resolution)",
}


def adm_center_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, C) → (resolution, resolution, C) by ADM's centre-crop protocol (see the module docstring)."""
    import PIL.Image

    grey = image.ndim == 3 and image.shape[-1] == 1
    pil = PIL.Image.fromarray(image[..., 0] if grey else image)
    while min(pil.size) >= 2 * resolution:
        pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=PIL.Image.Resampling.BOX)
    scale = resolution / min(pil.size)
    pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)), resample=PIL.Image.Resampling.BICUBIC)
    out = np.asarray(pil)
    top, left = (out.shape[0] - resolution) // 2, (out.shape[1] - resolution) // 2
    out = out[top:top + resolution, left:left + resolution]
    return out[..., None] if grey else out


def check_protocol(protocol: str, resolution: int, downsampling: int) -> None:
    """ValueError naming the bad value and the valid ones, before anything is read or compiled."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1 \
            or resolution % downsampling:
        raise ValueError(f"resolution={resolution!r}: must be a positive multiple of the autoencoder's downsampling "
                         f"factor {downsampling}")


def prepare(image: np.ndarray, protocol: str, resolution: int) -> np.ndarray:
    """One uint8 image (H, W[, C]) → uint8 (resolution, resolution, C) by ``protocol``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"an image must be uint8 (H, W, 1 or 3); got {image.dtype} {image.shape}")
    if protocol == "adm":
        return adm_center_crop(image, resolution)
    if image.shape[:2] != (resolution, resolution):
        raise ValueError(f"protocol='stored' needs images of {resolution}x{resolution}; got {image.shape[:2]} "
                         "(use protocol='adm' to crop and resize)")
    return image


def to_autoencoder_input(images: np.ndarray, in_channels: int) -> np.ndarray:
    """uint8 (B, H, W, C) → float32 (B, H, W, in_channels) in [−1, 1]; greyscale repeated for RGB."""
    if images.shape[-1] == 1 and in_channels == 3:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[-1] != in_channels:
        raise ValueError(f"images have {images.shape[-1]} channels; the autoencoder takes {in_channels}")
    return images.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
