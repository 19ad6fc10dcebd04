"""``data.name = "latents"``: batches are scaled posterior draws (mean + std·ε − shift)·scale of the stored rows, of
either flip copy, with their labels; a batch is a pure function of (seed, step) split exactly over processes, so a
resumed run reads the same batches; bad options are refused by name; and a run trains on latents through the real
command line, its samples decoded by the dataset's autoencoder (and refused, before anything is written, without it)."""

import json
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from flowgen import autoencoders
from flowgen import main as cli_main
from flowgen.latents import encode, open_latents
from flowgen.latents.decode import to_uint8
from flowgen.train import config as config_lib
from flowgen.train.latent_input import LatentInput

AE = str(Path(__file__).parent / "data" / "autoencoder_sd_small")
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


@pytest.fixture(scope="module")
def ae_copy(tmp_path_factory):
    """A copy of the test autoencoder that tests may take away (as on a machine without it)."""
    folder = tmp_path_factory.mktemp("ae") / "autoencoder_sd_small"
    shutil.copytree(AE, folder)
    return folder


@pytest.fixture(scope="module")
def latents(tmp_path_factory, ae_copy):
    root = tmp_path_factory.mktemp("latents")
    out = root / "digits16"
    encode.encode_dataset(str(out), dataset="flowgen_digits", autoencoder=str(ae_copy), resolution=16,
                          num_images=32, chunk=32, micro_batch=8, data_dir=str(root / "tfds"))
    return str(out)


def _cli(args, capsys):
    code = cli_main.cli(["flowgen", *args])
    return code, capsys.readouterr().err


TRAIN = ["--config=configs/toy2d_rf.py:small", "--config.data.name=latents", "--config.model.num_classes=10",
         "--config.data.batch_size=16", "--config.train.num_steps=6", "--config.train.sample_every=6",
         "--config.sample.num_samples=20"]


def _data(batch_size=16, mock=False, **kwargs):
    return ml_collections.ConfigDict({"name": "latents", "kwargs": kwargs, "batch_size": batch_size, "mock": mock})


def test_batches_are_scaled_posterior_draws_of_either_copy_with_their_labels(latents):
    data = open_latents(latents)
    source = LatentInput(_data(dir=latents), seed=3)
    assert source.element_shape == (4, 4, 4) and source.num_classes == 10
    eps, copies = [], []
    for step in range(40):
        batch = source.batch(step)
        idx, copy = source.indices(step)
        mean, std = data.mean[idx, copy], data.std[idx, copy]
        eps.append((batch["x"] / 0.18215 - mean) / std)          # SD: scale 0.18215, no shift
        copies.append(copy)
        np.testing.assert_array_equal(batch["label"], data.label[idx])
    eps, copies = np.concatenate(eps), np.concatenate(copies)
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03          # 40·16·64 standard-normal draws
    assert 0.4 < copies.mean() < 0.6                                      # the mirror half the time


def test_batches_resume_exactly_and_split_over_processes(latents):
    cfg = _data(dir=latents)
    a = LatentInput(cfg, seed=5)
    first = [a.next() for _ in range(3)]
    state = a.get_state()
    rest = [a.next() for _ in range(2)]
    b = LatentInput(cfg, seed=5)
    b.set_state(json.loads(json.dumps(state)))
    for want, got in zip(rest, [b.next() for _ in range(2)], strict=True):
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])
    halves = [LatentInput(cfg, seed=5, shard_index=i, shard_count=2).batch(1) for i in (0, 1)]
    for k in first[1]:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), first[1][k])
    assert not np.array_equal(first[0]["x"], first[1]["x"])


def test_mock_latents_have_the_declared_shape():
    source = LatentInput(_data(mock=True, shape=(2, 2, 16), num_classes=3), seed=0)
    batch = source.next()
    assert batch["x"].shape == (16, 2, 2, 16) and set(batch["label"]) <= {0, 1, 2}


@pytest.mark.parametrize("kwargs, mock, match", [
    ({"dir": "/nonexistent/latents"}, False, "data.kwargs.dir='/nonexistent/latents' is not a latent dataset"),
    ({}, False, "needs data.kwargs.dir"),
    ({"file": "x"}, False, "data.kwargs.file: not an option of data.name='latents'; valid: dir, shape, num_classes"),
    ({"shape": (4, 4)}, True, "declares data.kwargs.shape"),
])
def test_bad_latent_options_are_refused_by_name(kwargs, mock, match):
    with pytest.raises(ValueError, match=match):
        config_lib.latents_header(_data(mock=mock, **kwargs))


def test_declared_shape_must_match_the_dataset(latents):
    with pytest.raises(ValueError, match=r"data.kwargs.shape=\(8, 8, 4\) but .* has shape \[4, 4, 4\]"):
        config_lib.latents_header(_data(dir=latents, shape=(8, 8, 4)))


def test_a_run_trains_on_latents_and_samples_decoded_images(latents, ae_copy, tmp_path, capsys):
    workdir = tmp_path / "w"
    train = [*TRAIN, f"--config.data.kwargs.dir={latents}", f"--workdir={workdir}"]
    code, err = _cli(train, capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert losses and all(np.isfinite(losses))
    assert (workdir / "samples" / "step_0000006.png").exists()

    code, err = _cli([*train, "--mode=sample"], capsys)
    assert code == 0, err
    (npz,) = (workdir / "samples").glob("sample_step*.npz")
    with np.load(npz) as f:
        samples, images = f["samples"], f["images"]
    assert samples.shape == (20, 4, 4, 4) and images.shape == (20, 16, 16, 3) and images.dtype == np.uint8
    vae = autoencoders.from_pretrained(str(ae_copy))
    want = to_uint8(vae.decode(samples / 0.18215))                   # SD: unscale = z / 0.18215, no shift
    assert np.abs(images.astype(int) - want).max() <= 1 and np.mean(images != want) < 0.01

    moved = ae_copy.with_name("elsewhere")                              # a machine without the autoencoder
    ae_copy.rename(moved)
    try:
        before = sorted(p.name for p in (workdir / "samples").iterdir())
        code, err = _cli([*train, "--mode=sample", "--config.sample.num_steps=3"], capsys)
        assert code == 2 and "autoencoder 'autoencoder_sd_small'" in err and "hf download" in err, err
        assert sorted(p.name for p in (workdir / "samples").iterdir()) == before
        code, err = _cli([*train[:-1], f"--workdir={tmp_path / 'w2'}"], capsys)
        assert code == 2 and "autoencoder 'autoencoder_sd_small'" in err, err
        assert not any(p.is_file() for p in (tmp_path / "w2").rglob("*"))      # nothing written
    finally:
        moved.rename(ae_copy)
