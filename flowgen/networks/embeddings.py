"""Time embeddings: t of shape (batch,) → features of shape (batch, dim).

Two standard fixed (parameter-free) feature maps, and a small MLP on top of either:

``sinusoidal_embedding`` (Vaswani et al. 2017, as used for diffusion time by Ho et al. 2020 and DiT). With
``half = dim // 2`` and ``i = 0 … half − 1``:

    ω_i = max_period^(−i / n),   n = half (DiT, the default) or half − 1 (``endpoint=True``)
    emb(t) = [cos(s·t·ω_0), …, cos(s·t·ω_{half−1}),  sin(s·t·ω_0), …, sin(s·t·ω_{half−1})]
    (one more zero column if dim is odd)

where ``s = time_scale``. The angular frequencies run from ``s`` down to ``s / max_period^(1 − 1/half)``, or
exactly down to ``s / max_period`` with ``endpoint=True``: the frequencies of DDPM's, score_sde's and EDM's
U-Nets (their ``get_timestep_embedding`` divides by half − 1; EDM's ``PositionalEmbedding(endpoint=True)``).
Those list sin before cos; the order is a fixed permutation of the columns, which the Dense layer that follows
absorbs exactly.
Our time lives in [0, 1] (t = 0 noise, t = 1 data), so the default ``time_scale = 1000`` maps it onto DDPM's
1000 integer steps, the range the default ``max_period = 10_000`` was designed for: the fastest feature
resolves Δt ≈ 1e-3 and the slowest is almost constant over [0, 1].

``fourier_embedding``: Gaussian random Fourier features (Tancik et al. 2020; used for the noise level by
Song et al. 2021, score_sde's ``GaussianFourierProjection``). With ``half = dim // 2`` fixed frequencies
``w_i ~ N(0, scale²)``:

    emb(t) = [sin(2π·t·w_0), …, sin(2π·t·w_{half−1}),  cos(2π·t·w_0), …, cos(2π·t·w_{half−1})]
    (one more zero column if dim is odd)

The frequencies are *not* parameters: they are drawn on the host from ``numpy.random.default_rng(seed)``
and baked into the program as a constant, so they are never trained, never weight-decayed, and need no
checkpoint entry: (dim, scale, seed) determine them. (score_sde stores them as a ``params`` leaf behind
``stop_gradient``; a decoupled weight decay would still shrink that leaf.) ``scale = 16`` is score_sde's
``fourier_scale``.

Both maps are computed in float32 whatever the network's compute dtype: in bfloat16, t·1000 would be
rounded to a multiple of 4 near t = 1 and the high-frequency features would be noise.

``TimestepEmbedder`` (as in DiT): feature map → Dense(dim) → SiLU → Dense(dim).

Further time-like inputs (MeanFlow's r, a shortcut model's step size d; declared by the training method) enter
through ``embed_extra_times``: each gets a ``TimestepEmbedder`` of its own, of the same kind as t's, and is added to
t's embedding. A network without them (the default) has exactly the parameters and the call ``apply(x, t)`` it
always had.

``LabelEmbedder``: a table of ``num_classes + 1`` rows; row ``num_classes`` is the null label of classifier-free
guidance (DiT's ``LabelEmbedder`` with its CFG row). ``check_conditioning`` validates t and labels for the image
networks (U-Net, DiT) with the same messages as the MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

EMBEDDINGS = ("sinusoidal", "fourier")


def _check_t(t) -> jnp.ndarray:
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"t must have shape (batch,); got shape {t.shape}")
    return t.astype(jnp.float32)


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"embedding dim must be an integer >= 2; got {dim!r}")
    return int(dim)


def _pad_odd(emb: jnp.ndarray, dim: int) -> jnp.ndarray:
    return jnp.pad(emb, ((0, 0), (0, dim - emb.shape[-1]))) if emb.shape[-1] != dim else emb


def sinusoidal_embedding(t, dim: int, max_period: float = 10_000.0,
                         time_scale: float = 1000.0, endpoint: bool = False) -> jnp.ndarray:
    """Transformer/DDPM sinusoidal features of ``time_scale·t`` (formula in the module docstring).

    Args:
      t: times, shape (batch,).
      dim: number of features (an odd dim gets one zero column).
      max_period: ratio between the fastest and (about) the slowest frequency.
      time_scale: t is multiplied by it first (1000: t ∈ [0, 1] read as DDPM's integer steps).
      endpoint: exponents i/(half − 1) instead of i/half, so the slowest frequency is exactly
        time_scale/max_period (DDPM's U-Net; needs dim >= 4).

    Returns:
      float32 array of shape (batch, dim).
    """
    t = _check_t(t)
    dim = _check_dim(dim)
    if not max_period > 1:
        raise ValueError(f"max_period must be > 1; got {max_period!r}")
    half = dim // 2
    if endpoint and half < 2:
        raise ValueError(f"endpoint=True needs dim >= 4 (two frequencies); got dim={dim}")
    n = half - 1 if endpoint else half
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / n) * time_scale
    args = t[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
    return _pad_odd(jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1), dim)


def fourier_frequencies(dim: int, scale: float = 16.0, seed: int = 0) -> np.ndarray:
    """The ``dim // 2`` fixed frequencies w_i ~ N(0, scale²) of ``fourier_embedding`` (float32, on host)."""
    dim = _check_dim(dim)
    if not scale > 0:
        raise ValueError(f"scale must be positive; got {scale!r}")
    return (np.random.default_rng(seed).standard_normal(dim // 2) * scale).astype(np.float32)


def fourier_embedding(t, dim: int, scale: float = 16.0, seed: int = 0) -> jnp.ndarray:
    """Gaussian random Fourier features [sin(2π·t·w), cos(2π·t·w)] with fixed w ~ N(0, scale²).

    Args:
      t: times, shape (batch,).
      dim: number of features (an odd dim gets one zero column).
      scale: standard deviation of the frequencies.
      seed: seed of the host generator that draws them (see ``fourier_frequencies``).

    Returns:
      float32 array of shape (batch, dim).
    """
    t = _check_t(t)
    w = fourier_frequencies(dim, scale, seed)
    args = (2.0 * np.pi) * t[:, None] * jnp.asarray(w)[None, :]
    return _pad_odd(jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1), dim)


class SinusoidalEmbedding(nn.Module):
    """Module form of ``sinusoidal_embedding``: (batch,) → (batch, dim) float32; no parameters."""

    dim: int
    max_period: float = 10_000.0
    time_scale: float = 1000.0
    endpoint: bool = False

    @nn.compact
    def __call__(self, t):
        return sinusoidal_embedding(t, self.dim, self.max_period, self.time_scale, self.endpoint)


class GaussianFourierEmbedding(nn.Module):
    """Module form of ``fourier_embedding``: (batch,) → (batch, dim) float32; no parameters."""

    dim: int
    scale: float = 16.0
    seed: int = 0

    @nn.compact
    def __call__(self, t):
        return fourier_embedding(t, self.dim, self.scale, self.seed)


class TimestepEmbedder(nn.Module):
    """Feature map of t followed by Dense(dim) → SiLU → Dense(dim) (DiT's TimestepEmbedder).

    Input t: (batch,); output (batch, dim) in ``dtype``. Parameters: 2·(dim² + dim) (the features have ``dim``
    columns too).

    With ``freq_dim`` set, the feature map has ``freq_dim`` columns instead and the parameters are
    ``freq_dim·dim + dim + dim² + dim``: DiT uses freq_dim = 256 with dim = hidden; DDPM's U-Net uses
    freq_dim = ch with dim = 4·ch.

    Attributes:
      dim: width of the features and of both Dense layers.
      kind: "sinusoidal" or "fourier".
      max_period, time_scale, endpoint: for "sinusoidal"; fourier_scale, fourier_seed: for "fourier".
      dtype: compute dtype of the Dense layers (the features themselves are float32).
      param_dtype: dtype of the Dense parameters.
      freq_dim: number of feature columns (None: ``dim``).
      kernel_init: initialiser of both Dense kernels (Flax's default lecun_normal; DiT uses normal(0.02)).
    """

    dim: int
    kind: str = "sinusoidal"
    max_period: float = 10_000.0
    time_scale: float = 1000.0
    endpoint: bool = False
    fourier_scale: float = 16.0
    fourier_seed: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    freq_dim: int | None = None
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, t):
        freq_dim = self.dim if self.freq_dim is None else self.freq_dim
        if self.kind == "sinusoidal":
            emb = sinusoidal_embedding(t, freq_dim, self.max_period, self.time_scale, self.endpoint)
        elif self.kind == "fourier":
            emb = fourier_embedding(t, freq_dim, self.fourier_scale, self.fourier_seed)
        else:
            raise ValueError(f"unknown time embedding {self.kind!r}; valid: {', '.join(EMBEDDINGS)}")
        dense = lambda name: nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype,
                                      kernel_init=self.kernel_init, name=name)
        return dense("dense_1")(nn.silu(dense("dense_0")(emb)))


class LabelEmbedder(nn.Module):
    """Class-label table with a null class for classifier-free guidance: (batch,) ints → (batch, dim).

    The table has ``num_classes + 1`` rows; labels are integers in [0, num_classes] and ``num_classes``
    (``null_label``) means "no label". Training drops labels by replacing them with the null label (done by the
    loss, not here); guided sampling evaluates the net at the label and at the null label. An out-of-range label
    gathers NaNs (``jnp.take``'s fill mode), so it cannot go unnoticed. Parameters: (num_classes + 1)·dim.

    Attributes:
      num_classes: number of real classes C (>= 1).
      dim: embedding width.
      embedding_init: initialiser of the table (DiT: normal(0.02)).
      dtype, param_dtype: compute and storage dtypes.
    """

    num_classes: int
    dim: int
    embedding_init: Callable = nn.initializers.normal(0.02)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @property
    def null_label(self) -> int:
        return self.num_classes

    @nn.compact
    def __call__(self, labels):
        # jnp.take wraps negative indices (−1 would silently become the null label): send them out of range.
        labels = jnp.where(labels < 0, self.num_classes + 1, labels)
        return nn.Embed(self.num_classes + 1, self.dim, embedding_init=self.embedding_init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="table")(labels)


def check_conditioning(owner: str, batch: int, t, labels, num_classes: int | None) -> None:
    """Trace-time checks of the conditioning inputs of an image network (shapes and dtypes only).

    Raises ValueError naming ``owner`` and the bad value when t is not of shape (batch,), labels are given to an
    unconditional net (num_classes None) or missing from a conditional one, or labels are not (batch,) integers.
    """
    if jnp.shape(t) != (batch,):
        raise ValueError(f"{owner}: t must have shape (batch,) = ({batch},); got shape {jnp.shape(t)}")
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"{owner}: labels given to an unconditional net (num_classes=None); "
                             f"build it with num_classes=C to condition on labels")
        return
    if labels is None:
        raise ValueError(
            f"{owner}: a conditional net (num_classes={num_classes}) needs labels of shape (batch,); "
            f"pass the null label {num_classes} for unconditional predictions"
        )
    if jnp.shape(labels) != (batch,):
        raise ValueError(f"{owner}: labels must have shape (batch,) = ({batch},); got shape {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"{owner}: labels must be integers in [0, {num_classes}]; got dtype "
                         f"{jnp.result_type(labels)}")


