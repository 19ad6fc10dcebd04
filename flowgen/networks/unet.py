"""U-Net of DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"), with the DDPM++ options of
Song et al. 2021 ("Score-Based Generative Modeling through Stochastic Differential Equations").

Architecture (``C = ch``, ``L = len(ch_mult)``, ``R = num_res_blocks``, ``E = 4·C`` the embedding width; x is
(B, H, W, C_in), channels last)::

    emb = TimestepEmbedder(t)                (B, E)   features(t) (C columns) → Dense(E) → SiLU → Dense(E)
        + LabelEmbedder(labels)              (B, E)   conditional nets only; row num_classes is the null label
    h = Conv3x3(C)(x)                        (B, H, W, C)                       hs = [h]
    for level i = 0 … L−1                    resolution H/2^i, width C·ch_mult[i]
        R × { h = ResBlock(h, emb); h = Attn(h) if the resolution is in attn_resolutions; hs.append(h) }
        if i < L−1: h = Down(h); hs.append(h)                    (B, H/2^(i+1), W/2^(i+1), ·)
    h = ResBlock(Attn(ResBlock(h, emb)), emb)                    middle, at resolution H/2^(L−1)
    for level i = L−1 … 0
        (R + 1) × { h = ResBlock(concat[h, hs.pop()], emb); h = Attn(h) if in attn_resolutions }   "per_block"
        (or, up_attention="per_level": R + 1 ResBlocks, then one Attn if in attn_resolutions)
        if i > 0: h = Up(h)
    out = Conv3x3(C_in)(SiLU(GroupNorm(h)))  (B, H, W, C_in)  cast back to x's dtype

    ResBlock(x, emb):  h = Conv3x3(SiLU(GN(x))) + Dense(SiLU(emb))[:, None, None]
                       h = Conv3x3(Dropout(SiLU(GN(h))));  out = shortcut(x) + h
                       shortcut = 1×1 conv ("NIN") when the width changes, else identity
    Attn(x):           single-head self-attention over the H·W positions: GN, 1×1 q, k, v,
                       softmax(q·kᵀ/√C)·v, 1×1 projection, + x
    Down:              Conv3x3 with stride 2 (padding 0 before / 1 after, TensorFlow's "SAME")
    Up:                nearest-neighbour ×2, then Conv3x3

Time features: sinusoidal features of ``time_scale·t`` with DDPM's frequencies ``max_period^(−i/(C/2 − 1))``
(``endpoint=True`` in ``flowgen.networks.embeddings``), or Gaussian Fourier features.

DDPM++ options (Song et al. 2021; all four on in score_sde's ``configs/vp/cifar10_ddpmpp_continuous`` and in
EDM's DDPM++, ``SongUNet``): ``resblock_updown=True`` replaces Down/Up by BigGAN-style ResBlocks that resample
both branches after the first GN+SiLU (2×2 average pooling / nearest ×2, i.e. score_sde's ``fir=False`` and
EDM's ``resample_filter=[1, 1]``) and always use a 1×1 shortcut; ``skip_rescale=True`` divides every residual
sum (ResBlocks and attention) by √2; ``up_attention="per_level"`` puts one attention block at the end of each
decoder level instead of one after every decoder ResBlock (score_sde's ncsnpp.py; EDM: attention only in the last
block of a level); ``attn_init_scale=0.1`` initialises q, k, v with variance scale 0.1, i.e. variance 0.1/C
(score_sde's ``NIN`` default; EDM's fused qkv, Xavier-uniform over fans C and 3·C with gain √0.2, has the same).
NCSN++'s progressive in/out paths and FIR resampling are not implemented (DDPM++ uses neither).

Initialisation as in DDPM: every conv/dense is variance_scaling(1, fan_avg, uniform) (q, k, v: attn_init_scale);
the last conv of each ResBlock, the attention projection and the output conv use scale 1e-10 (DDPM's
``init_scale=0``; EDM's gain 1e-5), so every block starts close to the identity and the output close to zero.

Parameter counts on 32×32×3 inputs (``UNET_PRESETS``), equal to the reference implementations':
  ``ddpm_cifar10`` (Ho et al.: ch=128, ch_mult=(1, 2, 2, 2), R=2, attention at 16×16): 35,746,307, the count of
    the official checkpoint (diffusion_tf ``run_cifar.py``, converted as diffusers' google/ddpm-cifar10-32);
    the paper states 35.7 M. (score_sde's own DDPM re-implementation has per-level decoder attention: 35,218,947.)
  ``ddpmpp_cifar10`` (score_sde ``configs/vp/cifar10_ddpmpp_continuous`` → ``models/ncsnpp.py``; the same
    network is RectifiedFlow's ``configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py``): 61,804,419.
  ``edm_ddpmpp_cifar10`` (NVlabs/edm ``training/networks.py`` SongUNet with ``train.py --arch=ddpmpp``:
    model_channels=128, channel_mult=[2, 2, 2], 4 blocks, attention at 16): 55,732,739. EDM's trained network
    has 55,733,891: 1,152 more for ``map_augment``, the 9 → 128 linear layer of its augmentation labels
    (``augment_dim=9`` whenever ``--augment`` > 0), which flowgen has no use for (no augmentation pipeline).

Resolutions: a resolution is a feature-map height (DDPM's ``h.shape[1] in attn_resolutions``); the levels have
heights H, H/2, …, H/2^(L−1), and H and W must be divisible by 2^(L−1). Errors in the configuration raise a
ValueError when the module is built, errors in the inputs when it is traced (``init``/``apply``/``jit``/
``eval_shape``), before XLA compiles anything.

Mixed precision: ``dtype`` is the compute dtype of every layer (bfloat16 for speed), ``param_dtype`` the storage
dtype (float32); time features and the softmax are computed in float32; the output has x's dtype.
``remat=True`` wraps every ResBlock and attention block in ``nn.remat`` (activations recomputed in the
backward pass; the parameter tree is unchanged).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgen.networks.embeddings import (
    EMBEDDINGS,
    LabelEmbedder,
    TimestepEmbedder,
    check_conditioning,
    embed_extra_times,
)

DEFAULT_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
ZERO_INIT = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")   # DDPM's init_scale=0

# Presets (keyword arguments of UNet), chosen by name; parameter counts and sources in the module docstring.
_DDPMPP = dict(ch=128, num_res_blocks=4, attn_resolutions=(16,), resblock_updown=True, skip_rescale=True,
               up_attention="per_level", attn_init_scale=0.1)
UNET_PRESETS = {
    # Ho et al. 2020, CIFAR-10 (32×32×3): 35,746,307 parameters.
    "ddpm_cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # DDPM++ cont. (Song et al. 2021): 61,804,419. score_sde and RectifiedFlow feed the net 999·t.
    "ddpmpp_cifar10": dict(_DDPMPP, ch_mult=(1, 2, 2, 2), dropout=0.1, time_scale=999.0),
    # EDM's DDPM++ (Karras et al. 2022, config F): 55,732,739 (+1,152 augmentation-label weights in EDM).
    # The time input is EDM's c_noise = ¼·ln σ, embedded unscaled (time_scale=1, set with EDM preconditioning).
    "edm_ddpmpp_cifar10": dict(_DDPMPP, ch_mult=(2, 2, 2), dropout=0.13),
}
UP_ATTENTION = ("per_block", "per_level")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _upsample_nearest(x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class ResBlock(nn.Module):
    """DDPM residual block (BigGAN-style resampling when ``up``/``down``): (B, H, W, Cin), (B, E) → (B, H', W', out_ch).

    H' = 2H with ``up``, H/2 with ``down``, else H. ``deterministic=False`` enables dropout ("dropout" rng).
    """

    out_ch: int
    num_groups: int = 32
    dropout: float = 0.0
    deterministic: bool = True
    up: bool = False
    down: bool = False
    skip_rescale: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = lambda name, k=3, init=DEFAULT_INIT: nn.Conv(self.out_ch, (k, k), padding="SAME", kernel_init=init,
                                                           name=name, **kw)
        h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=1e-6, name="norm_0", **kw)(x))
        if self.up:
            h, x = _upsample_nearest(h), _upsample_nearest(x)
        elif self.down:
            h, x = nn.avg_pool(h, (2, 2), (2, 2)), nn.avg_pool(x, (2, 2), (2, 2))
        h = conv("conv_0")(h)
        h = h + nn.Dense(self.out_ch, kernel_init=DEFAULT_INIT, name="emb_proj", **kw)(nn.silu(emb))[:, None, None]
        h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=1e-6, name="norm_1", **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        h = conv("conv_1", init=ZERO_INIT)(h)
        if x.shape[-1] != self.out_ch or self.up or self.down:
            x = conv("shortcut", k=1)(x)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class AttnBlock(nn.Module):
    """DDPM self-attention block (one head over the H·W positions, residual): (B, H, W, C) → (B, H, W, C)."""

    num_groups: int = 32
    skip_rescale: bool = False
    init_scale: float = 1.0   # of q, k, v (DDPM 1, DDPM++ 0.1)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.GroupNorm(self.num_groups, epsilon=1e-6, name="norm", **kw)(x)
        init = nn.initializers.variance_scaling(self.init_scale, "fan_avg", "uniform")
        q, k, v = (nn.Dense(c, kernel_init=init, name=n, **kw)(h).reshape(b, hh * ww, 1, c)
                   for n in ("q", "k", "v"))
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, hh, ww, c)   # scale 1/√C, softmax in float32
        out = x + nn.Dense(c, kernel_init=ZERO_INIT, name="proj_out", **kw)(h)
        return out / math.sqrt(2.0) if self.skip_rescale else out


class Downsample(nn.Module):
    """Conv3x3 with stride 2 (DDPM, ``resamp_with_conv``): (B, H, W, C) → (B, H/2, W/2, C)."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), kernel_init=DEFAULT_INIT,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then Conv3x3 (DDPM): (B, H, W, C) → (B, 2H, 2W, C)."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=DEFAULT_INIT, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(_upsample_nearest(x))


