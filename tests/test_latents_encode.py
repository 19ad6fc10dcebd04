"""``python -m flowgen.latents``: the stored posteriors are the autoencoder's of the (flipped) images, chunks resume
byte-identically after a kill and over simulated processes, nothing existing is replaced, the provenance says what
was done, and ADM's centre crop is what it claims. The small SD-style test autoencoder (downsampling 4) encodes the
embedded digits, resized to 16×16."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from flowgen import autoencoders
from flowgen.latents import adm_center_crop, encode, open_latents
from flowgen.latents import protocol as protocol_lib

AE = str(Path(__file__).parent / "data" / "autoencoder_sd_small")
N = 24
KW = dict(dataset="flowgen_digits", autoencoder=AE, resolution=16, num_images=N, chunk=8, micro_batch=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """One uninterrupted run, through the command line's entry point."""
    out = tmp_path_factory.mktemp("latents") / "digits16"
    argv = [f"--out={out}", "--dataset=flowgen_digits", f"--autoencoder={AE}", "--resolution=16",
            f"--num_images={N}", "--chunk=8", "--micro_batch=4", f"--data_dir={data_dir}"]
    assert encode.main(argv) == 0
    return out


def _bytes(folder):
    return {name: (Path(folder) / name).read_bytes() for name in ("mean.npy", "std.npy", "label.npy")}


def test_stored_posteriors_are_the_autoencoders_of_the_images_and_their_mirrors(reference, data_dir):
    from flowgen.data import digits

    data = open_latents(str(reference))
    assert data.mean.shape == data.std.shape == (N, 2, 4, 4, 4) and data.mean.dtype == np.float32
    images, labels = digits.digits_images()
    pixels = np.stack([protocol_lib.prepare(im, "adm", 16) for im in images[:N]])
    x = protocol_lib.to_autoencoder_input(pixels, 3)
    vae = autoencoders.from_pretrained(AE)
    for copy, xs in enumerate((x, x[:, :, ::-1])):
        mean, std = (np.asarray(a) for a in vae.encode(xs))
        for got, want in ((data.mean[:, copy], mean), (data.std[:, copy], std)):
            assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    assert not np.allclose(data.mean[:, 0], data.mean[:, 1])          # the mirror is another image
    np.testing.assert_array_equal(data.label, labels[:N])


