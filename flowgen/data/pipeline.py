"""Image datasets: ``tfds.data_source`` (ArrayRecord, no TensorFlow) + a grain pipeline with checkpointable state.

    it = iter(image_dataset("cifar10", "train", batch_size=128, data_dir=d, seed=0))
    batch = next(it)          # {"image": (128, 32, 32, 3) float32 in [-1, 1], "label": (128,) int32, "index": (128,)}
    state = it.get_state()    # a small JSON-serialisable dict; it.set_state(state) resumes exactly

The pipeline, in grain's ``MapDataset`` API (random access, so every step is a pure function of the record index):

    source -> decode (crop/resize, label, index; kept in memory for small splits) -> [flip, dequantise] -> [-1, 1]
           -> global shuffle (reseeded every epoch) -> this process's shard -> repeat(num_epochs)
           -> to_iter_dataset (reader threads) -> batch(drop_remainder)

- **Shuffling** is a global permutation of the split, a different one every epoch, derived from ``seed``.
- **Sharding**: epoch ``e``'s permutation is cut into ``shard_count`` strided shards of equal size
  ``N // shard_count`` (the ``< shard_count`` records left over are skipped that epoch, a different few every epoch
  when shuffling); process ``shard_index`` reads its own. Every process uses the same seed, so the shards are
  disjoint and together cover the epoch, and every process yields the same number of batches (no multi-host
  deadlock at the end of an epoch). ``batch_size`` is the per-process batch: the global batch is
  ``batch_size * shard_count``. Defaults: ``jax.process_index()`` / ``jax.process_count()``.
- **Randomness of augmentations** (flip, dequantisation) depends only on ``(seed, epoch, record)``, not on the
  shard layout, batch size or number of reader threads.
- **State**: ``DatasetIterator.get_state()`` is ``{"next_index": int}`` (records of this process's shard consumed)
  — JSON-serialisable, so it can go into an orbax checkpoint (e.g. with ``grain.checkpoint.CheckpointHandler``);
  ``set_state`` on a freshly built pipeline with the same arguments resumes exactly.
- **Offline**: always ``download=False``. A dataset not prepared in ``data_dir`` raises
  ``DatasetNotPreparedError`` (a ``FileNotFoundError``) in well under a second, naming the dataset, the folder it
  looked in and the command that prepares it (``flowgen.data.prepare.prepare``, run on a machine with internet; for
  ``flowgen_digits``, offline anywhere).

Batches are dicts of numpy arrays: ``image`` float32 (B, H, W, C); ``label`` int32 (B,) for labelled datasets;
``index`` int32 (B,), the record's position in the split (for debugging, deduplication and tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flowgen.data import digits

PREPARE_COMMAND = "python -m flowgen.main --mode=prepare --config.data.name={name} --config.data.data_dir={data_dir}"


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
    """One supported image dataset: where TFDS keeps it and what the pipeline makes of it.

    ``image_shape`` is the shape after preprocessing. ``center_crop``: side of the central square cropped before
    resizing to ``image_shape`` (None: images are used as stored and must already have ``image_shape``).
    ``random_flip``: whether horizontal flips are on by default (off for digits, which flipping would corrupt).
    """

    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int | None
    train_split: str = "train"
    eval_split: str = "test"
    center_crop: int | None = None
    random_flip: bool = False
    note: str = ""


#: Supported image datasets. Keys are the names configs use (``config.data.name``).
IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    "flowgen_digits": ImageDatasetSpec(digits.NAME, (8, 8, 1), 10, note="scikit-learn's digits; prepared offline"),
    "mnist": ImageDatasetSpec("mnist", (28, 28, 1), 10),
    "fashion_mnist": ImageDatasetSpec("fashion_mnist", (28, 28, 1), 10),
    "cifar10": ImageDatasetSpec("cifar10", (32, 32, 3), 10, random_flip=True),
    "celeb_a": ImageDatasetSpec(
        "celeb_a", (64, 64, 3), None, eval_split="validation", center_crop=140, random_flip=True,
        note="218x178 faces: central 140x140 crop, bicubic resize to 64x64 (as in score_sde / NCSN++)",
    ),
    "imagenet32": ImageDatasetSpec(
        "downsampled_imagenet/32x32", (32, 32, 3), None, eval_split="validation", random_flip=True
    ),
    "imagenet64": ImageDatasetSpec(
        "downsampled_imagenet/64x64", (64, 64, 3), None, eval_split="validation", random_flip=True
    ),
}


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not in ``data_dir`` as ArrayRecord. Carries ``dataset``, ``data_dir`` and ``command``."""

    def __init__(self, dataset: str, data_dir: str, command: str, detail: str = ""):
        self.dataset, self.data_dir, self.command = dataset, data_dir, command
        message = (
            f"Dataset {dataset!r} is not prepared (as ArrayRecord) in data_dir {data_dir!r}{detail}. "
            f"flowgen never downloads at run time. Prepare it with:\n    {command}\n"
        )
        if dataset == "flowgen_digits":
            message += "(works offline; or call flowgen.data.digits.prepare_digits(data_dir))."
        else:
            message += (
                "on a machine with internet access and TensorFlow installed (TFDS's builders encode images with "
                "it), then copy the folder into data_dir. Equivalent: "
                f"tfds build {IMAGE_DATASETS[dataset].tfds_name} --file_format=array_record --data_dir={data_dir}"
            )
        super().__init__(message)


