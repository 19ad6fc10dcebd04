"""The TFDS + grain image pipeline: deterministic, sharded, exactly resumable, offline-safe.

Most tests run on ``flowgen_digits`` built into a temporary data_dir (a real ArrayRecord dataset, written by the
TFDS builder in ``flowgen.data.digits``). The catalogue datasets (mnist, cifar10, celeb_a) are checked under
``tfds.testing.mock_data``, which does mock ``tfds.data_source`` (random records of the right features).
"""

import json
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flowgen.data import digits, pipeline

N_TEST = 297  # records in flowgen_digits' test split


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    digits.prepare_digits(path)
    return str(path)


def make(data_dir, **kwargs):
    kwargs = {"split": "test", "batch_size": 33, "data_dir": data_dir, "seed": 0, "num_threads": 2,
              "prefetch_buffer_size": 64, "shard_index": 0, "shard_count": 1, **kwargs}
    return pipeline.image_dataset("flowgen_digits", **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_deterministic_given_seed_and_reshuffled_every_epoch(data_dir):
    first = list(make(data_dir, num_epochs=2, batch_size=99))
    assert_same(first, list(make(data_dir, num_epochs=2, batch_size=99)))
    assert len(first) == 6
    epoch1 = np.concatenate([b["index"] for b in first[:3]])
    epoch2 = np.concatenate([b["index"] for b in first[3:]])
    assert sorted(epoch1) == sorted(epoch2) == list(range(N_TEST))  # each epoch is a permutation
    assert not np.array_equal(epoch1, epoch2)  # ... and a different one
    assert not np.array_equal(epoch1, np.arange(N_TEST))
    other_seed = np.concatenate([b["index"] for b in list(make(data_dir, num_epochs=1, batch_size=99, seed=1))])
    assert not np.array_equal(epoch1, other_seed)
    unshuffled = np.concatenate([b["index"] for b in make(data_dir, num_epochs=1, batch_size=99, shuffle=False)])
    np.testing.assert_array_equal(unshuffled, np.arange(N_TEST))


@pytest.mark.parametrize(("shard_count", "batch_size"), [(2, 37), (3, 33)])
def test_shards_are_disjoint_and_cover_the_epoch(data_dir, shard_count, batch_size):
    per_shard = N_TEST // shard_count  # 148 = 4 * 37, 99 = 3 * 33
    shards = []
    for shard_index in range(shard_count):
        batches = list(make(data_dir, num_epochs=1, batch_size=batch_size, shard_index=shard_index,
                            shard_count=shard_count))
        assert len(batches) == per_shard // batch_size  # every process yields the same number of batches
        shards.append(np.concatenate([b["index"] for b in batches]))
    together = np.concatenate(shards)
    assert len(np.unique(together)) == len(together)  # disjoint
    assert len(together) == per_shard * shard_count > N_TEST - shard_count  # cover all but the < shard_count left
    assert set(together) <= set(range(N_TEST))


def test_augmentation_does_not_depend_on_the_shard_layout(data_dir):
    options = {"num_epochs": 1, "random_flip": True, "dequantize": True}
    whole = {}
    for b in make(data_dir, batch_size=N_TEST, **options):
        whole.update(zip(b["index"].tolist(), b["image"], strict=True))
    for shard_index in range(3):
        for b in make(data_dir, batch_size=N_TEST // 3, shard_index=shard_index, shard_count=3, **options):
            for i, image in zip(b["index"].tolist(), b["image"], strict=True):
                np.testing.assert_array_equal(image, whole[i])


def test_restoring_state_mid_epoch_gives_the_same_next_batches(data_dir):
    options = {"num_epochs": None, "random_flip": True, "dequantize": True}
    it = iter(make(data_dir, **options))
    take(it, 5)  # 165 of 297 records: mid-epoch
    state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable, as an orbax checkpoint needs
    expected = take(it, 8)  # runs into the second epoch
    restored = iter(make(data_dir, **options))  # a fresh pipeline, as after a restart
    restored.set_state(state)
    assert_same(take(restored, 8), expected)
    it.set_state(state)  # the same iterator can also rewind
    assert_same(take(it, 8), expected)


@pytest.mark.parametrize("num_threads", [0, 2])
def test_decoded_cache_gives_the_same_batches_and_resumes_the_same(data_dir, num_threads):
    """Keeping decoded records in memory changes nothing a run sees: the same batches over several epochs (with
    flips and dequantisation, which are keyed by record), and the same after restoring a mid-epoch state."""
    options = {"num_epochs": None, "random_flip": True, "dequantize": True, "num_threads": num_threads}
    plain = take(iter(make(data_dir, cache=False, **options)), 20)   # 660 records: 2.2 epochs
    cached_it = iter(make(data_dir, cache=True, **options))
    assert_same(take(cached_it, 20), plain)
    state = cached_it.get_state()
    expected = take(iter(make(data_dir, cache=False, **options)), 26)[20:]
    assert_same(take(cached_it, 6), expected)
    restored = iter(make(data_dir, cache=True, **options))
    restored.set_state(state)
    assert_same(take(restored, 6), expected)


def test_small_splits_are_cached_by_default(data_dir, monkeypatch):
    reads = []
    source = pipeline.open_source("flowgen_digits", "test", data_dir)

    class Counting:
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            reads.append(i)
            return source[i]

    monkeypatch.setattr(pipeline, "open_source", lambda *a, **k: Counting())
    list(make(data_dir, num_epochs=3, batch_size=99, num_threads=0))
    assert sorted(reads) == list(range(N_TEST))        # each record read once in three epochs
    monkeypatch.setattr(pipeline, "DECODED_CACHE_MAX_BYTES", N_TEST * 64 - 1)   # one byte short: not cached
    reads.clear()
    list(make(data_dir, num_epochs=3, batch_size=99, num_threads=0))
    assert len(reads) == 3 * N_TEST


def test_flips_mirror_about_half_the_images(data_dir):
    plain = list(make(data_dir, num_epochs=1, batch_size=N_TEST, random_flip=False))[0]
    flipped = list(make(data_dir, num_epochs=1, batch_size=N_TEST, random_flip=True))[0]
    np.testing.assert_array_equal(plain["index"], flipped["index"])  # flips do not change the order
    same = np.all(flipped["image"] == plain["image"], axis=(1, 2, 3))
    mirrored = np.all(flipped["image"] == plain["image"][:, :, ::-1], axis=(1, 2, 3))
    symmetric = np.all(plain["image"] == plain["image"][:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 0.3 < np.mean(mirrored & ~symmetric) < 0.7


def test_dequantisation_adds_uniform_noise_within_each_pixel_bin(data_dir):
    plain = list(make(data_dir, num_epochs=1, batch_size=N_TEST))[0]
    noisy = list(make(data_dir, num_epochs=1, batch_size=N_TEST, dequantize=True))[0]
    np.testing.assert_array_equal(plain["index"], noisy["index"])
    pixels = np.round((plain["image"] + 1.0) * 127.5)  # the integer pixel values
    scaled = (noisy["image"].astype(np.float64) + 1.0) * 128.0  # pixel + u, u in [0, 1)
    assert np.all(noisy["image"] >= -1.0) and np.all(noisy["image"] < 1.0)
    u = scaled - pixels
    assert np.all(u >= -1e-4) and np.all(u < 1.0 + 1e-4)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert len(np.unique(noisy["image"])) > 10_000


@pytest.mark.parametrize(
    ("name", "shape", "labelled"),
    [("mnist", (28, 28, 1), True), ("cifar10", (32, 32, 3), True), ("celeb_a", (64, 64, 3), False)],
)
def test_catalogue_datasets_under_tfds_mock_data(tmp_path, name, shape, labelled):
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = pipeline.image_dataset(name, "train", batch_size=4, data_dir=tmp_path, num_epochs=1, num_threads=1,
                                    shard_index=0, shard_count=1)
        batches = list(ds)
    assert len(batches) == 3
    assert pipeline.IMAGE_DATASETS[name].image_shape == shape
    for b in batches:
        assert b["image"].shape == (4, *shape) and b["image"].dtype == np.float32
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert ("label" in b) == labelled
    assert sorted(np.concatenate([b["index"] for b in batches])) == list(range(12))


def test_center_crop_resize():
    image = np.full((218, 178, 3), 77, np.uint8)
    out = pipeline.center_crop_resize(image, 140, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and np.all(out == 77)
    ramp = np.tile(np.arange(178, dtype=np.uint8)[None, :, None], (218, 1, 1))
    out = pipeline.center_crop_resize(ramp, 140, (64, 64))[..., 0]
    assert out.shape == (64, 64) and np.all(np.diff(out[0].astype(int)) >= 0)
    assert abs(int(out[0, 0]) - 19) <= 2 and abs(int(out[0, -1]) - 158) <= 2  # columns 19..158 kept


@pytest.mark.parametrize("name", ["cifar10", "flowgen_digits", "imagenet64"])
def test_missing_dataset_fails_fast_with_a_clear_error(tmp_path, name):
    data_dir = str(tmp_path / "empty")
    start = time.perf_counter()
    with pytest.raises(pipeline.DatasetNotPreparedError) as info:
        pipeline.image_dataset(name, batch_size=8, data_dir=data_dir, shard_index=0, shard_count=1)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert name in message and data_dir in message
    assert f"python -m flowgen.main --mode=prepare --config.data.name={name}" in message
    if name == "flowgen_digits":
        assert "prepare_digits" in message and "offline" in message
    assert not os.path.exists(data_dir)  # looking did not create anything


def test_dataset_in_the_wrong_format_is_reported(tmp_path):
    folder = tmp_path / "mnist" / "3.0.1"
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text(json.dumps({"name": "mnist", "fileFormat": "tfrecord"}))
    with pytest.raises(pipeline.DatasetNotPreparedError, match="array_record"):
        pipeline.image_dataset("mnist", batch_size=8, data_dir=tmp_path, shard_index=0, shard_count=1)


def test_other_errors(data_dir):
    with pytest.raises(ValueError, match="cifar10"):  # lists the supported names
        pipeline.image_dataset("cifar100", batch_size=8, data_dir=data_dir)
    with pytest.raises(ValueError, match="[Ss]plit") as info:  # prepared, so tfds's own error is the right one
        make(data_dir, split="validation")
    assert not isinstance(info.value, pipeline.DatasetNotPreparedError)
    for bad in ({"batch_size": 0}, {"shard_index": 2, "shard_count": 2}, {"seed": -1}, {"num_epochs": 0}):
        with pytest.raises(ValueError):
            make(data_dir, **bad)
    with pytest.raises(ValueError, match="shards"):
        make(data_dir, shard_index=0, shard_count=N_TEST + 1)
