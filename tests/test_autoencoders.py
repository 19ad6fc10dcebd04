"""KL autoencoders (SD, SD3) against diffusers: outputs on small folders, full-size structure and parameter counts,
strict conversion, config validation, and the missing-folder message.

Reference data come from tests/data/make_autoencoder_reference.py (torch + diffusers, run in their own environment).
"""

import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from flowgen import autoencoders as ae
from flowgen.autoencoders import convert

DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "autoencoder_reference.npz")
SMALL = ("sd_small", "sd3_small")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# diffusers 0.42.1, AutoencoderKL(**config) with random weights (the reference file stores the same numbers).
DIFFUSERS_COUNTS = {"sd_vae_ft_mse": 83_653_863, "sd3_vae": 83_819_683}


def rel_error(got, want) -> float:
    """max |got − want| / max |want| over the whole array."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def vaes():
    return {name: ae.from_pretrained(DATA / f"autoencoder_{name}") for name in SMALL}


def copy_folder(name, tmp_path, state=None, config=None) -> Path:
    """A copy of a small reference folder, optionally with another state dict or config."""
    folder = tmp_path / name
    shutil.copytree(DATA / f"autoencoder_{name}", folder)
    if state is not None:
        save_file(state, str(folder / WEIGHTS))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", ae.FULL_SIZE)
def test_full_size_parameter_counts_equal_diffusers(name):
    assert int(REF[f"params_{name}"]) == DIFFUSERS_COUNTS[name]
    assert ae.param_count(ae.full_size_config(name)) == DIFFUSERS_COUNTS[name]


@pytest.mark.parametrize("name", ae.FULL_SIZE)
def test_full_size_structure_matches_diffusers_state_dict(name):
    """Every tensor of diffusers' full-size state dict maps onto exactly one Flax parameter of the right shape (the
    check from_pretrained makes), with zero-copy placeholder arrays."""
    state = {}
    for entry in REF[f"keys_{name}"]:
        key, shape = str(entry).split(":")
        state[key] = np.broadcast_to(np.float32(0), tuple(int(d) for d in shape.split(",")))
    matched = convert.match_state_dict(state, ae.abstract_params(ae.full_size_config(name)))
    assert len(matched) == len(state) == (248 if name == "sd_vae_ft_mse" else 244)   # sd3: no quant convs (4 fewer)
    assert {convert.path_to_torch_key(p) for p in matched} == set(state)


@pytest.mark.parametrize("name", SMALL)
def test_encode_decode_match_diffusers(vaes, name):
    """≤ 1e-5 relative (max |diff| / max |reference| per output); measured ≤ 2e-6 (decode), ≤ 8e-7 (mean, std)."""
    vae = vaes[name]
    assert vae.num_params == int(REF[f"params_{name}"])
    mean, std = vae.encode(REF[f"{name}_images"])
    decoded = vae.decode(REF[f"{name}_latents"])
    f, z = vae.downsampling_factor, vae.latent_channels
    assert mean.shape == std.shape == (2, 24 // f, 16 // f, z) and mean.dtype == std.dtype == jnp.float32
    assert decoded.shape == REF[f"{name}_decoded"].shape == (2, 24, 16, 3)
    errors = {"mean": rel_error(mean, REF[f"{name}_mean"]), "std": rel_error(std, REF[f"{name}_std"]),
              "decode": rel_error(decoded, REF[f"{name}_decoded"])}
    print(name, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-5, errors


def test_encoding_is_per_image(vaes):
    """GroupNorm and attention act within an image: encoding a batch equals encoding its images one at a time."""
    vae = vaes["sd_small"]
    x = REF["sd_small_images"]
    mean, std = vae.encode(x)
    for i in range(len(x)):
        m, s = vae.encode(x[i:i + 1])
        np.testing.assert_allclose(m[0], mean[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s[0], std[i], rtol=1e-5, atol=1e-6)


def test_posterior_clamps_log_variance_as_diffusers():
    mean, std = ae.posterior(jnp.asarray(REF["posterior_moments"]))
    np.testing.assert_array_equal(mean, REF["posterior_mean"])
    np.testing.assert_allclose(std, REF["posterior_std"], rtol=1e-6)
    logvar = REF["posterior_moments"][..., 4:]
    assert logvar.min() < -30 and logvar.max() > 20                      # the clamp acts on both sides


def test_config_values_and_latent_scaling(vaes):
    sd, sd3 = vaes["sd_small"], vaes["sd3_small"]
    assert (sd.scaling_factor, sd.shift_factor, sd.latent_channels, sd.downsampling_factor) == (0.18215, None, 4, 4)
    assert (sd3.scaling_factor, sd3.shift_factor, sd3.latent_channels, sd3.downsampling_factor) == (1.5305, 0.0609,
                                                                                                    16, 2)
    assert not sd3.config.use_quant_conv and "quant_conv" not in sd3.params["params"]
    z = REF["sd3_small_latents"]
    np.testing.assert_allclose(sd3.scale_latents(z), (z - 0.0609) * 1.5305, rtol=1e-6)
    np.testing.assert_allclose(sd3.unscale_latents(sd3.scale_latents(z)), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd.scale_latents(z), z * 0.18215, rtol=1e-6)


def test_full_size_configs_read_as_documented():
    sd = ae.config_from_dict(ae.full_size_config("sd_vae_ft_mse"))
    sd3 = ae.config_from_dict(ae.full_size_config("sd3_vae"))
    assert (sd.latent_channels, sd.scaling_factor, sd.shift_factor, sd.use_quant_conv) == (4, 0.18215, None, True)
    assert (sd3.latent_channels, sd3.scaling_factor, sd3.shift_factor, sd3.use_quant_conv) == (16, 1.5305, 0.0609,
                                                                                                False)
    assert sd.downsampling_factor == sd3.downsampling_factor == 8


def test_legacy_attention_names_and_float16_load(tmp_path, vaes):
    """Pre-0.14 diffusers names (query/key/value/proj_attn) give the same parameters; a float16 file (variant=) is
    widened exactly."""
    state = convert.read_safetensors(DATA / "autoencoder_sd_small" / WEIGHTS)
    legacy = {}
    for k, v in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[k] = v
    assert sum(".proj_attn." in k for k in legacy) == 4                   # encoder and decoder, weight and bias
    loaded = ae.from_pretrained(copy_folder("sd_small", tmp_path, state=legacy))
    want = vaes["sd_small"].params
    for a, b in zip(*(jax_leaves(p) for p in (loaded.params, want)), strict=True):
        np.testing.assert_array_equal(a, b)

    folder = copy_folder("sd3_small", tmp_path)
    save_file({k: v.astype(np.float16) for k, v in convert.read_safetensors(folder / WEIGHTS).items()},
              str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    half = ae.abstract_params(vaes["sd3_small"].config)
    got = convert.load_safetensors(folder / "diffusion_pytorch_model.fp16.safetensors", half)
    kernel = got["params"]["encoder"]["conv_in"]["kernel"]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, np.asarray(vaes["sd3_small"].params["params"]["encoder"]["conv_in"]["kernel"]
                                                     ).astype(np.float16).astype(np.float32))
    assert ae.from_pretrained(folder, variant="fp16").num_params == vaes["sd3_small"].num_params


def jax_leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_conversion_refuses_missing_unexpected_and_misshaped_tensors(tmp_path):
    state = convert.read_safetensors(DATA / "autoencoder_sd_small" / WEIGHTS)
    key = "decoder.up_blocks.1.resnets.0.conv1.weight"
    cases = {
        "missing": ({k: v for k, v in state.items() if k != key}, ["1 missing", key]),
        "unexpected": (state | {"encoder.extra.weight": np.zeros(3, np.float32)}, ["1 unexpected",
                                                                                   "encoder.extra.weight"]),
        "misshaped": (state | {key: state[key][:, :-1]}, ["1 with the wrong shape", key,
                                                          f"expected {state[key].shape}"]),
        "transposed": (state | {"encoder.mid_block.attentions.0.to_q.weight":
                                np.zeros((8, 4), np.float32)}, ["wrong shape", "to_q.weight (8, 4)"]),
        "integer": (state | {key: state[key].astype(np.int32)}, ["not floating point", key]),
    }
    for case, (bad, words) in cases.items():
        folder = copy_folder("sd_small", tmp_path / case, state=bad)
        with pytest.raises(ValueError, match="does not match the configured autoencoder") as e:
            ae.from_pretrained(folder)
        for w in words:
            assert w in str(e.value), (case, w, str(e.value))
    # a config that does not fit the weights (16 latent channels for a 4-channel file)
    cfg = json.loads((DATA / "autoencoder_sd_small" / "config.json").read_text()) | {"latent_channels": 16}
    with pytest.raises(ValueError, match="wrong shape.*quant_conv"):
        ae.from_pretrained(copy_folder("sd_small", tmp_path / "cfg", config=cfg))


@pytest.mark.parametrize("change, words", [
    ({"act_fn": "gelu"}, ["act_fn='gelu'", "silu"]),
    ({"down_block_types": ["DownBlock2D"] * 3}, ["down_block_types", "DownEncoderBlock2D"]),
    ({"up_block_types": ["UpDecoderBlock2D"] * 2}, ["up_block_types has 2 entries", "3"]),
    ({"norm_num_groups": 3}, ["norm_num_groups=3", "[4, 8, 8]"]),
    ({"latent_chanels": 4}, ["latent_chanels", "valid keys", "latent_channels"]),
    ({"layers_per_block": 0}, ["layers_per_block=0", "positive integer"]),
    ({"use_quant_conv": "yes"}, ["use_quant_conv='yes'", "true or false"]),
    ({"_class_name": "AutoencoderTiny"}, ["AutoencoderTiny", "AutoencoderKL"]),
])
def test_bad_config_raises_short_value_error(tmp_path, change, words):
    cfg = json.loads((DATA / "autoencoder_sd_small" / "config.json").read_text()) | change
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        ae.read_config(path)
    assert str(path) in str(e.value) and len(str(e.value)) < 600
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_missing_config_keys_take_diffusers_defaults():
    cfg = ae.config_from_dict({"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
                               "up_block_types": ["UpDecoderBlock2D"] * 2})
    assert (cfg.scaling_factor, cfg.shift_factor, cfg.latent_channels, cfg.layers_per_block) == (0.18215, None, 4, 1)
    assert cfg.use_quant_conv and cfg.use_post_quant_conv and cfg.mid_block_add_attention
    assert ae.AutoencoderConfig().block_out_channels == (64,)


def test_missing_folder_fails_fast_with_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWGEN_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        ae.from_pretrained(tmp_path / "nowhere")
    assert time.perf_counter() - start < 1.0
    msg = str(e.value)
    for w in (str(tmp_path / "nowhere"), "no such folder", "hf download stabilityai/sd-vae-ft-mse",
              "stabilityai/stable-diffusion-3-medium-diffusers --include 'vae/*'", "config.json", WEIGHTS,
              str(tmp_path / "cache" / "autoencoders" / "sd-vae-ft-mse")):
        assert w in msg, (w, msg)

    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    shutil.copy(DATA / "autoencoder_sd_small" / "config.json", bin_only)
    (bin_only / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"it has no diffusion_pytorch_model\.safetensors.*\.bin"):
        ae.from_pretrained(bin_only)

    # a known name resolves to <cache>/autoencoders/<name>: missing, then present
    with pytest.raises(FileNotFoundError, match="sd-vae-ft-mse"):
        ae.from_pretrained("sd-vae-ft-mse")
    shutil.copytree(DATA / "autoencoder_sd_small", ae.known_folder("sd-vae-ft-mse"))
    assert ae.from_pretrained("sd-vae-ft-mse").latent_channels == 4


def test_bad_inputs_raise_value_error(vaes):
    vae = vaes["sd_small"]
    with pytest.raises(ValueError, match="floating point"):
        vae.encode(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\) channels last"):
        vae.encode(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 4\)"):
        vae.decode(np.zeros((1, 2, 2, 16), np.float32))
