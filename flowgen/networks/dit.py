"""DiT: Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers").

Architecture (``D = hidden``, ``p = patch_size``, ``T = (H/p)·(W/p)`` tokens; x is (B, H, W, C), channels last)::

    tokens = Conv_{p×p, stride p}(x) + pos          (B, T, D)   patchify; pos = fixed 2-D sin-cos (MAE), no params
    c = TimestepEmbedder(t)                         (B, D)      features(t) (256 columns) → Dense(D) → SiLU → Dense(D)
      + LabelEmbedder(labels)                       (B, D)      conditional nets only; row num_classes is the null label
    depth × DiTBlock(tokens, c):
        shift₁, scale₁, gate₁, shift₂, scale₂, gate₂ = Dense(6D)(SiLU(c))          (zero-initialised)
        tokens += gate₁ · Attention(LN(tokens)·(1 + scale₁) + shift₁)             (multi-head, qkv with bias)
        tokens += gate₂ · MLP(LN(tokens)·(1 + scale₂) + shift₂)                   (D → 4D → GELU(tanh) → D)
    final layer: shift, scale = Dense(2D)(SiLU(c)) (zero-initialised)
                 Dense(p·p·C)(LN(tokens)·(1 + scale) + shift)     (B, T, p·p·C)   (zero-initialised)
    unpatchify                                      (B, H, W, C)   cast back to x's dtype

LN is LayerNorm without affine parameters (ε = 1e-6). With the gates and the final layer zero-initialised every block
is the identity and the output is exactly zero at initialisation (adaLN-Zero). Other initialisers as in DiT:
xavier-uniform Dense/patch kernels with zero biases, normal(0.02) for the timestep MLP and the label table.

Parameter count (class-conditional with C_cls classes, C input channels; biases everywhere)::

    P = (p²·C·D + D)                                  patch embedding
      + (256·D + D) + (D² + D)                        timestep embedder
      + (C_cls + 1)·D                                 label table (conditional nets only)
      + depth·(12·D² + 13·D  +  6·D² + 6·D)           attention + MLP, adaLN modulation
      + (2·D² + 2·D) + (D·p²·C + p²·C)                final layer

``dit_param_count`` evaluates it (the tests check it against ``jax.eval_shape`` of ``init``). Two differences from
the numbers printed by the DiT code (33.0 M, 130.5 M, 458.0 M, 675.0 M for S/2, B/2, L/2, XL/2 on 32×32×4 latents
with 1000 classes): (1) the paper's ``learn_sigma`` doubles the output channels, adding D·p²·C + p²·C parameters
(18,448 for XL/2, < 0.01 %); our networks predict one target, so the output has the input's shape; (2) the DiT code
stores the fixed positional embedding as a (frozen) parameter, T·D more (294,912 for XL/2, 98,304 for S/2); ours is
a constant. With both, ``dit_param_count(..., learn_sigma=True) + T·D`` reproduces the DiT code's count exactly
(675,129,632 for XL/2); without them we have 32,858,896 (S/2, −0.43 %), 130,303,504 (B/2, −0.15 %),
457,824,272 (L/2, −0.04 %) and 674,816,272 (XL/2, −0.03 %).

Errors in the configuration raise a ValueError when the module is built (num_heads must divide hidden, hidden must
be divisible by 4 for the 2-D sin-cos embedding), errors in the inputs when it is traced (H, W divisible by p; t of
shape (batch,); labels iff conditional), before XLA compiles anything.

Mixed precision: ``dtype`` is the compute dtype (bfloat16 for speed), ``param_dtype`` the storage dtype; time
features, LayerNorm statistics and the attention softmax are float32. ``remat=True`` wraps every DiTBlock in
``nn.remat`` (the parameter tree is unchanged). DiT has no dropout: ``train`` is accepted for a uniform interface
and ignored.
"""

from __future__ import annotations

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

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros
FREQ_DIM = 256   # DiT's frequency_embedding_size

