"""flowgen.networks.unet: the reference networks' exact sizes and layouts (DDPM, score_sde's DDPM++, EDM's DDPM++, and
the CIFAR-10 configs built from them), DDPM's time features, dropout only in training, DDPM++ options, bad input.

The shared contract (shapes, labels, bfloat16, remat, conditioning errors) is in test_networks_common.py.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_networks_common import DROPOUT_KEY, FAST_COMPILE, KEY, compiled, init, inputs

from flowgen.networks import UNET_PRESETS, UNet, unet_cifar10_ddpm
from flowgen.networks.embeddings import sinusoidal_embedding
from flowgen.networks.unet import AttnBlock
from flowgen.train.config import load_config_module
from flowgen.train.model import build_network

PAPER_PARAMS = 35.7e6   # Ho et al. 2020, §4 / Appendix B: "Our CIFAR10 model has 35.7 million parameters"
# Parameter counts of the reference implementations on 32×32×3 (sources in flowgen.networks.unet's docstring):
DDPMPP_PARAMS = 61_804_419       # score_sde configs/vp/cifar10_ddpmpp_continuous (models/ncsnpp.py); RectifiedFlow
EDM_DDPMPP_PARAMS = 55_733_891   # NVlabs/edm SongUNet, train.py --arch=ddpmpp on CIFAR-10 (with augment_dim=9)
EDM_AUGMENT_PARAMS = 9 * 128     # its map_augment (9 augmentation labels → 128, no bias), absent here
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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


@pytest.mark.parametrize("preset, expected", [
    ("ddpmpp_cifar10", DDPMPP_PARAMS),
    ("edm_ddpmpp_cifar10", EDM_DDPMPP_PARAMS - EDM_AUGMENT_PARAMS),
])
def test_ddpmpp_presets_have_the_reference_parameter_counts(preset, expected):
    assert _count(_shapes(UNet(**UNET_PRESETS[preset]))) == expected


@pytest.mark.parametrize("name, expected, time_scale", [
    ("cifar10_ddpmpp_vp", DDPMPP_PARAMS, 999.0),
    ("cifar10_rf", DDPMPP_PARAMS, 999.0),
    ("cifar10_edm", EDM_DDPMPP_PARAMS - EDM_AUGMENT_PARAMS, 1.0),
])
def test_cifar10_configs_build_the_reference_networks(name, expected, time_scale):
    """The network each CIFAR-10 recipe trains is the published one (built as training builds it)."""
    config = load_config_module(str(CONFIG_DIR / f"{name}.py"), name).get_config()
    net = build_network(config.model, num_classes=None)
    n = _count(_shapes(net))
    assert n == expected, f"{name}: {n:,} parameters; the reference network has {expected:,}"
    assert net.time_scale == time_scale   # score_sde and RectifiedFlow embed 999·t; EDM embeds c_noise = ¼·ln σ


@pytest.mark.parametrize("preset, heights", [("ddpmpp_cifar10", (32, 16, 8, 4)), ("edm_ddpmpp_cifar10", (32, 16, 8))])
def test_ddpmpp_layout(preset, heights):
    """DDPM++ (score_sde's NCSN++ code; EDM's SongUNet): attention after each encoder block at 16×16, in the middle,
    and once at the end of the 16×16 decoder level (DDPM has one after each of its R + 1 decoder blocks)."""
    params = _shapes(UNet(**UNET_PRESETS[preset]))
    level = heights.index(16)
    last = len(heights) - 1
    assert sorted(k for k in params if "attn" in k) == sorted(
        [f"down_{level}_attn_{j}" for j in range(4)] + ["mid_attn", f"up_{level}_attn_4"])
    samplers = sorted(k for k in params if k.endswith("_sample"))
    assert samplers == sorted(
        [f"down_{i}_sample" for i in range(last)] + [f"up_{i}_sample" for i in range(1, last + 1)])
    assert all("shortcut" in params[k] for k in samplers)             # resampling ResBlocks: 1×1 shortcut
    assert len([k for k in params if "_block_" in k]) == len(heights) * (4 + 5) + 2
    assert params["time_embed"]["dense_0"]["kernel"].shape == (128, 512)


def test_unet_time_features_are_ddpms():
    """The U-Net embeds t with DDPM's frequencies time_scale·10000^(−i/(C/2 − 1)) (slowest exactly 1/10000), as
    Ho et al.'s, score_sde's and EDM's U-Nets do; sin/cos order is a column permutation absorbed by dense_0."""
    net = UNet(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4, time_scale=999.0)
    x, t = jnp.zeros((2, 4, 4, 3)), jnp.array([0.3, 0.9])
    v = init(net, x, t)
    apply = jax.jit(lambda v: net.apply(v, x, t, capture_intermediates=lambda m, _: m.name == "time_embed")[1],
                    compiler_options=FAST_COMPILE)
    state = apply(v)
    emb = state["intermediates"]["time_embed"]["__call__"][0]
    args = np.asarray(t, np.float64)[:, None] * 999.0 * 10_000.0 ** (-np.arange(8) / 7)
    feats = np.concatenate([np.cos(args), np.sin(args)], -1)
    p = v["params"]["time_embed"]
    dense = lambda h, name: h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"])
    h0 = dense(feats, "dense_0")
    np.testing.assert_allclose(emb, dense(h0 / (1 + np.exp(-h0)), "dense_1"), atol=1e-4)
    np.testing.assert_allclose(sinusoidal_embedding(t, 16, time_scale=999.0, endpoint=True), feats, atol=1e-4)
    with pytest.raises(ValueError, match="endpoint=True needs dim >= 4"):
        sinusoidal_embedding(t, 3, endpoint=True)


def test_attention_qkv_init_scale():
    """DDPM++ initialises q, k, v with variance 0.1/C (score_sde's NIN scale 0.1; EDM's √0.2 gain over fan 4·C)."""
    c = 256
    for scale in (1.0, 0.1):
        block = AttnBlock(num_groups=32, init_scale=scale)
        v = jax.jit(block.init, compiler_options=FAST_COMPILE)(KEY, jnp.zeros((1, 1, 1, c)))["params"]
        for name in ("q", "k", "v"):
            w = np.asarray(v[name]["kernel"])
            assert np.abs(w).max() <= math.sqrt(3 * scale / c)               # uniform on ±sqrt(3·scale·2/(2C))
            assert abs(w.var() / (scale / c) - 1) < 0.02
        assert np.abs(np.asarray(v["proj_out"]["kernel"])).max() <= math.sqrt(3e-10 / c)   # ≈ 0 (DDPM's init 0)


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
    (dict(ch=2, num_groups=1), "ch must be an integer >= 4"),
    (dict(up_attention="every"), r"unknown up_attention 'every'; valid: per_block, per_level"),
    (dict(attn_init_scale=0.0), "attn_init_scale"),
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
