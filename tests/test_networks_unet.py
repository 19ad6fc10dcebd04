"""flowgen.networks.unet: DDPM's CIFAR-10 size, DDPM layout, dropout only in training, DDPM++ options, bad input.

The shared contract (shapes, labels, bfloat16, remat, conditioning errors) is in test_networks_common.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_networks_common import DROPOUT_KEY, KEY, compiled, init, inputs

from flowgen.networks import UNET_PRESETS, UNet, unet_cifar10_ddpm

PAPER_PARAMS = 35.7e6   # Ho et al. 2020, §4 / Appendix B: "Our CIFAR10 model has 35.7 million parameters"


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(net, hw=32, c=3, batch=1):
    x = jax.ShapeDtypeStruct((batch, hw, hw, c), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.float32)
    return jax.eval_shape(net.init, KEY, x, t)["params"]    # abstract: nothing is allocated


def test_cifar10_ddpm_parameter_count():
    net = unet_cifar10_ddpm()
    assert net == UNet(**UNET_PRESETS["ddpm_cifar10"])
    n = _count(_shapes(net))
    print(f"\nDDPM CIFAR-10 U-Net: {n:,} parameters (paper: 35.7 M; {100 * (n / PAPER_PARAMS - 1):+.2f} %)")
    assert abs(n / PAPER_PARAMS - 1) < 0.01
    assert n == 35_746_307   # the count of the official TensorFlow model


def test_ddpm_layout():
    """Ho et al.'s layout on CIFAR-10: 4 levels × 2 ResBlocks down, 3 up, 2 in the middle; attention at 16×16."""
    params = _shapes(unet_cifar10_ddpm())
    blocks = [k for k in params if "_block_" in k]
    attns = sorted(k for k in params if "attn" in k)
    assert len(blocks) == 4 * 2 + 2 + 4 * 3
    assert attns == ["down_1_attn_0", "down_1_attn_1", "mid_attn", "up_1_attn_0", "up_1_attn_1", "up_1_attn_2"]
    assert sorted(k for k in params if k.endswith("_sample")) == [
        "down_0_sample", "down_1_sample", "down_2_sample", "up_1_sample", "up_2_sample", "up_3_sample"]
    # Skip connections (concatenated): the first up block of level 0 sees [h from level 1 (256), skip (128)], its
    # last one [h (128), conv_in's output (128)]; the first up block of all sees [middle (256), skip (256)].
    assert params["up_0_block_0"]["conv_0"]["kernel"].shape == (3, 3, 384, 128)
    assert params["up_0_block_2"]["conv_0"]["kernel"].shape == (3, 3, 256, 128)
    assert params["up_0_block_2"]["shortcut"]["kernel"].shape == (1, 1, 256, 128)
    assert params["up_3_block_0"]["conv_0"]["kernel"].shape == (3, 3, 512, 256)
    assert "shortcut" not in params["down_0_block_0"]     # width unchanged: identity shortcut
    assert params["time_embed"]["dense_0"]["kernel"].shape == (128, 512)   # features of width ch, embedding 4·ch
    assert params["conv_out"]["kernel"].shape == (3, 3, 128, 3)


def test_dropout_only_when_training():
    net, shape, apply = compiled("unet")
    assert net.dropout > 0
    x, t = inputs(shape)
    v = init(net, x, t)
    out = apply(v, x, t)
    np.testing.assert_array_equal(out, apply(v, x, t))                          # deterministic in eval
    np.testing.assert_array_equal(out, apply(v, x, t, train=False, rngs={"dropout": DROPOUT_KEY}))
    train = lambda key: apply(v, x, t, train=True, rngs={"dropout": key})
    a = train(DROPOUT_KEY)
    np.testing.assert_array_equal(a, train(DROPOUT_KEY))                        # same key, same masks
    assert not np.allclose(a, out, atol=1e-4)
    assert not np.allclose(a, train(jax.random.key(4)), atol=1e-4)
    with pytest.raises(ValueError, match="needs rngs"):
        jax.eval_shape(lambda v: net.apply(v, x, t, train=True), v)


def test_ddpmpp_options_and_fourier_time():
    net, shape, apply = compiled("unet", resblock_updown=True, skip_rescale=True, time_embedding="fourier")
    x, t = inputs(shape)
    v = init(net, x, t)
    assert "down_0_sample" in v["params"] and "shortcut" in v["params"]["down_0_sample"]   # a resampling ResBlock
    assert "dense_0" in v["params"]["time_embed"]
    out = apply(v, x, t)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, apply(v, x, 1.0 - t), atol=1e-5)


def test_bad_inputs_raise_while_tracing():
    net = UNet(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
    x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros(2)
    v = jax.eval_shape(net.init, KEY, x, t)
    cases = [
        (net, (jnp.zeros((2, 10, 16, 3)), t), r"divisible by 2\^\(len\(ch_mult\) - 1\) = 4 .*got 10x16"),
        (net, (jnp.zeros((2, 16, 10, 3)), t), "divisible by .* = 4"),
        (net.clone(attn_resolutions=(16, 3)), (x, t), r"attn_resolutions \(3,\) never occur .*\[16, 8, 4\]"),
        (net.clone(attn_resolutions=(4,)), (jnp.zeros((2, 32, 32, 3)), t), r"\(4,\) never occur .*\[32, 16, 8\]"),
        (net, (jnp.zeros((2, 16, 16, 3), jnp.int32), t), "floating point"),
        (net, (jnp.zeros((2, 16, 16)), t), "x must have shape"),
    ]
    for n, args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            jax.eval_shape(n.apply, v, *args)
        with pytest.raises(ValueError, match=msg):
            jax.jit(n.apply)(v, *args)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(ch=16, num_groups=32), r"divisible by num_groups=32; widths .*\[16, 32\] include \[16\]"),
    (dict(ch=48, ch_mult=(1, 3)), r"widths ch·ch_mult = \[48, 144\] include \[48, 144\]"),
    (dict(ch=0), "ch must be"),
    (dict(ch_mult=()), "ch_mult must be"),
    (dict(ch_mult=(1, 0)), "ch_mult must be"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(attn_resolutions=16), "attn_resolutions must be"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_groups=0), "num_groups"),
])
def test_bad_configuration_raises(kwargs, msg):
    with pytest.raises(ValueError, match=msg) as err:
        UNet(**kwargs)
    assert str(err.value).startswith("UNet:")