_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
# DIT_PRESETS["XL/2"] == dict(hidden=1152, depth=28, num_heads=16, patch_size=2), and likewise S, B, L × p = 2, 4, 8.
DIT_PRESETS = {
    f"{size}/{p}": dict(hidden=d, depth=n, num_heads=h, patch_size=p)
    for size, (d, n, h) in _SIZES.items() for p in (2, 4, 8)
}
# Parameter counts printed by the DiT code (class-conditional, 1000 classes, learn_sigma, 32×32×4 latents), in M.
DIT_PAPER_PARAMS_M = {"S/2": 33.0, "B/2": 130.5, "L/2": 458.0, "XL/2": 675.0}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# Option checks shared by DiT and MMDiT; ``owner`` (the class name) prefixes each message. Three functions, not one,
# so that each class keeps the order in which it checks (the first invalid option is the one reported).
def check_sizes(owner: str, module, names=("hidden", "depth", "num_heads", "patch_size")) -> None:
    """Each of ``names`` an integer >= 1, num_heads dividing hidden (the message lists the valid num_heads), hidden
    divisible by 4 (the 2-D sin-cos positional embedding)."""
    for name in names:
        value = getattr(module, name)
        if not (_is_int(value) and value >= 1):
            raise ValueError(f"{owner}: {name} must be an integer >= 1; got {value!r}")
    if module.hidden % module.num_heads:
        divisors = [k for k in range(1, module.hidden + 1) if module.hidden % k == 0]
        raise ValueError(f"{owner}: num_heads={module.num_heads} must divide hidden={module.hidden}; valid num_heads: "
                         f"{divisors}")
    if module.hidden % 4:
        raise ValueError(f"{owner}: hidden={module.hidden} must be divisible by 4 (2-D sin-cos positional embedding)")


def check_mlp_ratio(owner: str, mlp_ratio) -> None:
    if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
        raise ValueError(f"{owner}: mlp_ratio must be a positive number; got {mlp_ratio!r}")


def check_time_embedding(owner: str, time_embedding) -> None:
    if time_embedding not in EMBEDDINGS:
        raise ValueError(f"{owner}: unknown time_embedding {time_embedding!r}; valid: {', '.join(EMBEDDINGS)}")


def dit_param_count(hidden: int, depth: int, patch_size: int, in_channels: int, num_classes: int | None = None,
                    mlp_ratio: float = 4.0, learn_sigma: bool = False) -> int:
    """Parameters of ``DiT(hidden, depth, ·, patch_size, num_classes)`` on inputs with ``in_channels`` channels.

    ``learn_sigma=True`` counts the paper's doubled output layer (our DiT never has it).
    """
    d, p2, c = hidden, patch_size**2, in_channels
    m = int(hidden * mlp_ratio)
    c_out = 2 * c if learn_sigma else c
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + (6 * d * d + 6 * d)
    count = (p2 * c * d + d) + (FREQ_DIM * d + d) + (d * d + d) + depth * block
    count += (2 * d * d + 2 * d) + (d * p2 * c_out + p2 * c_out)
    if num_classes is not None:
        count += (num_classes + 1) * d
    return count


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10_000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D sin-cos positional embedding of MAE/DiT: (grid_h·grid_w, dim) float32, row-major tokens.

    The first dim/2 columns encode the column index, the last dim/2 the row index (MAE's
    ``get_2d_sincos_pos_embed``, whose meshgrid puts the width coordinate first); each half is [sin, cos] of the
    position times frequencies 10000^(−k/(dim/4)). Needs dim divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positional embedding needs dim divisible by 4; got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(dtype):
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


