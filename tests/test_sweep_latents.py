"""NFE sweeps of a model trained on latents: its image metrics (digits-FID, pixel FD) and its previews see its
samples decoded by the latent dataset's autoencoder, its context metrics (ode_error) and saved samples stay latents,
and a metric that fits neither is refused before anything runs."""

import math

import jax
import numpy as np
import pytest

from flowgen import autoencoders
from flowgen.autoencoders import save, train
from flowgen.evals import digits_fid
from flowgen.latents import encode
from flowgen.latents.decode import run_decoder
from flowgen.sweep import runner, spec, store
from flowgen.sweep.metrics import METRICS
from flowgen.train.config import base_config

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

TINY = dict(train.DIGITS_CONFIG, block_out_channels=[8, 16], norm_num_groups=4)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    """A latent dataset of 64 digits (8×8×1 → 4×4×2) encoded by a random-init tiny autoencoder."""
    root = tmp_path_factory.mktemp("latents")
    cfg = autoencoders.config_from_dict(TINY)
    params = autoencoders.KLAutoencoder(cfg).init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    folder = save.save_pretrained(autoencoders.Autoencoder(cfg, params), root / "ae")
    out = root / "digits8"
    assert encode.main(["--dataset", "flowgen_digits", "--autoencoder", str(folder), "--out", str(out),
                        "--resolution", "8", "--protocol", "stored", "--no_flips", "--num_images", "64",
                        "--chunk", "64", "--data_dir", str(root / "tfds")]) == 0
    return str(out)


def _training_config(latent_dir):
    c = base_config()
    c.data.name = "latents"
    c.data.kwargs = {"dir": latent_dir}
    c.data.batch_size = 16
    c.model.name = "mlp"
    c.model.kwargs = {"hidden": 32, "depth": 1}
    c.train.num_steps = 4
    c.train.log_every = c.train.checkpoint_every = c.train.sample_every = 4
    c.sample.num_samples = 16
    c.optim.warmup_steps = 2
    return c


def _sweep(latent_dir, metrics):
    return {"models": {"lat": {"train": _training_config(latent_dir)}}, "solvers": ("euler",), "nfe": (2,),
            "seeds": (0,), "metrics": metrics, "num_samples": 32}


@pytest.fixture(scope="module")
def swept(latent_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    out = runner.run(_sweep(latent_dir, ("digits_fid", "ode_error")), str(workdir), progress=False)
    (row,) = out["rows"]
    samples = store.read_samples(str(workdir / "cells"), row["id"])
    return workdir, out, row, samples


def test_the_spec_knows_the_decoded_dataset_and_which_metrics_score_it(latent_dir):
    (m,) = spec.parse(_sweep(latent_dir, ("digits_fid", "ode_error"))).models
    assert (m.data_name, m.decoded_data, m.element_shape) == ("latents", "flowgen_digits", (4, 4, 2))
    assert (m.metric_data("digits_fid"), m.metric_data("ode_error")) == ("flowgen_digits", "latents")


def test_image_metrics_score_the_decoded_samples_and_the_saved_samples_stay_latents(latent_dir, swept):
    _, out, row, samples = swept
    assert row["status"] == "done" and row["decoded_data"] == "flowgen_digits"
    assert samples.shape == (32, 4, 4, 2)                                     # model space: latents
    images = run_decoder(_training_config(latent_dir))(samples)
    assert images.shape == (32, 8, 8, 1)
    assert row["metrics"]["digits_fid"] == pytest.approx(digits_fid.digits_fid(images), rel=1e-5, abs=1e-6)
    preview = np.asarray(row["preview"])
    assert preview.shape == (32, 8, 8, 1)                                     # decoded: the report draws digits
    np.testing.assert_allclose(preview, images, atol=1e-5)
    assert "flowgen_digits" in out["markdown"] and (swept[0] / "samples_lat.png").exists()


def test_context_metrics_score_the_latents(latent_dir, swept):
    workdir, _, row, samples = swept
    s = spec.parse(_sweep(latent_dir, ("digits_fid", "ode_error")))
    (cell,) = runner.plan(s, {m.name: runner.prepare(m, str(workdir)) for m in s.models})
    assert cell.id == row["id"]
    context = runner.CellContext(cell, s, runner.batch_sharding(), row["t_start"], row["t_end"], False, {})
    expected = METRICS["ode_error"]("latents", 32)(samples, context)            # the raw latent samples
    assert math.isfinite(row["metrics"]["ode_error"]) and row["metrics"]["ode_error"] == pytest.approx(expected)


def test_a_metric_added_later_scores_the_saved_samples_decoded(latent_dir, swept):
    workdir, _, row, samples = swept
    out = runner.run(_sweep(latent_dir, ("digits_fid", "ode_error", "pixel_fd")), str(workdir), progress=False)
    (again,) = out["rows"]
    images = run_decoder(_training_config(latent_dir))(samples)
    assert again["metrics"]["pixel_fd"] == pytest.approx(digits_fid.pixel_fid(images), rel=1e-5, abs=1e-6)
    assert again["metrics"]["digits_fid"] == row["metrics"]["digits_fid"]


def test_a_metric_that_does_not_fit_the_decoded_images_is_refused_before_anything_runs(latent_dir, tmp_path):
    with pytest.raises(ValueError, match=r"metric 'sliced_w2' does not fit the data 'flowgen_digits' \(its latents "
                                         r"decoded\) of model 'lat'; metrics for .*: digits_fid, pixel_fd.*ode_error"):
        runner.run(_sweep(latent_dir, ("digits_fid", "sliced_w2")), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()
