"""Training a small autoencoder (flowgen.autoencoders.train) and writing it as a diffusers folder
(flowgen.autoencoders.save): the folder reads back bit for bit, training learns the digits, the fitted factors
standardise the latents, and bad input fails before anything is compiled."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from flowgen import autoencoders
from flowgen.autoencoders import save, train
from flowgen.evals import digits_fid

TINY = dict(train.DIGITS_CONFIG, block_out_channels=[8, 16], norm_num_groups=4)


def _random_vae(config=TINY, seed=0):
    cfg = autoencoders.config_from_dict(config)
    x = np.zeros((1, 8, 8, cfg.in_channels), np.float32)
    params = autoencoders.KLAutoencoder(cfg).init(jax.random.key(seed), x)
    return autoencoders.Autoencoder(cfg, params)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    import dataclasses

    vae = _random_vae()
    vae = autoencoders.Autoencoder(dataclasses.replace(vae.config, shift_factor=0.25, scaling_factor=1.75), vae.params)
    folder = save.save_pretrained(vae, tmp_path / "ae", extra_files={"training.json": {"steps": 3}})
    back = autoencoders.from_pretrained(folder)
    assert back.config == vae.config
    for a, b in zip(jax.tree.leaves(vae.params), jax.tree.leaves(back.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((folder / "training.json").read_text()) == {"steps": 3}
    assert json.loads((folder / "config.json").read_text())["down_block_types"] == ["DownEncoderBlock2D"] * 2
    assert not list(tmp_path.glob("*.tmp-*"))


def test_state_dict_has_pytorch_layouts():
    sd = save.state_dict(_random_vae().params)
    assert sd["encoder.conv_in.weight"].shape == (8, 1, 3, 3)                    # (O, I, kh, kw)
    assert sd["encoder.mid_block.attentions.0.to_q.weight"].shape == (16, 16)
    assert sd["decoder.up_blocks.1.resnets.0.norm2.weight"].shape == (8,)       # GroupNorm scale


def test_save_pretrained_never_replaces(tmp_path):
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never replaced"):
        save.save_pretrained(_random_vae(), tmp_path / "ae")
    assert (tmp_path / "ae" / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def trained():
    images = digits_fid.split_images("train")[0]
    settings = train.TrainSettings(steps=400, batch_size=32, lr=3e-3, warmup=20, log_every=100)
    vae, history = train.train_autoencoder(images, TINY, settings, log=None)
    return vae, history, images


def test_training_learns_to_reconstruct_held_out_digits(trained):
    """The decoder must use the latent: held-out reconstruction error far below the pixel variance (a decoder that
    ignores z, or an encoder that drops the image, stays near it), and the loss falls."""
    vae, history, _ = trained
    test = digits_fid.split_images("test")[0]
    mse = float(np.mean((train.reconstruct(vae, test) - test) ** 2))
    variance = float(np.mean((test - test.mean(0)) ** 2))
    assert mse < 0.25 * variance, (mse, variance)
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_fitted_factors_standardise_the_latents(trained):
    vae, _, images = trained
    mean, std = vae.encode(images)
    z = np.asarray(mean + std * jax.random.normal(jax.random.key(7), mean.shape))
    scaled = np.asarray(vae.scale_latents(z))
    assert abs(scaled.mean()) < 0.05 and abs(scaled.std() - 1) < 0.05, (scaled.mean(), scaled.std())


def test_training_is_deterministic():
    images = digits_fid.split_images("train")[0][:64]
    settings = train.TrainSettings(steps=3, batch_size=8, warmup=1, log_every=3)
    a, _ = train.train_autoencoder(images, TINY, settings, log=None)
    b, _ = train.train_autoencoder(images, TINY, settings, log=None)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps=0"), ({"warmup": 5, "steps": 5}, "warmup=5"), ({"lr": 0.0}, "lr=0.0"),
    ({"kl_weight": -1.0}, "kl_weight=-1.0"), ({"batch_size": 2.5}, "batch_size=2.5")])
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        train.train_autoencoder(np.zeros((4, 8, 8, 1), np.float32), TINY, train.TrainSettings(**change), log=None)


def test_bad_images_are_named():
    with pytest.raises(ValueError, match=r"\(N, H, W, 1\)"):
        train.train_autoencoder(np.zeros((4, 8, 8, 3), np.float32), TINY, log=None)
    with pytest.raises(ValueError, match="floating point"):
        train.train_autoencoder(np.zeros((4, 8, 8, 1), np.uint8), TINY, log=None)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert train.main(["--dataset", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "dataset='nope' is not one of" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    assert train.main(["--dataset", "flowgen_digits", "--out", str(tmp_path / "b")]) == 2
    assert "exists" in capsys.readouterr().err
    assert train.main(["--dataset", "flowgen_digits", "--out", str(tmp_path / "c"), "--steps", "0"]) == 2
    assert "steps=0" in capsys.readouterr().err
