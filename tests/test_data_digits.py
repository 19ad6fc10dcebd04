"""scikit-learn's digits: the TFDS builder writes ArrayRecord, tfds.data_source reads it, the pipeline serves it."""

import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flowgen.data import digits, pipeline, prepare


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    digits.prepare_digits(path)
    return str(path)


def test_builder_writes_array_record(data_dir):
    folder = os.path.join(data_dir, digits.NAME, "1.0.0")
    files = sorted(os.listdir(folder))
    assert any(f.startswith("flowgen_digits-train.array_record") for f in files)
    assert any(f.startswith("flowgen_digits-test.array_record") for f in files)
    assert os.listdir(data_dir) == [digits.NAME]  # no stray downloads/ folder


def test_data_source_reads_all_1797_images(data_dir):
    images, labels = digits.digits_images()
    sources = {s: tfds.data_source(digits.NAME, split=s, data_dir=data_dir, download=False) for s in ("train", "test")}
    assert (len(sources["train"]), len(sources["test"])) == (1500, 297)
    read = [sources[s][i] for s in ("train", "test") for i in range(len(sources[s]))]
    got_images = np.stack([r["image"] for r in read])
    got_labels = np.array([r["label"] for r in read])
    assert got_images.shape == (1797, 8, 8, 1) and got_images.dtype == np.uint8
    assert got_images.min() == 0 and got_images.max() == 255
    # records keep scikit-learn's order (last 297 = test), and pixels are round(v * 255 / 16)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert set(np.unique(got_labels)) == set(range(10))
    assert set(np.unique(got_images)) <= {round(v * 255 / 16) for v in range(17)}


def test_prepare_is_idempotent(data_dir):
    info = os.path.join(data_dir, digits.NAME, "1.0.0", "dataset_info.json")
    mtime = os.path.getmtime(info)
    start = time.perf_counter()
    assert digits.prepare_digits(data_dir) == os.path.dirname(info)
    assert time.perf_counter() - start < 1.0
    assert os.path.getmtime(info) == mtime


def test_pipeline_serves_digits_in_model_range(data_dir):
    images, labels = digits.digits_images()
    ds = pipeline.image_dataset(
        "flowgen_digits", "test", batch_size=64, data_dir=data_dir, seed=0, num_epochs=1, num_threads=2
    )
    batches = list(ds)
    assert len(batches) == 297 // 64
    for batch in batches:
        assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        assert batch["label"].dtype == batch["index"].dtype == np.int32
        record = 1500 + batch["index"]
        np.testing.assert_array_equal(batch["label"], labels[record])
        np.testing.assert_allclose(batch["image"], images[record] / 127.5 - 1.0, atol=1e-6)
    assert np.min([b["image"].min() for b in batches]) == -1.0
    assert np.max([b["image"].max() for b in batches]) == 1.0


def test_prepare_command_builds_digits_offline(tmp_path):
    folder = prepare.prepare("flowgen_digits", tmp_path)  # what `--mode=prepare` runs; no network needed
    assert folder == os.path.join(tmp_path, "flowgen_digits", "1.0.0")
    assert len(pipeline.open_source("flowgen_digits", "train", tmp_path)) == 1500
    assert prepare.prepare("moons", tmp_path) is None  # toy sets: nothing to prepare
    with pytest.raises(ValueError, match="cifar10"):
        prepare.prepare("cifar100", tmp_path)
