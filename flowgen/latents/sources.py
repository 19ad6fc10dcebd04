"""Image datasets a latent dataset can be encoded from: every ``flowgen.data.pipeline.IMAGE_DATASETS`` entry and
ImageNet (ILSVRC-2012, TFDS ``imagenet2012``), read by record number through ``tfds.data_source`` (ArrayRecord,
``download=False``) or TFDS's mock data (``mock``)."""

from __future__ import annotations

import dataclasses

#: Datasets encodable besides ``IMAGE_DATASETS``: name → (TFDS name, number of classes). ImageNet's images have many
#: sizes, so it is only read for encoding (with the ``adm`` protocol), never as a pixel training set.
EXTRA = {"imagenet2012": ("imagenet2012", 1000)}


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """``len(source)`` records; ``source.image(i)`` uint8 (H, W, C); ``source.label(i)`` int or None."""

    name: str
    tfds_name: str
    split: str
    num_classes: int
    records: object

    def __len__(self) -> int:
        return len(self.records)

    def item(self, i: int):
        record = self.records[i]
        label = int(record["label"]) if self.num_classes else None
        return record["image"], label


def dataset_names() -> list[str]:
    from flowgen.data import pipeline

    return sorted([*pipeline.IMAGE_DATASETS, *EXTRA])


def check_dataset(name: str) -> None:
    if name not in dataset_names():
        raise ValueError(f"dataset={name!r} is not one of: {', '.join(dataset_names())}")


def open_images(name: str, split: str, data_dir: str | None = None, mock: bool = False,
                mock_examples: int = 64) -> ImageSource:
    """The records of ``name``/``split`` (embedded digits: built offline on first use). ``mock``: TFDS's mock data
    (``mock_examples`` random records of the dataset's real features)."""
    import tensorflow_datasets as tfds

    from flowgen.data import digits, pipeline

    check_dataset(name)
    if name in EXTRA:
        tfds_name, num_classes = EXTRA[name]
        if mock:
            with digits.quiet_tfds(), tfds.testing.mock_data(num_examples=mock_examples,
                                                               policy=tfds.testing.MockPolicy.USE_CODE):
                records = tfds.data_source(tfds_name, split=split, download=False)
        else:
            data_dir = pipeline.resolve_data_dir(data_dir)
            try:
                records = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
            except Exception as e:   # tfds's own message for a missing dataset is misleading
                raise FileNotFoundError(
                    f"{tfds_name} is not prepared as ArrayRecord in {data_dir}: ImageNet cannot be downloaded by "
                    "TFDS; put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual "
                    f"and run `tfds build {tfds_name} --file_format=array_record --data_dir={data_dir}` "
                    "(needs TensorFlow), then copy the folder here") from e
        return ImageSource(name, tfds_name, split, num_classes, records)
    spec = pipeline.dataset_spec(name)
    if mock:
        with digits.quiet_tfds(), tfds.testing.mock_data(num_examples=mock_examples,
                                                           policy=tfds.testing.MockPolicy.USE_CODE):
            records = tfds.data_source(spec.tfds_name, split=split, download=False)
    else:
        try:
            records = pipeline.open_source(name, split, data_dir)
        except pipeline.DatasetNotPreparedError:
            if spec.tfds_name != digits.NAME:
                raise
            digits.prepare_digits(pipeline.resolve_data_dir(data_dir))     # offline, about a second
            records = pipeline.open_source(name, split, data_dir)
    return ImageSource(name, spec.tfds_name, split, spec.num_classes or 0, records)