def dataset_spec(name: str) -> ImageDatasetSpec:
    """The table entry for ``name``; ValueError listing the supported names otherwise."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; supported: {sorted(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[name]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """``data_dir`` or TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    return os.fspath(data_dir) if data_dir is not None else tfds.core.constants.get_default_data_dir()


def _prepared_formats(tfds_name: str, data_dir: str) -> list[str]:
    """File formats of the versions of ``tfds_name`` found in ``data_dir`` (empty if none is prepared)."""
    formats = []
    root = epath.Path(data_dir) / tfds_name            # data_dir may be gs://... (TFDS reads it there too)
    for info_file in sorted(root.glob("*/dataset_info.json")) if root.exists() else []:
        try:
            formats.append(json.loads(info_file.read_text()).get("fileFormat", "tfrecord"))
        except (OSError, ValueError):
            formats.append("unreadable")
    return formats


#: Records per split of a mocked dataset (``mock=True``): enough for any smoke run's batches and sample metrics.
MOCK_EXAMPLES = 256


def open_source(name: str, split: str, data_dir: str | os.PathLike | None = None, mock: bool = False):
    """``tfds.data_source`` for a supported dataset, ``download=False``; a clear error if it is not prepared.

    ``mock``: TFDS's mock data instead (``tfds.testing.mock_data``: ``MOCK_EXAMPLES`` random records per split with
    the dataset's real features, generated from the record index), so smoke runs work without the files."""
    spec = dataset_spec(name)
    if mock:
        with digits.quiet_tfds(), tfds.testing.mock_data(num_examples=MOCK_EXAMPLES,
                                                           policy=tfds.testing.MockPolicy.USE_CODE):
            return tfds.data_source(spec.tfds_name, split=split, download=False)
    data_dir = resolve_data_dir(data_dir)
    try:
        return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds's errors for missing data are misleading (e.g. 'TFRECORD not supported')
        formats = _prepared_formats(spec.tfds_name, data_dir)
        if "array_record" in formats:
            raise  # it is there: the original error (e.g. an unknown split) is the right one
        command = PREPARE_COMMAND.format(name=name, data_dir=data_dir)
        detail = f" (found only the formats {formats}; the pipeline needs array_record)" if formats else ""
        raise DatasetNotPreparedError(name, data_dir, command, detail) from e


# --- per-record transforms (pure numpy) --------------------------------------------------------------------------


def center_crop_resize(image: np.ndarray, crop: int, size: tuple[int, int]) -> np.ndarray:
    """Central ``crop``×``crop`` square of a uint8 (H, W, C) image, bicubically resized (antialiased) to ``size``."""
    import PIL.Image

    h, w = image.shape[:2]
    if crop > min(h, w):
        raise ValueError(f"center crop {crop} is larger than the image {image.shape}")
    top, left = (h - crop) // 2, (w - crop) // 2
    patch = image[top : top + crop, left : left + crop]
    if patch.shape[:2] == tuple(size):
        return patch
    squeeze = patch.shape[-1] == 1
    pil = PIL.Image.fromarray(patch[..., 0] if squeeze else patch)
    out = np.asarray(pil.resize((size[1], size[0]), resample=PIL.Image.Resampling.BICUBIC))
    return out[..., None] if squeeze else out


