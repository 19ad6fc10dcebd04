"""Write tests/data/mmdit_reference.npz: diffusers' ``SD3Transformer2DModel`` counted and run, for
tests/test_networks_mmdit.py.

Run with an interpreter that has torch and diffusers (never flowgen dependencies), e.g. from a separate virtual
environment:

    python tests/data/make_mmdit_reference.py

Stored:
- ``count_<name>``: ``sum(p.numel() for p in model.parameters())`` for the released configurations in ``FULL``
  (built on the meta device: nothing is allocated), and ``config_<name>`` their configuration as JSON;
- for each tiny configuration in ``TINY`` (``<tiny>/...``): its configuration (JSON), every entry of the state dict
  (``<tiny>/w/<name>``) after filling the parameters with seeded random values (so that every path shows), and the
  inputs and outputs of one forward pass: ``x`` (B, H, W, C) — transposed to NCHW for diffusers —, ``t`` (B,) our
  time, passed to diffusers as ``timestep = 1000·t``, ``context`` (B, L, D_ctx), ``pooled`` (B, D_pool), ``out``
  (B, H, W, C), ``count``, and ``t_features`` (B, 256): diffusers' time features of ``1000·t`` (its
  ``get_timestep_embedding`` as SD3 calls it: cosine first, frequencies 10000^(−k/128)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FULL = {
    # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json
    "sd3-medium": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                       num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                       pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
    # stabilityai/stable-diffusion-3.5-large, transformer/config.json
    "sd3.5-large": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
}
# Small configurations of the same architecture: a non-square input smaller than the positional table (so the crop
# is off-centre in both directions), 3 blocks (the last one pre-only), with and without QK-norm.
TINY = {
    "tiny": dict(sample_size=8, patch_size=2, in_channels=3, num_layers=3, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10,
                 out_channels=3, pos_embed_max_size=7),
    "tiny_qk": dict(sample_size=8, patch_size=2, in_channels=3, num_layers=3, attention_head_dim=8,
                    num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                    pooled_projection_dim=10, out_channels=3, pos_embed_max_size=7, qk_norm="rms_norm"),
}
INPUT = dict(batch=3, height=8, width=12, tokens=5)


def _diffusers():
    # torchvision may be installed for another torch build (its C++ operators missing); SD3 does not need it.
    import diffusers.utils.import_utils as import_utils

    import_utils._torchvision_available = False
    from diffusers import SD3Transformer2DModel
    from diffusers.models.embeddings import get_timestep_embedding

    return SD3Transformer2DModel, get_timestep_embedding


def main():
    import torch

    model_cls, time_features = _diffusers()
    out = {}
    for name, config in FULL.items():
        with torch.device("meta"):
            model = model_cls(**config)
        out[f"count_{name}"] = np.int64(sum(p.numel() for p in model.parameters()))
        out[f"config_{name}"] = np.array(json.dumps(config))
        print(f"{name}: {int(out[f'count_{name}']):,} parameters")

    rng = np.random.default_rng(20240305)
    b, h, w, n = INPUT["batch"], INPUT["height"], INPUT["width"], INPUT["tokens"]
    for name, config in TINY.items():
        torch.manual_seed(0)
        model = model_cls(**config).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                z = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
                if pname.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                    p.copy_(1.0 + 0.2 * z)
                elif p.ndim == 1:
                    p.copy_(0.2 * z)
                else:
                    p.copy_(z / np.sqrt(np.prod(p.shape[1:])))
        x = rng.standard_normal((b, h, w, config["in_channels"])).astype(np.float32)
        t = np.array([0.03, 0.5, 0.91], np.float32)[:b]
        context = rng.standard_normal((b, n, config["joint_attention_dim"])).astype(np.float32)
        pooled = rng.standard_normal((b, config["pooled_projection_dim"])).astype(np.float32)
        with torch.no_grad():
            y = model(hidden_states=torch.from_numpy(x).permute(0, 3, 1, 2),
                      encoder_hidden_states=torch.from_numpy(context),
                      pooled_projections=torch.from_numpy(pooled),
                      timestep=torch.from_numpy(t) * 1000.0, return_dict=False)[0]
        out[f"{name}/config"] = np.array(json.dumps(config))
        out[f"{name}/count"] = np.int64(sum(p.numel() for p in model.parameters()))
        out.update({f"{name}/w/{k}": v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()})
        features = time_features(torch.from_numpy(t) * 1000.0, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        out.update({f"{name}/x": x, f"{name}/t": t, f"{name}/context": context, f"{name}/pooled": pooled,
                    f"{name}/out": y.permute(0, 2, 3, 1).numpy(), f"{name}/t_features": features.numpy()})
        print(f"{name}: {int(out[f'{name}/count']):,} parameters, |out| max {float(y.abs().max()):.3f}")
    path = Path(__file__).with_name("mmdit_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
