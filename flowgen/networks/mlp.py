"""MLP velocity/score network for low-dimensional data (2-D toy sets, small vectors).

Architecture (``H = hidden``, ``d`` = data dimension, ``C = num_classes``; an x of shape (batch, ...) is
flattened to (batch, d) first and the output reshaped back)::

    c = TimestepEmbedder(t)              (batch, H)   features(t) → Dense(H) → SiLU → Dense(H)
      + Embed(C + 1, H)(labels)          (batch, H)   only if num_classes is set; row C is the null label
    h = Dense(H)(x) + c                  (batch, H)   input projection plus the conditioning
    repeat depth − 1 times:  h = Dense(H)(SiLU(h))
    out = Dense(d)(SiLU(h))              (batch, d)   reshaped to x's shape, cast to x's dtype

The conditioning is *added* to the first hidden layer, which is the same function class as concatenating
``[x, c]`` at the input (a Dense of a concatenation is a sum of Dense layers), as torchcfm's and Meta
flow_matching's toy MLPs do; the time features go through DiT's two-layer TimestepEmbedder first. ``depth`` is
the number of hidden layers (SiLU activations), so the trunk has ``depth + 1`` Dense layers.

``time_embedding="concat"`` feeds t itself as one more input (``h = Dense(H)([x, t])``, no embedder; extra times
likewise) and ``activation="selu"`` swaps every SiLU: with ``hidden=64, depth=3`` this is exactly torchcfm's 2-D
network (Tong et al. 2023's ``VelocityNet`` / ``torchcfm.models.MLP``, 3×64 SELU, 8,706 parameters in 2-D).

Parameter count (every Dense has a bias; the time features themselves have no parameters)::

    P = (d·H + H)              input projection
      + 2·(H² + H)             time embedder  (with "concat": none, and the input projection has (d + 1)·H + H)
      + (depth − 1)·(H² + H)   hidden layers
      + (H·d + d)              output layer
      + (C + 1)·H              label table (conditional nets only)

``param_count`` evaluates it; the tests check it against ``jax.eval_shape`` of ``init``.

Classifier-free guidance: labels are integers in [0, C]; ``C`` (``MLP.null_label``) is the unconditional
("dropped") label. Training replaces a fraction of labels by ``null_label``; sampling passes
``cond=labels, null_cond=null_label``. A label outside [0, C] (negative ones included) gives a NaN output
(``jnp.take``'s fill mode), so it cannot go unnoticed.

Mixed precision: ``dtype`` is the compute dtype of every Dense/Embed, ``param_dtype`` the storage dtype of the
parameters (float32 by default, also with bfloat16 compute). Time features are computed in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flowgen.networks.embeddings import (
    EMBEDDINGS,
    LabelEmbedder,
    TimestepEmbedder,
    check_conditioning,
    check_extra_times,
    embed_extra_times,
)

#: How t enters the MLP: embedded features (``flowgen.networks.embeddings``) or concatenated to x.
TIME_INPUTS = (*EMBEDDINGS, "concat")
ACTIVATIONS = {"silu": nn.silu, "selu": nn.selu}


def param_count(data_dim: int, hidden: int = 256, depth: int = 3, num_classes: int | None = None,
                time_embedding: str = "sinusoidal") -> int:
    """Number of parameters of ``MLP(hidden, depth, num_classes, time_embedding)`` on data of dimension
    ``data_dim`` (without extra times)."""
    d, h = data_dim, hidden
    if time_embedding == "concat":
        count = ((d + 1) * h + h) + (depth - 1) * (h * h + h) + (h * d + d)
    else:
        count = (d * h + h) + 2 * (h * h + h) + (depth - 1) * (h * h + h) + (h * d + d)
    if num_classes is not None:
        count += (num_classes + 1) * h
    return count


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class _HiddenLayer(nn.Module):
    """Activation (SiLU) → Dense: one hidden layer (the unit ``remat`` wraps)."""

    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    activation: str = "silu"

    @nn.compact
    def __call__(self, h):
        act = ACTIVATIONS[self.activation]
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(act(h))


class MLP(nn.Module):
    """Time- (and optionally label-) conditioned MLP: ``apply(variables, x, t[, labels]) -> (batch, d)``.

    Attributes:
      hidden: width H of every hidden layer and of the conditioning embedding.
      depth: number of hidden layers (>= 1).
      num_classes: None for an unconditional net; else C >= 1 classes plus the null label C.
      time_embedding: "sinusoidal" (Transformer/DDPM features of 1000·t) or "fourier" (Gaussian random
        Fourier features, scale 16); see ``flowgen.networks.embeddings``; or "concat" (t as one more input).
      activation: "silu" (default) or "selu", between every two Dense layers.
      dtype: compute dtype (e.g. jnp.bfloat16); the output is cast back to x's dtype.
      param_dtype: parameter dtype (float32 by default).
      remat: recompute each hidden layer's activations in the backward pass (``nn.remat``) to save memory.

    Call:
      x: (batch, d) floating point (or (batch, ...): trailing axes are flattened to d and restored); t: (batch,)
      times in [0, 1]; labels: (batch,) integers in [0, C], required iff num_classes is set. Returns an array
      of x's shape and dtype. Shapes are checked at trace time and a ValueError names the offending argument.
    """

    hidden: int = 256
    depth: int = 3
    num_classes: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float = 1000.0   # sinusoidal features of time_scale·t (1 for EDM's c_noise = ¼·ln σ)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    extra_times: tuple[str, ...] = ()   # further time-like inputs (e.g. ("r",)), given as times={name: (batch,)}
    activation: str = "silu"

    def __post_init__(self):
        if not (_is_int(self.hidden) and self.hidden >= 2):
            raise ValueError(f"MLP: hidden must be an integer >= 2; got {self.hidden!r}")
        if not (_is_int(self.depth) and self.depth >= 1):
            raise ValueError(f"MLP: depth must be an integer >= 1; got {self.depth!r}")
        if self.num_classes is not None and not (_is_int(self.num_classes) and self.num_classes >= 1):
            raise ValueError(f"MLP: num_classes must be None or an integer >= 1; got {self.num_classes!r}")
        if self.time_embedding not in TIME_INPUTS:
            raise ValueError(
                f"MLP: unknown time_embedding {self.time_embedding!r}; valid: {', '.join(TIME_INPUTS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        super().__post_init__()

    @property
    def null_label(self) -> int:
        """The label meaning "no label" (classifier-free guidance): ``num_classes``."""
        if self.num_classes is None:
            raise ValueError("MLP: an unconditional net (num_classes=None) has no null label")
        return self.num_classes

    def _check_inputs(self, x, t, labels):
        if jnp.ndim(x) < 2:
            raise ValueError(f"MLP: x must have shape (batch, d) or (batch, ...); got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"MLP: x must be floating point; got dtype {jnp.result_type(x)}")
        check_conditioning("MLP", jnp.shape(x)[0], t, labels, self.num_classes)

    @nn.compact
    def __call__(self, x, t, labels=None, *, train: bool = False, times=None):
        del train  # no dropout: the same function in training and sampling (kept for one interface with UNet, DiT)
        self._check_inputs(x, t, labels)
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = lambda features, name: nn.Dense(features, name=name, **dtypes)
        embedder = lambda name: TimestepEmbedder(self.hidden, kind=self.time_embedding,  # noqa: E731
                                                 time_scale=self.time_scale, name=name, **dtypes)
        flat = jnp.reshape(x, (x.shape[0], -1))
        inputs, c = flat, 0.0
        if self.time_embedding == "concat":
            check_extra_times("MLP", self.extra_times, times, x.shape[0])
            columns = [jnp.reshape(v, (-1, 1)).astype(flat.dtype) for v in (t, *(times[n] for n in self.extra_times))]
            inputs = jnp.concatenate([flat, *columns], axis=-1)
        else:
            c = embedder("time_embed")(t)
            c = c + embed_extra_times("MLP", self.extra_times, times, x.shape[0], lambda n: embedder(f"{n}_embed"))
        if self.num_classes is not None:
            c = c + LabelEmbedder(self.num_classes, self.hidden, name="label_embed", **dtypes)(labels)
        h = dense(self.hidden, "in_proj")(inputs) + c
        layer = nn.remat(_HiddenLayer) if self.remat else _HiddenLayer
        for i in range(self.depth - 1):
            h = layer(self.hidden, name=f"hidden_{i}", activation=self.activation, **dtypes)(h)
        out = dense(flat.shape[-1], "out_proj")(ACTIVATIONS[self.activation](h))
        return jnp.reshape(out, x.shape).astype(x.dtype)