def test_provenance_names_the_autoencoder_its_weights_scaling_and_protocol(reference):
    p = open_latents(str(reference)).provenance
    weights = Path(AE) / "diffusion_pytorch_model.safetensors"
    assert p["autoencoder"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert p["autoencoder"]["name"] == "autoencoder_sd_small"
    assert p["autoencoder"]["config"] == json.loads((Path(AE) / "config.json").read_text())
    assert (p["scaling_factor"], p["shift_factor"]) == (0.18215, None)
    assert p["protocol"]["name"] == "adm" and p["protocol"]["resolution"] == 16
    assert p["source"] == {"dataset": "flowgen_digits", "tfds_name": "flowgen_digits", "split": "train",
                           "num_images": N, "split_size": 1500, "mock": False}
    assert p["flips"] is True and p["dtype"] == "float32" and p["num_classes"] == 10
    assert p["latent_shape"] == [4, 4, 4] and p["created"] and p["flowgen_version"]
    assert not os.path.exists(f"{reference}.parts")


def test_a_killed_run_resumes_to_the_same_bytes_and_so_do_split_processes(reference, data_dir, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "killed"
    real = np.concatenate
    calls = {"n": 0}

    def dies_in_the_second_chunk(arrays, *args, **kwargs):
        if len(arrays) and getattr(arrays[0], "ndim", 0) == 5:
            calls["n"] += 1
            if calls["n"] == 3:                  # chunk 0 writes mean and std; die while gathering chunk 1
                raise KeyboardInterrupt
        return real(arrays, *args, **kwargs)

    monkeypatch.setattr(encode.np, "concatenate", dies_in_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode.encode_dataset(str(out), data_dir=data_dir, **KW)
    monkeypatch.setattr(encode.np, "concatenate", real)
    parts = Path(f"{out}.parts")
    assert sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-00000.done"] and not out.exists()
    encode.encode_dataset(str(out), data_dir=data_dir, **KW)
    assert _bytes(out) == _bytes(reference)
    ref = open_latents(str(reference)).provenance
    assert {**open_latents(str(out)).provenance, "created": ref["created"]} == ref

    split = tmp_path / "two_processes"
    assert encode.encode_dataset(str(split), data_dir=data_dir, process_index=1, process_count=2, **KW) is None
    assert not split.exists()                    # process 1 encodes chunk 1 only and does not publish
    encode.encode_dataset(str(split), data_dir=data_dir, process_index=0, process_count=2, **KW)
    assert _bytes(split) == _bytes(reference)


def test_an_existing_folder_is_never_replaced(reference, data_dir, tmp_path):
    before = _bytes(reference)
    same = encode.encode_dataset(str(reference), data_dir=data_dir, **KW)
    assert same == open_latents(str(reference)).provenance                    # the same request: nothing to do
    with pytest.raises(FileExistsError, match=f"{reference}.*num_images"):
        encode.encode_dataset(str(reference), data_dir=data_dir, **{**KW, "num_images": N - 8})
    assert _bytes(reference) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=f"{mine}.*not a latent dataset"):
        encode.encode_dataset(str(mine), data_dir=data_dir, **KW)
    assert (mine / "notes.txt").read_text() == "keep" and not Path(f"{mine}.parts").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "imagenet"}, "dataset='imagenet' is not one of: .*imagenet2012"),
    ({"protocol": "squash"}, "protocol='squash' is not one of: adm, stored"),
    ({"resolution": 18}, "resolution=18: must be a positive multiple of .* 4"),
    ({"dtype": "int8"}, "dtype='int8' is not one of: float32, float16"),
    ({"chunk": 0}, "chunk=0"),
    ({"num_images": 2000}, "num_images=2000: flowgen_digits/train has only 1500"),
])
def test_bad_requests_are_refused_by_name(kwargs, match, tmp_path, data_dir):
    with pytest.raises(ValueError, match=match):
        encode.encode_dataset(str(tmp_path / "x"), data_dir=data_dir, **{**KW, **kwargs})
    assert not (tmp_path / "x").exists()


def test_a_missing_autoencoder_says_what_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download"):
        encode.encode_dataset(str(tmp_path / "x"), **{**KW, "autoencoder": str(tmp_path / "no-vae")})


def test_adm_centre_crop_halves_with_a_box_filter_then_cuts_the_centre():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    image = base.repeat(2, axis=0).repeat(2, axis=1)          # 128×96: box-halving gives back base exactly
    np.testing.assert_array_equal(adm_center_crop(image, 48), base[8:56])
    wide = rng.integers(0, 256, (30, 50, 1), dtype=np.uint8)   # short side 30 → 20: 20×33, centre columns 6..25
    out = adm_center_crop(wide, 20)
    assert out.shape == (20, 20, 1) and out.dtype == np.uint8
    assert adm_center_crop(wide[:, 10:40], 30).tolist() == wide[:, 10:40].tolist()   # already the size: unchanged


def test_four_devices_in_a_subprocess_write_the_same_bytes(reference, data_dir, tmp_path):
    """The command as a user runs it, on 4 forced CPU devices: every chunk split over them, the same bits."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(repo)}
    out = tmp_path / "four"
    cmd = [sys.executable, "-m", "flowgen.latents", f"--out={out}", "--dataset=flowgen_digits", f"--autoencoder={AE}",
           "--resolution=16", f"--num_images={N}", "--chunk=8", "--micro_batch=4", f"--data_dir={data_dir}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _bytes(out) == _bytes(reference)