def to_model_range(image: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]: ``p/255·2 − 1``; with uniform dequantisation noise u ∈ [0, 1),
    ``(p + u)/256·2 − 1`` (a continuous density on [-1, 1), as in flows' bits-per-dim evaluations)."""
    image = image.astype(np.float32)
    if noise is None:
        return image * np.float32(2.0 / 255.0) - np.float32(1.0)
    return (image + noise.astype(np.float32)) * np.float32(2.0 / 256.0) - np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class _Decode:
    """Record -> {"image": uint8 (H, W, C) in the spec's shape, "label"?, "index"}."""

    spec: ImageDatasetSpec
    num_records: int

    def __call__(self, index: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self.spec.center_crop is not None:
            image = center_crop_resize(image, self.spec.center_crop, self.spec.image_shape[:2])
        if image.shape != self.spec.image_shape:
            raise ValueError(f"{self.spec.tfds_name}: image of shape {image.shape}; expected {self.spec.image_shape}")
        out = {"image": image, "index": np.int32(index % self.num_records)}
        if self.spec.num_classes is not None:
            out["label"] = np.int32(record["label"])
        return out


@dataclasses.dataclass(frozen=True)
class _Augment:
    """Random horizontal flip and/or uniform dequantisation, then scaling to [-1, 1]."""

    random_flip: bool
    dequantize: bool

    def __call__(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = element["image"]
        if self.random_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        noise = rng.random(image.shape, dtype=np.float32) if self.dequantize else None
        return {**element, "image": to_model_range(image, noise)}


class _CachedDecode:
    """``_Decode`` that reads and decodes each record once, on first use, and keeps it in memory: epochs after the
    first cost no reading or image decoding. Mapped over ``range(num_records)`` (the record numbers) in place of the
    source, so the pipeline has the same structure, hence the same shuffles, and yields the same batches as without
    the cache. Reading and decoding is CPU time taken from the training step on the same cores; from memory a batch
    of digits measured several times cheaper (benchmarks/README.md, "Measurements behind the loop's design")."""

    def __init__(self, source, decode: _Decode):
        self._source, self._decode = source, decode
        n, spec = len(source), decode.spec
        self._images = np.empty((n, *spec.image_shape), np.uint8)
        self._labels = np.empty((n,), np.int32)
        self._done = np.zeros((n,), bool)   # set after the row is written (reader threads may share the cache)

    def __call__(self, index: int, record_number: int) -> dict[str, np.ndarray]:
        if not self._done[record_number]:
            record = self._decode(index, self._source[record_number])
            self._images[record_number] = record["image"]
            if "label" in record:
                self._labels[record_number] = record["label"]
            self._done[record_number] = True
        out = {"image": self._images[record_number].copy(), "index": np.int32(index % self._decode.num_records)}
        if self._decode.spec.num_classes is not None:
            out["label"] = self._labels[record_number]
        return out


#: ``image_dataset(cache=None)`` keeps decoded records in memory when the whole split takes at most this many bytes.
DECODED_CACHE_MAX_BYTES = 2**30


def _scale(element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**element, "image": to_model_range(element["image"])}


# --- the pipeline --------------------------------------------------------------------------------------------------


def image_dataset(
    name: str,
    split: str | None = None,
    *,
    batch_size: int,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    random_flip: bool | None = None,
    dequantize: bool = False,
    drop_remainder: bool = True,
    num_threads: int | None = None,
    prefetch_buffer_size: int | None = None,
    mock: bool = False,
    cache: bool | None = None,
) -> grain.IterDataset:
    """The batched grain dataset for one process; ``iter()`` of it gives a checkpointable ``DatasetIterator``.

    Args:
      name: a key of ``IMAGE_DATASETS``. split: a TFDS split (``"train"``, ``"test[:10%]"``, ...); default: the
        dataset's train split.
      batch_size: per-process batch size. drop_remainder: drop a last, smaller batch (at the very end only).
      seed: shuffling and augmentation seed, in [0, 2**32); the same on every process.
      shuffle: a global permutation per epoch (off: records in stored order, e.g. for evaluation).
      num_epochs: passes over the (shard of the) split; None repeats forever.
      shard_index, shard_count: this process's shard; default ``jax.process_index()`` / ``jax.process_count()``.
      random_flip: horizontal flips with probability 1/2; None: the dataset's default (``ImageDatasetSpec``).
      dequantize: add uniform noise in [0, 1) to the integer pixels before scaling (see ``to_model_range``).
      num_threads, prefetch_buffer_size: grain ``ReadOptions`` for reading and preprocessing records. Default: no
        reader threads on machines of up to 4 cores (the training loop already reads ahead in a background thread,
        and grain's threads compete with the step for the cores: on an idle 2-core machine 16 threads read the digits
        slower than none, see benchmarks/README.md), else min(16, cores) threads with a 500-record buffer.
      mock: read TFDS's mock data instead of the prepared files (see ``open_source``).
      cache: keep every decoded record in memory after its first use (uint8; the same batches either way). None:
        when the split's decoded images take at most ``DECODED_CACHE_MAX_BYTES`` (1 GiB: CIFAR-10 and MNIST are
        cached, downsampled ImageNet is not).
    """
    spec = dataset_spec(name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32); got {seed}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1; got {num_epochs}")
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count; got {shard_index}, {shard_count}")
    random_flip = spec.random_flip if random_flip is None else random_flip

    source = open_source(name, split or spec.train_split, data_dir, mock=mock)
    num_records = len(source)
    per_shard = num_records // shard_count
    if per_shard == 0:
        raise ValueError(f"{name} split {split!r} has {num_records} records: too few for {shard_count} shards")

    decode = _Decode(spec, num_records)
    if cache is None:
        cache = num_records * int(np.prod(spec.image_shape)) <= DECODED_CACHE_MAX_BYTES
    if cache:
        ds = grain.MapDataset.source(range(num_records)).seed(seed).map_with_index(_CachedDecode(source, decode))
    else:
        ds = grain.MapDataset.source(source).seed(seed).map_with_index(decode)
    if random_flip or dequantize:
        ds = ds.random_map(_Augment(random_flip, dequantize))
    else:
        ds = ds.map(_scale)
    if shuffle:
        ds = ds.shuffle()
    ds = ds[shard_index : per_shard * shard_count : shard_count]
    ds = ds.repeat(num_epochs)
    cores = os.cpu_count() or 1
    if num_threads is None:
        num_threads = 0 if cores <= 4 else min(16, cores)
    if prefetch_buffer_size is None:
        prefetch_buffer_size = 500 if num_threads else 0
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)