class Attention(nn.Module):
    """Multi-head self-attention (timm's, as in DiT): (B, T, D) → (B, T, D); qkv Dense(3D) and proj Dense(D)."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=XAVIER, bias_init=ZEROS)
        qkv = nn.Dense(3 * d, name="qkv", **kw)(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])   # softmax in float32
        return nn.Dense(d, name="proj", **kw)(h.reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: tokens (B, T, D), conditioning c (B, D) → (B, T, D); identity at init."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mod = nn.Dense(6 * d, kernel_init=ZEROS, bias_init=ZEROS, name="adaLN_modulation", **kw)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = Attention(self.num_heads, name="attn", **kw)(_modulate(_layer_norm(self.dtype)(x), shift_msa, scale_msa))
        x = x + gate_msa[:, None] * h
        h = _modulate(_layer_norm(self.dtype)(x), shift_mlp, scale_mlp)
        h = nn.Dense(int(d * self.mlp_ratio), kernel_init=XAVIER, bias_init=ZEROS, name="mlp_fc1", **kw)(h)
        h = nn.Dense(d, kernel_init=XAVIER, bias_init=ZEROS, name="mlp_fc2", **kw)(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None] * h


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + Dense(p·p·C): (B, T, D), (B, D) → (B, T, p·p·C); zero at init."""

    out_features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=ZEROS, bias_init=ZEROS)
        shift, scale = jnp.split(nn.Dense(2 * x.shape[-1], name="adaLN_modulation", **kw)(nn.silu(c)), 2, axis=-1)
        return nn.Dense(self.out_features, name="linear", **kw)(_modulate(_layer_norm(self.dtype)(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: ``apply(variables, x, t[, labels]) -> array of x's shape and dtype``.

    Attributes:
      hidden: token width D (divisible by num_heads and by 4).
      depth: number of DiT blocks.
      num_heads: attention heads.
      patch_size: p; H and W must be divisible by it.
      mlp_ratio: MLP width / D.
      num_classes: None for an unconditional net; else C >= 1 classes plus the null label C (classifier-free
        guidance).
      time_embedding: "sinusoidal" (DiT's features of 1000·t, 256 columns) or "fourier".
      dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype (float32).
      remat: wrap every DiT block in ``nn.remat``.

    Presets: ``DiT(**DIT_PRESETS["XL/2"], num_classes=1000)``.

    Call:
      x: (B, H, W, C) floating point; t: (B,) times in [0, 1]; labels: (B,) integers in [0, num_classes],
      required iff num_classes is set; train: accepted and ignored (no dropout). Returns (B, H, W, C) in x's dtype.
    """

    hidden: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0   # sinusoidal features of time_scale·t (1 for EDM's c_noise = ¼·ln σ)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    extra_times: tuple[str, ...] = ()   # further time-like inputs (e.g. ("r",)), given as times={name: (batch,)}

    def __post_init__(self):
        check_sizes("DiT", self)
        check_mlp_ratio("DiT", self.mlp_ratio)
        if self.num_classes is not None and not (_is_int(self.num_classes) and self.num_classes >= 1):
            raise ValueError(f"DiT: num_classes must be None or an integer >= 1; got {self.num_classes!r}")
        check_time_embedding("DiT", self.time_embedding)
        super().__post_init__()

    @property
    def null_label(self) -> int:
        """The label meaning "no label" (classifier-free guidance): ``num_classes``."""
        if self.num_classes is None:
            raise ValueError("DiT: an unconditional net (num_classes=None) has no null label")
        return self.num_classes

    def _check_inputs(self, x, t, labels):
        if jnp.ndim(x) != 4:
            raise ValueError(f"DiT: x must have shape (batch, height, width, channels); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"DiT: x must be floating point; got dtype {jnp.result_type(x)}")
        b, h, w, _ = jnp.shape(x)
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"DiT: height and width must be divisible by patch_size={p}; got {h}x{w}")
        check_conditioning("DiT", b, t, labels, self.num_classes)

    @nn.compact
    def __call__(self, x, t, labels=None, *, train: bool = False, times=None):
        del train   # no dropout in DiT
        self._check_inputs(x, t, labels)
        b, h, w, ch = x.shape
        p, d = self.patch_size, self.hidden
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
        tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_init, bias_init=ZEROS,
                         name="x_embedder", **kw)(x.astype(self.dtype))
        tokens = tokens.reshape(b, (h // p) * (w // p), d)
        tokens = tokens + jnp.asarray(sincos_pos_embed_2d(d, h // p, w // p), self.dtype)[None]

        embedder = lambda name: TimestepEmbedder(d, kind=self.time_embedding, freq_dim=FREQ_DIM,  # noqa: E731
                                                 time_scale=self.time_scale,
                                                 kernel_init=nn.initializers.normal(0.02), name=name, **kw)
        c = embedder("t_embedder")(t)
        c = c + embed_extra_times("DiT", self.extra_times, times, b, lambda n: embedder(f"{n}_embedder"))
        if self.num_classes is not None:
            c = c + LabelEmbedder(self.num_classes, d, name="y_embedder", **kw)(labels)

        Block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = Block(self.num_heads, self.mlp_ratio, name=f"block_{i}", **kw)(tokens, c)

        out = FinalLayer(p * p * ch, name="final_layer", **kw)(tokens, c)            # (B, T, p·p·C)
        out = out.reshape(b, h // p, w // p, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ch)
        return out.astype(jnp.result_type(x))