def check_extra_times(owner: str, names: tuple[str, ...], times, batch: int) -> None:
    """Raise ValueError naming ``owner`` if the time-like inputs ``times`` (name → (batch,) array) differ from those
    declared (``names``) or have the wrong shape."""
    given = tuple(sorted(times or {}))
    if given != tuple(sorted(names)):
        raise ValueError(f"{owner}: this network takes the time inputs {tuple(names) or 'none'} besides t "
                         f"(extra_times); got {given or 'none'}")
    for name in names:
        if jnp.shape(times[name]) != (batch,):
            raise ValueError(f"{owner}: time input {name!r} must have shape (batch,) = ({batch},); got "
                             f"{jnp.shape(times[name])}")


def embed_extra_times(owner: str, names: tuple[str, ...], times, batch: int, embedder: Callable):
    """Σ over ``names`` of ``embedder(name)(times[name])``: the embedding of a network's further time-like inputs,
    to be added to t's. ``times`` maps each name to a (batch,) array; ``embedder(name)`` builds a TimestepEmbedder
    named after the input (called inside the network's compact ``__call__``). Returns 0.0 when ``names`` is empty.
    Checked first by :func:`check_extra_times`."""
    check_extra_times(owner, names, times, batch)
    total = 0.0
    for name in names:
        total = total + embedder(name)(times[name])
    return total
