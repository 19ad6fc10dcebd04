"""Write the autoencoder reference data: two small diffusers AutoencoderKL folders and diffusers' outputs on them.

Run with an interpreter that has torch and diffusers (never flowgen dependencies), e.g. from a separate virtual
environment (it does not import flowgen):

    python tests/data/make_autoencoder_reference.py

Writes, under tests/data/:
- ``autoencoder_sd_small/`` and ``autoencoder_sd3_small/``: ``config.json`` + ``diffusion_pytorch_model.safetensors``
  saved by diffusers' ``save_pretrained``, random weights (seeded). ``sd_small`` is SD-style (quant convs, 4 latent
  channels, scaling 0.18215, 3 levels, 1 ResNet block per level), ``sd3_small`` SD3-style (no quant convs, 16 latent
  channels, scaling 1.5305, shift 0.0609, 2 levels, 2 ResNet blocks per level). Every 1-D tensor (biases,
  GroupNorm scales and shifts) is redrawn at random so that no parameter keeps its trivial initial value.
- ``autoencoder_reference.npz``, channels last (NHWC), float32:
  ``<name>_images`` (2, 24, 16, 3) in [−1, 1]; ``<name>_mean`` / ``<name>_std``: ``encode(x).latent_dist.mean`` /
  ``.std``; ``<name>_latents`` (2, h, w, Z) standard normal; ``<name>_decoded``: ``decode(z).sample``;
  ``posterior_moments`` (2, 3, 2, 8) with log-variances in [−50, 50] and ``posterior_mean`` / ``posterior_std``
  from diffusers' ``DiagonalGaussianDistribution`` (its clamp to [−30, 20]); ``params_<name>``: diffusers'
  parameter counts of the two small models and of the full-size configs read from
  ``flowgen/autoencoders/configs/{sd_vae_ft_mse,sd3_vae}.json`` (instantiated with random weights, nothing
  downloaded); ``keys_<full-size name>``: its state dict's keys and shapes, ``"<key>:<d0>,<d1>,…"`` (PyTorch
  layout); ``versions``: torch and diffusers versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "flowgen" / "autoencoders" / "configs"
DOWN, UP = "DownEncoderBlock2D", "UpDecoderBlock2D"
SMALL = {
    "sd_small": dict(block_out_channels=[4, 8, 8], layers_per_block=1, norm_num_groups=2, latent_channels=4,
                     down_block_types=[DOWN] * 3, up_block_types=[UP] * 3, sample_size=24, scaling_factor=0.18215),
    "sd3_small": dict(block_out_channels=[4, 8], layers_per_block=2, norm_num_groups=2, latent_channels=16,
                      down_block_types=[DOWN] * 2, up_block_types=[UP] * 2, sample_size=24, scaling_factor=1.5305,
                      shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
}


def images(rng, n, h, w):
    """Smooth colour gradients and blobs plus noise, clipped to [−1, 1]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        chans = []
        for _ in range(3):
            a, b, c = rng.uniform(-3, 3, 3)
            cx, cy = rng.uniform(0, 1, 2)
            base = 0.5 * np.sin(a * 6 * x + b * 4 * y + c) + 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 20)
            chans.append(base + rng.normal(0, 0.1, (h, w)))
        out.append(np.stack(chans, -1))
    return np.clip(np.stack(out), -1, 1).astype(np.float32)


def import_diffusers():
    """diffusers, told that torchvision is absent when it cannot be imported (a torchvision wheel built for another
    torch fails at import; diffusers imports it only for models this script does not use)."""
    import diffusers
    import diffusers.utils.import_utils as import_utils

    try:
        import torchvision  # noqa: F401
    except Exception:
        import_utils._torchvision_available = False
    return diffusers


def main():
    import torch

    diffusers = import_diffusers()
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=str(HERE))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(20221220)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1).astype(np.float32)
    out = {"versions": np.array(f"torch {torch.__version__}, diffusers {diffusers.__version__}")}

    for seed, (name, cfg) in enumerate(SMALL.items()):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**cfg).eval()
        for pname, p in vae.named_parameters():
            if p.ndim == 1:
                is_scale = pname.endswith("weight")      # GroupNorm γ (convolution and linear weights are ≥ 2-D)
                p.copy_((1.0 if is_scale else 0.0) + 0.2 * torch.randn(p.shape))
        folder = out_dir / f"autoencoder_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        vae.save_pretrained(folder, safe_serialization=True)
        x = images(rng, 2, 24, 16)
        dist = vae.encode(nchw(x)).latent_dist
        f = 2 ** (len(cfg["block_out_channels"]) - 1)
        z = rng.standard_normal((2, 24 // f, 16 // f, cfg["latent_channels"])).astype(np.float32)
        out |= {f"{name}_images": x, f"{name}_mean": nhwc(dist.mean), f"{name}_std": nhwc(dist.std),
                f"{name}_latents": z, f"{name}_decoded": nhwc(vae.decode(nchw(z)).sample),
                f"params_{name}": np.int64(sum(p.numel() for p in vae.parameters()))}
        logvar = 2 * np.log(out[f"{name}_std"])
        print(f"{name}: {out[f'params_{name}']:,} parameters, "
              f"weights {(folder / 'diffusion_pytorch_model.safetensors').stat().st_size / 1e3:.0f} kB; "
              f"|mean| ≤ {np.abs(out[f'{name}_mean']).max():.3f}, logvar in [{logvar.min():.2f}, {logvar.max():.2f}],"
              f" |decoded| ≤ {np.abs(out[f'{name}_decoded']).max():.3f}")

    moments = rng.uniform(-50, 50, (2, 3, 2, 8)).astype(np.float32)
    dist = DiagonalGaussianDistribution(nchw(moments))
    out |= {"posterior_moments": moments, "posterior_mean": nhwc(dist.mean), "posterior_std": nhwc(dist.std)}

    for name in ("sd_vae_ft_mse", "sd3_vae"):
        cfg = {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}
        vae = AutoencoderKL(**cfg)
        out[f"params_{name}"] = np.int64(sum(p.numel() for p in vae.parameters()))
        out[f"keys_{name}"] = np.array([f"{k}:{','.join(map(str, t.shape))}" for k, t in vae.state_dict().items()])
        print(f"{name}: {out[f'params_{name}']:,} parameters (diffusers)")
    path = out_dir / "autoencoder_reference.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) with {out['versions']}")


if __name__ == "__main__":
    sys.exit(main())