class UNet(nn.Module):
    """DDPM / DDPM++ U-Net: ``apply(variables, x, t[, labels], train=False) -> array of x's shape and dtype``.

    Attributes:
      ch: base width C (the first conv's output channels; the time embedding has 4·C).
      ch_mult: width multipliers per resolution level; there are len(ch_mult) levels and len(ch_mult) − 1
        down/up-samplings.
      num_res_blocks: ResBlocks per level on the way down (one more per level on the way up).
      attn_resolutions: feature-map heights at which a self-attention block follows each ResBlock (the middle
        always has one).
      dropout: dropout rate inside every ResBlock (active only with ``train=True``).
      num_classes: None for an unconditional net; else C >= 1 classes plus the null label C (classifier-free
        guidance), whose embedding is added to the time embedding.
      time_embedding: "sinusoidal" (DDPM's features of 1000·t) or "fourier" (Gaussian random Fourier features).
      resblock_updown: DDPM++'s BigGAN-style resampling ResBlocks instead of Down/Up.
      skip_rescale: divide residual sums by √2 (DDPM++).
      up_attention: "per_block" (DDPM: attention after every decoder ResBlock at an attention resolution) or
        "per_level" (DDPM++: one attention block after the last ResBlock of such a decoder level).
      attn_init_scale: variance scale of the q, k, v initialisers (DDPM 1, DDPM++ 0.1).
      num_groups: GroupNorm groups; must divide C·m for every m in ch_mult.
      dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype (float32).
      remat: wrap every ResBlock/attention block in ``nn.remat``.

    Call:
      x: (B, H, W, C_in) floating point, H and W divisible by 2^(len(ch_mult) − 1); t: (B,) times in [0, 1];
      labels: (B,) integers in [0, num_classes], required iff num_classes is set; train: enables dropout and then
      needs ``rngs={"dropout": key}``. Returns (B, H, W, C_in) in x's dtype.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_classes: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0   # sinusoidal features of time_scale·t (1 for EDM's c_noise = ¼·ln σ)
    resblock_updown: bool = False
    num_groups: int = 32
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    extra_times: tuple[str, ...] = ()   # further time-like inputs (e.g. ("r",)), given as times={name: (batch,)}
    skip_rescale: bool = False
    up_attention: str = "per_block"
    attn_init_scale: float = 1.0

    def __post_init__(self):
        if not (_is_int(self.ch) and self.ch >= 4):
            raise ValueError(f"UNet: ch must be an integer >= 4 (it is also the number of time features); "
                             f"got {self.ch!r}")
        mult = tuple(self.ch_mult) if isinstance(self.ch_mult, (tuple, list)) else None
        if not mult or not all(_is_int(m) and m >= 1 for m in mult):
            raise ValueError(f"UNet: ch_mult must be a non-empty sequence of integers >= 1; got {self.ch_mult!r}")
        if not (_is_int(self.num_res_blocks) and self.num_res_blocks >= 1):
            raise ValueError(f"UNet: num_res_blocks must be an integer >= 1; got {self.num_res_blocks!r}")
        res = self.attn_resolutions
        if not (isinstance(res, (tuple, list)) and all(_is_int(r) and r >= 1 for r in res)):
            raise ValueError(f"UNet: attn_resolutions must be a sequence of integers >= 1; got {res!r}")
        # Lists (from configs or the command line) become tuples: the module must stay hashable.
        object.__setattr__(self, "ch_mult", mult)
        object.__setattr__(self, "attn_resolutions", tuple(res))
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"UNet: dropout must be a rate in [0, 1); got {self.dropout!r}")
        if self.num_classes is not None and not (_is_int(self.num_classes) and self.num_classes >= 1):
            raise ValueError(f"UNet: num_classes must be None or an integer >= 1; got {self.num_classes!r}")
        if self.time_embedding not in EMBEDDINGS:
            raise ValueError(
                f"UNet: unknown time_embedding {self.time_embedding!r}; valid: {', '.join(EMBEDDINGS)}")
        if self.up_attention not in UP_ATTENTION:
            raise ValueError(f"UNet: unknown up_attention {self.up_attention!r}; valid: {', '.join(UP_ATTENTION)}")
        if not (isinstance(self.attn_init_scale, (int, float)) and self.attn_init_scale > 0):
            raise ValueError(f"UNet: attn_init_scale must be a positive number; got {self.attn_init_scale!r}")
        if not (_is_int(self.num_groups) and self.num_groups >= 1):
            raise ValueError(f"UNet: num_groups must be an integer >= 1; got {self.num_groups!r}")
        widths = sorted({self.ch * m for m in mult})
        bad = [w for w in widths if w % self.num_groups]
        if bad:
            raise ValueError(
                f"UNet: GroupNorm needs every channel count to be divisible by num_groups={self.num_groups}; "
                f"widths ch·ch_mult = {widths} include {bad} (choose ch, ch_mult and num_groups accordingly)")
        super().__post_init__()

    @property
    def null_label(self) -> int:
        """The label meaning "no label" (classifier-free guidance): ``num_classes``."""
        if self.num_classes is None:
            raise ValueError("UNet: an unconditional net (num_classes=None) has no null label")
        return self.num_classes

    def _check_inputs(self, x, t, labels, train):
        if jnp.ndim(x) != 4:
            raise ValueError(f"UNet: x must have shape (batch, height, width, channels); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"UNet: x must be floating point; got dtype {jnp.result_type(x)}")
        b, h, w, _ = jnp.shape(x)
        levels = len(self.ch_mult)
        factor = 2 ** (levels - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"UNet: height and width must be divisible by 2^(len(ch_mult) - 1) = {factor} "
                f"(ch_mult={tuple(self.ch_mult)}); got {h}x{w}")
        heights = [h // 2**i for i in range(levels)]
        never = [r for r in self.attn_resolutions if r not in heights]
        if never:
            raise ValueError(
                f"UNet: attn_resolutions {tuple(never)} never occur for {h}x{w} inputs with "
                f"ch_mult={tuple(self.ch_mult)}; the feature-map resolutions are {heights}")
        check_conditioning("UNet", b, t, labels, self.num_classes)
        if train and self.dropout > 0 and not self.has_rng("dropout"):
            raise ValueError(f"UNet: train=True with dropout={self.dropout} needs rngs={{'dropout': key}}")

    @nn.compact
    def __call__(self, x, t, labels=None, *, train: bool = False, times=None):
        self._check_inputs(x, t, labels, train)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        Res = nn.remat(ResBlock) if self.remat else ResBlock
        Attn = nn.remat(AttnBlock) if self.remat else AttnBlock
        res = lambda out_ch, name, **k: Res(out_ch, self.num_groups, self.dropout, not train,
                                             skip_rescale=self.skip_rescale, name=name, **k, **kw)
        attn = lambda name: Attn(self.num_groups, self.skip_rescale, self.attn_init_scale, name=name, **kw)
        ch, levels, attn_res = self.ch, len(self.ch_mult), tuple(self.attn_resolutions)

        embedder = lambda name: TimestepEmbedder(4 * ch, kind=self.time_embedding, freq_dim=ch,  # noqa: E731
                                                 kernel_init=DEFAULT_INIT, time_scale=self.time_scale, endpoint=True,
                                                 name=name, **kw)
        emb = embedder("time_embed")(t)
        emb = emb + embed_extra_times("UNet", self.extra_times, times, x.shape[0], lambda n: embedder(f"{n}_embed"))
        if self.num_classes is not None:
            emb = emb + LabelEmbedder(self.num_classes, 4 * ch, name="label_embed", **kw)(labels)

        hs = [nn.Conv(ch, (3, 3), padding="SAME", kernel_init=DEFAULT_INIT, name="conv_in", **kw)(
            x.astype(self.dtype))]
        for i, m in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = res(ch * m, f"down_{i}_block_{j}")(hs[-1], emb)
                if h.shape[1] in attn_res:
                    h = attn(f"down_{i}_attn_{j}")(h)
                hs.append(h)
            if i != levels - 1:
                if self.resblock_updown:
                    hs.append(res(ch * m, f"down_{i}_sample", down=True)(hs[-1], emb))
                else:
                    hs.append(Downsample(name=f"down_{i}_sample", **kw)(hs[-1]))

        h = res(hs[-1].shape[-1], "mid_block_0")(hs[-1], emb)
        h = attn("mid_attn")(h)
        h = res(h.shape[-1], "mid_block_1")(h, emb)

        for i in reversed(range(levels)):
            for j in range(self.num_res_blocks + 1):
                h = res(ch * self.ch_mult[i], f"up_{i}_block_{j}")(jnp.concatenate([h, hs.pop()], axis=-1), emb)
                if h.shape[1] in attn_res and (self.up_attention == "per_block" or j == self.num_res_blocks):
                    h = attn(f"up_{i}_attn_{j}")(h)
            if i != 0:
                if self.resblock_updown:
                    h = res(h.shape[-1], f"up_{i}_sample", up=True)(h, emb)
                else:
                    h = Upsample(name=f"up_{i}_sample", **kw)(h)
        assert not hs

        h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=1e-6, name="norm_out", **kw)(h))
        out = nn.Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=ZERO_INIT, name="conv_out", **kw)(h)
        return out.astype(jnp.result_type(x))


def unet_cifar10_ddpm(**overrides) -> UNet:
    """The CIFAR-10 U-Net of Ho et al. 2020 (35.7 M parameters on 32×32×3); keyword arguments override it."""
    return UNet(**{**UNET_PRESETS["ddpm_cifar10"], **overrides})
