"""scikit-learn's 8×8 handwritten digits as a TFDS ArrayRecord dataset: the embedded default image dataset.

The 1,797 images of the UCI "Optical Recognition of Handwritten Digits" test set ship inside scikit-learn, so this
dataset is real data that can be prepared anywhere, offline, in a few milliseconds. It is written once by a TFDS
builder into ``data_dir`` with ``file_format="array_record"`` and then read by the same ``tfds.data_source`` +
grain pipeline as every other image dataset (``flowgen.data.pipeline``):

    prepare_digits(data_dir)                     # idempotent
    source = tfds.data_source("flowgen_digits", split="train", data_dir=data_dir, download=False)

Features: ``image`` (8, 8, 1) uint8, scikit-learn's 0..16 intensities scaled to 0..255 (``round(v·255/16)``) and
stored PNG-encoded like every TFDS image dataset; ``label`` ClassLabel(10). Splits are deterministic and keep
scikit-learn's order: ``train`` = images 0..1499, ``test`` = the last 297 (1500..1796).

Encoding the PNGs here uses Pillow, so no TensorFlow is needed (TFDS would otherwise encode with TensorFlow).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

NAME = "flowgen_digits"
NUM_IMAGES = 1797
NUM_TEST = 297
log = logging.getLogger("flowgen")
SPLITS = {"train": (0, NUM_IMAGES - NUM_TEST), "test": (NUM_IMAGES - NUM_TEST, NUM_IMAGES)}


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in scikit-learn's order: images (N, 8, 8, 1) uint8 in 0..255 and labels (N,) int64."""
    from sklearn.datasets import load_digits  # scikit-learn is needed only to prepare the dataset

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def _png(image: np.ndarray) -> bytes:
    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(image[..., 0]).save(buffer, format="png")  # a 2-D uint8 array is a greyscale ("L") image
    return buffer.getvalue()


class FlowgenDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for scikit-learn's 8×8 digits (registered as ``flowgen_digits``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn's load_digits, scaled to 0..255; last 297 images are the test split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The 8x8 handwritten digits shipped with scikit-learn (sklearn.datasets.load_digits).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records keep scikit-learn's order: record i of "test" is digit 1500 + i
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            citation=(
                "Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten Digits. UCI ML Repository."
            ),
        )

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared ..." to stdout for every
    # builder; nothing is downloaded here, so prepare_digits says what it builds where instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(start, stop) for split, (start, stop) in SPLITS.items()}

    def _generate_examples(self, start: int, stop: int):
        images, labels = digits_images()
        for i in range(start, stop):
            yield i, {"image": _png(images[i]), "label": int(labels[i])}


def prepare_digits(data_dir: str | os.PathLike) -> str:
    """Write ``flowgen_digits`` into ``data_dir`` as ArrayRecord (no-op if already there); returns its folder.

    On several hosts sharing one ``data_dir``, call it on one process (then sync), not on all at once.
    """
    with quiet_tfds():
        builder = FlowgenDigits(data_dir=os.fspath(data_dir), file_format="array_record")
        prepared = builder.is_prepared()
    if not prepared:
        log.info("building %s (the %d 8x8 digits shipped with scikit-learn; offline, no download) into %s",
                 NAME, NUM_IMAGES, builder.data_dir)
        with quiet_tfds(), tempfile.TemporaryDirectory() as download_dir:  # no empty downloads/ folder in data_dir
            builder.download_and_prepare(download_dir=download_dir)
    return os.fspath(builder.data_dir)


@contextlib.contextmanager
def quiet_tfds():
    """Without TFDS's progress bars and its absl warnings (e.g. "Variant folder ... has no dataset_info.json", said
    of the folder being built)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl_logger = logging.getLogger("absl")
    level, bars = absl_logger.level, tqdm_utils._active  # noqa: SLF001 - TFDS has no getter for it
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)
