"""flowgen.networks.dit: the paper's sizes, adaLN-Zero at init, patchify/unpatchify, positions, bad input.

The shared contract (shapes, labels, bfloat16, remat, conditioning errors) is in test_networks_common.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_networks_common import FAST_COMPILE, KEY, compiled, inputs

from flowgen.networks import DIT_PRESETS, DiT, dit_param_count
from flowgen.networks.dit import DIT_PAPER_PARAMS_M, DiTBlock, sincos_pos_embed_2d

LATENT = (32, 32, 4)   # ImageNet 256×256 through the SD VAE


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _abstract_params(net, shape, batch=1):
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.float32)
    args = (x, t) if net.num_classes is None else (x, t, jax.ShapeDtypeStruct((batch,), jnp.int32))
    return jax.eval_shape(net.init, KEY, *args)   # abstract: nothing is allocated


@pytest.mark.parametrize("name", ["S/2", "B/2", "L/2", "XL/2"])
def test_preset_parameter_counts_match_paper(name):
    preset = DIT_PRESETS[name]
    n = _count(_abstract_params(DiT(**preset, num_classes=1000), LATENT))
    paper = DIT_PAPER_PARAMS_M[name] * 1e6
    # The DiT code's own count: output doubled by learn_sigma, and the frozen positional table counted too.
    tokens = (LATENT[0] // preset["patch_size"]) * (LATENT[1] // preset["patch_size"])
    official = dit_param_count(preset["hidden"], preset["depth"], preset["patch_size"], LATENT[2], 1000,
                               learn_sigma=True) + tokens * preset["hidden"]
    print(f"\nDiT-{name}: {n:,} parameters (paper {DIT_PAPER_PARAMS_M[name]} M: {100 * (n / paper - 1):+.2f} %; "
          f"with learn_sigma and the frozen positional table {official:,}: {100 * (official / paper - 1):+.3f} %)")
    assert n == dit_param_count(preset["hidden"], preset["depth"], preset["patch_size"], LATENT[2], 1000)
    assert abs(n / paper - 1) < 0.01
    assert abs(official / paper - 1) < 0.002
    if name == "XL/2":
        assert official == 675_129_632   # printed by the official DiT code for DiT-XL/2


@pytest.mark.parametrize("kwargs, shape", [
    (dict(hidden=32, depth=2, num_heads=2, patch_size=2), (8, 8, 4)),
    (dict(hidden=64, depth=1, num_heads=4, patch_size=4, num_classes=10, mlp_ratio=2.0), (16, 8, 3)),
])
def test_param_count_formula(kwargs, shape):
    n = _count(_abstract_params(DiT(**kwargs), shape))
    assert n == dit_param_count(kwargs["hidden"], kwargs["depth"], kwargs["patch_size"], shape[-1],
                                kwargs.get("num_classes"), kwargs.get("mlp_ratio", 4.0))


@functools.cache
def _initialised():
    """The tiny conditional DiT with its real initialisation (compiled once for both tests below)."""
    net, shape, apply = compiled("dit", num_classes=3)
    x, t = inputs(shape)
    labels = jnp.array([0, 3, 1], jnp.int32)
    v = jax.jit(net.init, compiler_options=FAST_COMPILE)(KEY, x, t, labels)
    return net, apply, v, x, t, labels


def test_adaln_zero_initialisation():
    net, apply, v, x, t, labels = _initialised()
    params = v["params"]
    # The output is exactly zero (the final layer's modulation and linear map are zero) ...
    np.testing.assert_array_equal(apply(v, x, t, labels), 0.0)
    for leaf in jax.tree.leaves(params["final_layer"]):
        np.testing.assert_array_equal(leaf, 0.0)
    # ... and every block is exactly the identity (its gates are zero), for any tokens and conditioning.
    tokens = jax.random.normal(jax.random.key(1), (3, 16, net.hidden))
    c = jax.random.normal(jax.random.key(2), (3, net.hidden))
    block = jax.jit(DiTBlock(net.num_heads, net.mlp_ratio).apply, compiler_options=FAST_COMPILE)
    for i in range(net.depth):
        np.testing.assert_array_equal(block({"params": params[f"block_{i}"]}, tokens, c), tokens)
        np.testing.assert_array_equal(params[f"block_{i}"]["adaLN_modulation"]["kernel"], 0.0)
    # The rest is not zero: attention, MLP, embedders are initialised normally.
    assert float(jnp.std(params["block_0"]["attn"]["qkv"]["kernel"])) > 0.05
    assert 0.01 < float(jnp.std(params["y_embedder"]["table"]["embedding"])) < 0.03   # normal(0.02)


def test_patchify_unpatchify_layout():
    """With identity blocks (init) and a random final layer, output patch k depends on input patch k only."""
    net, apply, v, x, t, labels = _initialised()
    final = v["params"]["final_layer"]["linear"]
    final = {"kernel": jax.random.normal(jax.random.key(5), final["kernel"].shape), "bias": final["bias"]}
    v = {"params": {**v["params"], "final_layer": {**v["params"]["final_layer"], "linear": final}}}
    out = apply(v, x, t, labels)
    p = net.patch_size
    x2 = x.at[:, p:2 * p, 2 * p:3 * p].add(1.0)                  # change patch (row 1, column 2) only
    changed = np.asarray(jnp.any(apply(v, x2, t, labels) != out, axis=(0, 3)))
    expected = np.zeros(x.shape[1:3], bool)
    expected[p:2 * p, 2 * p:3 * p] = True
    np.testing.assert_array_equal(changed, expected)


def test_sincos_positional_embedding():
    dim, gh, gw = 16, 3, 5
    emb = sincos_pos_embed_2d(dim, gh, gw)
    assert emb.shape == (gh * gw, dim) and emb.dtype == np.float32
    # MAE's get_2d_sincos_pos_embed: first half encodes the column (w) index, second half the row index.
    omega = 1.0 / 10_000 ** (np.arange(dim // 4) / (dim / 4))
    for k in range(gh * gw):
        row, col = divmod(k, gw)
        ref = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
        np.testing.assert_allclose(emb[k], ref, atol=1e-6)
    assert len({tuple(np.round(e, 5)) for e in emb}) == gh * gw     # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, 2, 2)


def test_bad_inputs_raise_while_tracing():
    net = DiT(hidden=32, depth=1, num_heads=2, patch_size=4)
    x, t = jnp.zeros((2, 8, 8, 4)), jnp.zeros(2)
    v = jax.eval_shape(net.init, KEY, x, t)
    for bad, msg in [((2, 8, 6, 4), "divisible by patch_size=4; got 8x6"), ((2, 10, 8, 4), "got 10x8"),
                     ((2, 8, 8), "x must have shape")]:
        with pytest.raises(ValueError, match=msg):
            jax.eval_shape(net.apply, v, jnp.zeros(bad), t)
        with pytest.raises(ValueError, match=msg):
            jax.jit(net.apply)(v, jnp.zeros(bad), t)
    with pytest.raises(ValueError, match="floating point"):
        jax.eval_shape(net.apply, v, jnp.zeros((2, 8, 8, 4), jnp.int32), t)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(hidden=32, num_heads=3), r"num_heads=3 must divide hidden=32; valid num_heads: \[1, 2, 4, 8, 16, 32\]"),
    (dict(hidden=30, num_heads=2), "hidden=30 must be divisible by 4"),
    (dict(depth=0), "depth must be"),
    (dict(patch_size=0), "patch_size must be"),
    (dict(hidden=32.0), "hidden must be"),
    (dict(mlp_ratio=0), "mlp_ratio"),
])
def test_bad_configuration_raises(kwargs, msg):
    with pytest.raises(ValueError, match=msg) as err:
        DiT(**kwargs)
    assert str(err.value).startswith("DiT:")
