"""The KL autoencoder of latent diffusion in Flax Linen, channels last (Rombach et al. 2022; the 16-channel variant
without quant convs: Esser et al. 2024).

Architecture for ``block_out_channels = (C₀, …, C_{L−1})``, ``R = layers_per_block``, ``G = norm_num_groups``,
latent channels ``Z``; every GroupNorm has ε = 1e-6 (fixed in diffusers' code, not in the config)::

    encode: x (B, H, W, Cin) → Conv3×3(C₀)
            level i: R × ResBlock(Cᵢ); if i < L−1: Downsample             (B, H/2^i, W/2^i, Cᵢ)
            mid: ResBlock, Attention, ResBlock                              (B, H/f, W/f, C_{L−1}), f = 2^(L−1)
            GN, SiLU, Conv3×3(2Z) [→ quant_conv 1×1(2Z)]  → moments = [mean | logvar]  (B, H/f, W/f, 2Z)
            std = exp(½·clip(logvar, −30, 20))
    decode: z (B, H/f, W/f, Z) [→ post_quant_conv 1×1(Z)] → Conv3×3(C_{L−1}); mid as above
            level i = L−1 … 0: (R + 1) × ResBlock(Cᵢ); if i > 0: Upsample  → GN, SiLU, Conv3×3(Cout)

    ResBlock(x) = shortcut(x) + Conv3×3(SiLU(GN(Conv3×3(SiLU(GN(x))))));  shortcut: 1×1 conv when widths differ
    Attention(x) = x + Dense(softmax(q·kᵀ/√C)·v), q, k, v = Dense(GN(x)) over the h·w positions, one head
    Downsample: zero-pad one row/column at the bottom/right, Conv3×3 stride 2 (no other padding)
    Upsample: nearest-neighbour ×2, Conv3×3

Submodule names follow diffusers' state-dict keys with ``.<index>`` written ``_<index>`` (``down_blocks_0``,
``resnets_1``, ``to_out_0``), so :mod:`flowgen.autoencoders.convert` maps a key to a parameter path by that rule
alone. ``dtype`` is the compute dtype (float32 to match diffusers; bfloat16 for speed), ``param_dtype`` the storage
dtype; GroupNorm statistics and the softmax are computed in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowgen.autoencoders.config import AutoencoderConfig

GN_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)


def posterior(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(…, 2Z) moments → (mean, std), each (…, Z): the first Z channels are the mean, the rest log-variance,
    clipped to [−30, 20] before std = exp(½·logvar)."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.exp(0.5 * jnp.clip(logvar, *LOGVAR_RANGE))


class _Layers(nn.Module):
    """Shared fields and layer constructors."""

    groups: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(self, features, name, kernel=3, stride=1, padding=((1, 1), (1, 1))):
        return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding if kernel > 1 else "VALID",
                       dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def norm(self, name):
        # use_fast_variance=False: E[(x − μ)²], not E[x²] − μ², as torch computes it
        return nn.GroupNorm(self.groups, epsilon=GN_EPS, use_fast_variance=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=name)


class ResnetBlock(_Layers):
    """(B, H, W, Cin) → (B, H, W, out_channels)."""

    out_channels: int = 0

    @nn.compact
    def __call__(self, x):
        h = self.conv(self.out_channels, "conv1")(nn.silu(self.norm("norm1")(x)))
        h = self.conv(self.out_channels, "conv2")(nn.silu(self.norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = self.conv(self.out_channels, "conv_shortcut", kernel=1)(x)
        return x + h


class Attention(_Layers):
    """Single-head self-attention over the H·W positions with a residual: (B, H, W, C) → (B, H, W, C)."""

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.norm("group_norm")(x).reshape(b, h * w, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q, k, v = dense("to_q")(t), dense("to_k")(t), dense("to_v")(t)
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(c))
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, h, w, c)


class Downsample(_Layers):
    """(B, H, W, C) → (B, ⌊(H − 1)/2⌋ + 1, ⌊(W − 1)/2⌋ + 1, C)."""

    @nn.compact
    def __call__(self, x):
        return self.conv(x.shape[-1], "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(_Layers):
    """(B, H, W, C) → (B, 2H, 2W, C)."""

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return self.conv(c, "conv")(x)


class MidBlock(_Layers):
    """ResBlock, attention (if ``attention``), ResBlock at constant width: (B, h, w, C) → (B, h, w, C)."""

    attention: bool = True

    @nn.compact
    def __call__(self, x):
        kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResnetBlock(**kw, out_channels=c, name="resnets_0")(x)
        if self.attention:
            x = Attention(**kw, name="attentions_0")(x)
        return ResnetBlock(**kw, out_channels=c, name="resnets_1")(x)


class _Level(_Layers):
    """``layers`` ResBlocks to ``out_channels``, then a Downsample or Upsample (``resample``) if given."""

    out_channels: int = 0
    layers: int = 1
    resample: str | None = None

    @nn.compact
    def __call__(self, x):
        kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.layers):
            x = ResnetBlock(**kw, out_channels=self.out_channels, name=f"resnets_{j}")(x)
        if self.resample == "down":
            x = Downsample(**kw, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = Upsample(**kw, name="upsamplers_0")(x)
        return x


class Encoder(_Layers):
    """(B, H, W, in_channels) → (B, H/f, W/f, 2·latent_channels) moments (before quant_conv)."""

    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    mid_attention: bool = True

    @nn.compact
    def __call__(self, x):
        kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
        ch = self.block_out_channels
        x = self.conv(ch[0], "conv_in")(x.astype(self.dtype))
        for i, c in enumerate(ch):
            x = _Level(**kw, out_channels=c, layers=self.layers_per_block,
                       resample="down" if i < len(ch) - 1 else None, name=f"down_blocks_{i}")(x)
        x = MidBlock(**kw, attention=self.mid_attention, name="mid_block")(x)
        return self.conv(2 * self.latent_channels, "conv_out")(nn.silu(self.norm("conv_norm_out")(x)))


class Decoder(_Layers):
    """(B, h, w, latent_channels) → (B, h·f, w·f, out_channels)."""

    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    out_channels: int = 3
    mid_attention: bool = True

    @nn.compact
    def __call__(self, z):
        kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
        ch = tuple(reversed(self.block_out_channels))
        x = self.conv(ch[0], "conv_in")(z.astype(self.dtype))
        x = MidBlock(**kw, attention=self.mid_attention, name="mid_block")(x)
        for i, c in enumerate(ch):
            x = _Level(**kw, out_channels=c, layers=self.layers_per_block + 1,
                       resample="up" if i < len(ch) - 1 else None, name=f"up_blocks_{i}")(x)
        return self.conv(self.out_channels, "conv_out")(nn.silu(self.norm("conv_norm_out")(x)))


class KLAutoencoder(nn.Module):
    """Encoder, decoder and the optional 1×1 quant convs of a diffusers ``AutoencoderKL`` configuration.

    ``moments(x)``: (B, H, W, in) → (B, H/f, W/f, 2Z); ``encode(x)``: → (mean, std), each (B, H/f, W/f, Z);
    ``decode(z)``: (B, h, w, Z) → (B, h·f, w·f, out). ``__call__(x)`` decodes the mean (used by ``init``).
    Outputs are float32 whatever ``dtype``.
    """

    config: AutoencoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(groups=cfg.norm_num_groups, dtype=self.dtype, param_dtype=self.param_dtype,
                  block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                  mid_attention=cfg.mid_block_add_attention)
        self.encoder = Encoder(**kw, latent_channels=cfg.latent_channels)
        self.decoder = Decoder(**kw, out_channels=cfg.out_channels)
        one = lambda n: nn.Conv(n, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype)
        self.quant_conv = one(2 * cfg.latent_channels) if cfg.use_quant_conv else None
        self.post_quant_conv = one(cfg.latent_channels) if cfg.use_post_quant_conv else None

    def _check(self, x, channels, what):
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"{what} must be (B, H, W, {channels}) channels last; got shape {x.shape}")

    def moments(self, x):
        self._check(x, self.config.in_channels, "images")
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h.astype(jnp.float32)

    def encode(self, x):
        return posterior(self.moments(x))

    def decode(self, z):
        self._check(z, self.config.latent_channels, "latents")
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x)[0])
