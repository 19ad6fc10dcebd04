"""MM-DiT: the multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis"), text-conditioned, with adaLN-Zero blocks.

Two token streams with separate weights, image tokens X (from the latent) and text tokens C (from a text encoder's
sequence output), see each other in one joint attention per block. A pooled text vector and the time form the
modulation vector y. Channels last; ``D = hidden``, ``p = patch_size``, ``T = (H/p)·(W/p)``, ``L`` text tokens::

    X = Conv_{p×p, stride p}(x) + pos                 (B, T, D)   pos: fixed 2-D sin-cos, cropped (below)
    C = Dense(D)(context)                             (B, L, D)   context: (B, L, D_ctx), e.g. CLIP ‖ T5 (4096)
    y = TimestepEmbedder(t)                           (B, D)      features(1000·t) (256 columns) → D → SiLU → D
      + Dense(D)(SiLU(Dense(D)(pooled)))              (B, D)      pooled: (B, D_pool), e.g. CLIP-L ‖ CLIP-G (2048)
    depth × JointBlock(X, C, y), per stream S ∈ {X, C} with its own weights:
        shift₁, scale₁, gate₁, shift₂, scale₂, gate₂ = Dense(6D)(SiLU(y))           (zero-initialised)
        q_S, k_S, v_S = Dense(3D)(LN(S)·(1 + scale₁) + shift₁)                     (heads of D/num_heads)
        [q_S, k_S ← RMSNorm per head (learned scale, ε = 1e-6) if qk_norm = "rms_norm"]
        [o_X, o_C] = softmax([q_X; q_C]·[k_X; k_C]ᵀ/√d_head)·[v_X; v_C]           joint attention, T + L tokens
        S += gate₁ · Dense(D)(o_S)
        S += gate₂ · MLP(LN(S)·(1 + scale₂) + shift₂)                              (D → 4D → GELU(tanh) → D)
    the last block's text stream only feeds keys and values (diffusers' ``context_pre_only``): its modulation is
        shift, scale = Dense(2D)(SiLU(y)), it has no output projection, no MLP, and C is not returned
    final layer: shift, scale = Dense(2D)(SiLU(y)); Dense(p·p·C_in)(LN(X)·(1 + scale) + shift)   (zero-initialised)
    unpatchify                                        (B, H, W, C_in)   cast back to x's dtype

LN is LayerNorm without affine parameters (ε = 1e-6). With the gates and the final layer zero-initialised the image
stream passes through every block unchanged and the output is exactly zero at initialisation (adaLN-Zero); the text
stream's own updates are gated the same way.

Positions (SD3's cropped sin-cos table, as diffusers' ``PatchEmbed`` with ``pos_embed_max_size``): with
``M = pos_embed_max_size`` and ``G = sample_size // p``, the table covers an M × M grid of token positions scaled
by G/M; a T_h × T_w input takes its centre crop, rows ``(⌊(M − T_h)/2⌋ + i)·G/M`` and columns likewise. Each half
of the D columns is the 1-D sin-cos embedding (MAE's) of the column, then of the row coordinate. The table is a
constant (computed in float64, only the crop), not a parameter: diffusers keeps it as a buffer, outside
``parameters()``.

Conditioning is one pytree ``cond = {"context": (B, L, D_ctx), "pooled": (B, D_pool)}``, always required; the
widths D_ctx, D_pool are taken from it at ``init``. The null caption of classifier-free guidance is all zeros
(``null_cond``). Time: the features are of ``time_scale·t`` with our t (0 noise, 1 data); diffusers' SD3 pipeline
feeds ``1000·σ = 1000·(1 − t)`` instead, so published SD3 weights would be called with 1 − t.

Parameter count (D_ctx, D_pool text widths, C input channels, m = ⌊mlp_ratio·D⌋, d_h = D/num_heads; biases
everywhere)::

    P = (p²·C·D + D) + (256·D + D + D² + D) + (D_pool·D + D + D² + D) + (D_ctx·D + D)     embedders
      + (depth − 1)·2·S + (S + 5·D² + 5·D)                                                 blocks
      + 4·d_h·depth  (qk_norm only)
      + (2·D² + 2·D) + (D·p²·C + p²·C)                                                     final layer
    with S = 10·D² + 10·D + 2·D·m + m + D  (one stream: modulation, qkv, output, MLP)

``mmdit_param_count`` evaluates it. For SD3-medium (``MMDIT_PRESETS["sd3-medium"]``, 128×128×16 latents,
D_ctx = 4096, D_pool = 2048) it is 2,028,328,000, exactly ``sum(p.numel() for p in
SD3Transformer2DModel(...).parameters())`` in diffusers with that configuration (tests/data/mmdit_reference.npz).

Errors in the configuration raise a ValueError when the module is built; errors in the inputs (shapes, dtypes,
missing or extra conditioning, an input larger than the positional table) when it is traced, before XLA compiles.
``dtype`` is the compute dtype, ``param_dtype`` the storage dtype; time features, LayerNorm/RMSNorm statistics and
the attention softmax are float32. ``remat=True`` wraps every block in ``nn.remat``. No dropout: ``train`` is
accepted and ignored.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowgen.networks.dit import (
    FREQ_DIM,
    XAVIER,
    ZEROS,
    FinalLayer,
    _layer_norm,
    _modulate,
    _sincos_1d,
    check_mlp_ratio,
    check_sizes,
    check_time_embedding,
)
from flowgen.networks.embeddings import TimestepEmbedder, embed_extra_times

QK_NORMS = (None, "rms_norm")
COND_KEYS = ("context", "pooled")

# The released SD3 transformers (diffusers' transformer/config.json of each): hidden = 64·depth, num_heads = depth.
MMDIT_PRESETS = {
    "sd3-medium": dict(hidden=1536, depth=24, num_heads=24, patch_size=2, sample_size=128, pos_embed_max_size=192),
    "sd3.5-large": dict(hidden=2432, depth=38, num_heads=38, patch_size=2, sample_size=128, pos_embed_max_size=192,
                        qk_norm="rms_norm"),
}


def mmdit_param_count(hidden: int, depth: int, patch_size: int, in_channels: int, context_dim: int,
                      pooled_dim: int, num_heads: int = 1, mlp_ratio: float = 4.0, qk_norm: str | None = None) -> int:
    """Parameters of ``MMDiT(hidden, depth, num_heads, patch_size, ...)`` on inputs with ``in_channels`` channels
    and text conditioning of widths ``context_dim`` (sequence) and ``pooled_dim`` (pooled vector)."""
    d, p2, c = hidden, patch_size**2, in_channels
    m = int(hidden * mlp_ratio)
    stream = (6 * d * d + 6 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    pre_only = (2 * d * d + 2 * d) + (3 * d * d + 3 * d)          # last text stream: modulation and qkv only
    count = (p2 * c * d + d) + (FREQ_DIM * d + d + d * d + d) + (pooled_dim * d + d + d * d + d) + (context_dim * d + d)
    count += (depth - 1) * 2 * stream + stream + pre_only
    if qk_norm == "rms_norm":
        count += 4 * (hidden // num_heads) * depth
    return count + (2 * d * d + 2 * d) + (d * p2 * c + p2 * c)


def cropped_pos_embed(dim: int, grid_h: int, grid_w: int, max_size: int, base_size: int) -> np.ndarray:
    """SD3's positional table for a grid_h × grid_w token grid: the centre crop of the max_size × max_size sin-cos
    table whose positions are scaled by base_size/max_size. (grid_h·grid_w, dim) float32, row-major tokens; the
    first dim/2 columns encode the column coordinate, the last dim/2 the row coordinate."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positional embedding needs dim divisible by 4; got {dim}")
    if grid_h > max_size or grid_w > max_size:
        raise ValueError(f"a {grid_h}x{grid_w} token grid exceeds pos_embed_max_size={max_size}")
    scale = base_size / max_size
    rows = ((max_size - grid_h) // 2 + np.arange(grid_h, dtype=np.float64)) * scale
    cols = ((max_size - grid_w) // 2 + np.arange(grid_w, dtype=np.float64)) * scale
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.concatenate([_sincos_1d(dim // 2, cc), _sincos_1d(dim // 2, rr)], axis=1).astype(np.float32)


def _dense(features, name, kw, zero=False):
    init = ZEROS if zero else XAVIER
    return nn.Dense(features, kernel_init=init, bias_init=ZEROS, name=name, **kw)


class JointBlock(nn.Module):
    """One MM-DiT block: image tokens (B, T, D), text tokens (B, L, D), modulation y (B, D) → (image, text).

    ``context_pre_only``: the text stream only supplies keys and values (the last block); its output is None."""

    num_heads: int
    mlp_ratio: float = 4.0
    qk_norm: str | None = None
    context_pre_only: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _qkv(self, s, name):
        b, n, d = s.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = _dense(3 * d, f"{name}_qkv", kw)(s).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.qk_norm == "rms_norm":
            norm = lambda which: nn.RMSNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                            name=f"{name}_norm_{which}")
            q, k = norm("q")(q), norm("k")(k)
        return q, k, v

    def _mlp(self, s, name):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _dense(int(s.shape[-1] * self.mlp_ratio), f"{name}_mlp_fc1", kw)(s)
        return _dense(s.shape[-1], f"{name}_mlp_fc2", kw)(nn.gelu(h, approximate=True))

    @nn.compact
    def __call__(self, x, ctx, y):
        d, t = x.shape[-1], x.shape[1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.silu(y)
        sx1, cx1, gx1, sx2, cx2, gx2 = jnp.split(_dense(6 * d, "x_adaLN_modulation", kw, zero=True)(y), 6, -1)
        if self.context_pre_only:
            sc1, cc1 = jnp.split(_dense(2 * d, "c_adaLN_modulation", kw, zero=True)(y), 2, -1)
        else:
            sc1, cc1, gc1, sc2, cc2, gc2 = jnp.split(_dense(6 * d, "c_adaLN_modulation", kw, zero=True)(y), 6, -1)
        ln = _layer_norm(self.dtype)
        qx, kx, vx = self._qkv(_modulate(ln(x), sx1, cx1), "x")
        qc, kc, vc = self._qkv(_modulate(ln(ctx), sc1, cc1), "c")
        cat = lambda a, b: jnp.concatenate([a, b], axis=1)  # noqa: E731  (image tokens first, as diffusers)
        o = jax.nn.dot_product_attention(cat(qx, qc), cat(kx, kc), cat(vx, vc))     # (B, T + L, heads, d_head)
        o = o.reshape(o.shape[0], o.shape[1], d)
        x = x + gx1[:, None] * _dense(d, "x_attn_out", kw)(o[:, :t])
        x = x + gx2[:, None] * self._mlp(_modulate(ln(x), sx2, cx2), "x")
        if self.context_pre_only:
            return x, None
        ctx = ctx + gc1[:, None] * _dense(d, "c_attn_out", kw)(o[:, t:])
        ctx = ctx + gc2[:, None] * self._mlp(_modulate(ln(ctx), sc2, cc2), "c")
        return x, ctx


class MMDiT(nn.Module):
    """Text-conditioned MM-DiT: ``apply(variables, x, t, cond) -> array of x's shape and dtype``.

    Attributes:
      hidden: token width D (divisible by num_heads and by 4).
      depth: number of joint blocks (the last one's text stream is pre-only).
      num_heads: attention heads.
      patch_size: p; H and W must be divisible by it.
      mlp_ratio: MLP width / D.
      qk_norm: None or "rms_norm" (RMSNorm of queries and keys per head, as SD3.5; SD3-medium has none).
      sample_size: latent side the positional grid is scaled to (diffusers' ``sample_size``): G = sample_size // p.
      pos_embed_max_size: side M of the positional table in tokens; inputs up to M·p × M·p.
      num_classes: must be None (the conditioning is text, not labels; kept for the networks' common interface).
      time_embedding, time_scale: features of time_scale·t ("sinusoidal", DiT's and SD3's 256 columns, or "fourier").
      dtype: compute dtype; param_dtype: parameter dtype. remat: wrap every block in ``nn.remat``.
      extra_times: further time-like inputs (e.g. ("r",)), given as times={name: (batch,)}.

    Presets: ``MMDiT(**MMDIT_PRESETS["sd3-medium"])``.

    Call:
      x: (B, H, W, C) floating point; t: (B,) times in [0, 1]; cond: {"context": (B, L, D_ctx), "pooled":
      (B, D_pool)} floating point (the null caption: zeros); train: accepted and ignored. Returns (B, H, W, C).
    """

    text_conditioned: ClassVar[bool] = True   # cond is a caption's embeddings, not labels (flowgen.data.text)

    hidden: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qk_norm: str | None = None
    sample_size: int = 32
    pos_embed_max_size: int = 16
    num_classes: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    extra_times: tuple[str, ...] = ()

    def __post_init__(self):
        check_sizes("MMDiT", self, ("hidden", "depth", "num_heads", "patch_size", "sample_size", "pos_embed_max_size"))
        if self.sample_size < self.patch_size:
            raise ValueError(f"MMDiT: sample_size={self.sample_size} must be >= patch_size={self.patch_size}")
        check_mlp_ratio("MMDiT", self.mlp_ratio)
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"MMDiT: unknown qk_norm {self.qk_norm!r}; valid: {', '.join(map(repr, QK_NORMS))}")
        if self.num_classes is not None:
            raise ValueError(f"MMDiT: num_classes={self.num_classes!r}: MM-DiT is conditioned on text embeddings "
                             "(cond={'context', 'pooled'}), not on labels; use num_classes=None (model.num_classes=0)")
        check_time_embedding("MMDiT", self.time_embedding)
        super().__post_init__()

    @staticmethod
    def null_cond(cond):
        """The null caption for ``cond``'s shapes: zeros (what dropped captions are trained with)."""
        return jax.tree.map(jnp.zeros_like, cond)

    def _check_inputs(self, x, t, cond):
        if jnp.ndim(x) != 4:
            raise ValueError(f"MMDiT: x must have shape (batch, height, width, channels); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"MMDiT: x must be floating point; got dtype {jnp.result_type(x)}")
        b, h, w, _ = jnp.shape(x)
        p, m = self.patch_size, self.pos_embed_max_size
        if h % p or w % p:
            raise ValueError(f"MMDiT: height and width must be divisible by patch_size={p}; got {h}x{w}")
        if h // p > m or w // p > m:
            raise ValueError(f"MMDiT: a {h}x{w} input is {h // p}x{w // p} tokens, more than pos_embed_max_size={m} "
                             f"per side; the largest input is {m * p}x{m * p}")
        if jnp.shape(t) != (b,):
            raise ValueError(f"MMDiT: t must have shape (batch,) = ({b},); got shape {jnp.shape(t)}")
        if not isinstance(cond, dict) or set(cond) != set(COND_KEYS):
            got = sorted(cond) if isinstance(cond, dict) else type(cond).__name__
            raise ValueError(f"MMDiT: cond must be a dict with keys {list(COND_KEYS)} (text embeddings: a sequence "
                             f"and a pooled vector; the null caption is zeros); got {got}")
        ctx, pooled = cond["context"], cond["pooled"]
        if jnp.ndim(ctx) != 3 or jnp.shape(ctx)[0] != b or jnp.shape(ctx)[1] < 1:
            raise ValueError(f"MMDiT: cond['context'] must have shape (batch, tokens, width) with batch {b} and "
                             f"tokens >= 1; got shape {jnp.shape(ctx)}")
        if jnp.ndim(pooled) != 2 or jnp.shape(pooled)[0] != b:
            raise ValueError(f"MMDiT: cond['pooled'] must have shape (batch, width) with batch {b}; got shape "
                             f"{jnp.shape(pooled)}")
        for key in COND_KEYS:
            if not jnp.issubdtype(jnp.result_type(cond[key]), jnp.floating):
                raise ValueError(f"MMDiT: cond[{key!r}] must be floating point; got dtype "
                                 f"{jnp.result_type(cond[key])}")

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False, times=None):
        del train   # no dropout in MM-DiT
        self._check_inputs(x, t, cond)
        b, h, w, ch = x.shape
        p, d = self.patch_size, self.hidden
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
        tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_init, bias_init=ZEROS,
                         name="x_embedder", **kw)(x.astype(self.dtype))
        tokens = tokens.reshape(b, (h // p) * (w // p), d)
        pos = cropped_pos_embed(d, h // p, w // p, self.pos_embed_max_size, self.sample_size // p)
        tokens = tokens + jnp.asarray(pos, self.dtype)[None]

        ctx = _dense(d, "context_embedder", kw)(cond["context"].astype(self.dtype))
        embedder = lambda name: TimestepEmbedder(d, kind=self.time_embedding, freq_dim=FREQ_DIM,  # noqa: E731
                                                 time_scale=self.time_scale,
                                                 kernel_init=nn.initializers.normal(0.02), name=name, **kw)
        y = embedder("t_embedder")(t)
        y = y + embed_extra_times("MMDiT", self.extra_times, times, b, lambda n: embedder(f"{n}_embedder"))
        pooled = _dense(d, "pooled_embedder_0", kw)(cond["pooled"].astype(self.dtype))
        y = y + _dense(d, "pooled_embedder_1", kw)(nn.silu(pooled))

        Block = nn.remat(JointBlock) if self.remat else JointBlock
        for i in range(self.depth):
            tokens, ctx = Block(self.num_heads, self.mlp_ratio, self.qk_norm, context_pre_only=i == self.depth - 1,
                                name=f"block_{i}", **kw)(tokens, ctx, y)

        out = FinalLayer(p * p * ch, name="final_layer", **kw)(tokens, y)            # (B, T, p·p·C)
        out = out.reshape(b, h // p, w // p, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ch)
        return out.astype(jnp.result_type(x))


def params_from_diffusers(state: dict, depth: int, qk_norm: str | None = None) -> dict:
    """Flax ``params`` of an ``MMDiT`` from the state dict of diffusers' ``SD3Transformer2DModel`` (names → numpy
    arrays, e.g. read from ``diffusion_pytorch_model.safetensors``) of the same configuration, converted exactly:
    Linear (out, in) → Dense (in, out); Conv (D, C, p, p) → (p, p, C, D); separate q/k/v → one qkv; the (scale,
    shift) order of diffusers' ``AdaLayerNormContinuous`` → our (shift, scale). The stored ``pos_embed.pos_embed``
    buffer is not a parameter here (the table is recomputed; see the module docstring) and is ignored. Raises
    ValueError naming the keys that are missing or left over."""
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    used = {"pos_embed.pos_embed"}

    def take(key):
        if key not in state:
            raise ValueError(f"params_from_diffusers: the state dict has no {key!r} (depth={depth}, qk_norm="
                             f"{qk_norm!r}); is it an SD3Transformer2DModel of this configuration?")
        used.add(key)
        return state[key]

    def dense(prefix):
        return {"kernel": take(f"{prefix}.weight").T, "bias": take(f"{prefix}.bias")}

    def fused(prefixes):
        return {"kernel": np.concatenate([take(f"{q}.weight").T for q in prefixes], axis=1),
                "bias": np.concatenate([take(f"{q}.bias") for q in prefixes])}

    def scale_shift(prefix):   # (scale, shift) halves → (shift, scale)
        w, b = take(f"{prefix}.weight"), take(f"{prefix}.bias")
        half = w.shape[0] // 2
        return {"kernel": np.concatenate([w[half:], w[:half]]).T, "bias": np.concatenate([b[half:], b[:half]])}

    params = {
        "x_embedder": {"kernel": take("pos_embed.proj.weight").transpose(2, 3, 1, 0),
                       "bias": take("pos_embed.proj.bias")},
        "context_embedder": dense("context_embedder"),
        "t_embedder": {"dense_0": dense("time_text_embed.timestep_embedder.linear_1"),
                       "dense_1": dense("time_text_embed.timestep_embedder.linear_2")},
        "pooled_embedder_0": dense("time_text_embed.text_embedder.linear_1"),
        "pooled_embedder_1": dense("time_text_embed.text_embedder.linear_2"),
        "final_layer": {"adaLN_modulation": scale_shift("norm_out.linear"), "linear": dense("proj_out")},
    }
    for i in range(depth):
        pre, last = f"transformer_blocks.{i}", i == depth - 1
        attn = f"{pre}.attn"
        block = {
            "x_adaLN_modulation": dense(f"{pre}.norm1.linear"),
            "c_adaLN_modulation": scale_shift(f"{pre}.norm1_context.linear") if last
            else dense(f"{pre}.norm1_context.linear"),
            "x_qkv": fused([f"{attn}.to_q", f"{attn}.to_k", f"{attn}.to_v"]),
            "c_qkv": fused([f"{attn}.add_q_proj", f"{attn}.add_k_proj", f"{attn}.add_v_proj"]),
            "x_attn_out": dense(f"{attn}.to_out.0"),
            "x_mlp_fc1": dense(f"{pre}.ff.net.0.proj"),
            "x_mlp_fc2": dense(f"{pre}.ff.net.2"),
        }
        if not last:
            block.update(c_attn_out=dense(f"{attn}.to_add_out"), c_mlp_fc1=dense(f"{pre}.ff_context.net.0.proj"),
                         c_mlp_fc2=dense(f"{pre}.ff_context.net.2"))
        if qk_norm == "rms_norm":
            for ours, theirs in (("x_norm_q", "norm_q"), ("x_norm_k", "norm_k"), ("c_norm_q", "norm_added_q"),
                                 ("c_norm_k", "norm_added_k")):
                block[ours] = {"scale": take(f"{attn}.{theirs}.weight")}
        params[f"block_{i}"] = block
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"params_from_diffusers: {len(extra)} entries of the state dict were not converted (depth="
                         f"{depth}, qk_norm={qk_norm!r}): {extra[:5]}")
    return jax.tree.map(jnp.asarray, params)
