"""Image datasets for training: ``flowgen.data.pipeline`` (TFDS ArrayRecord + grain) behind the ``input.py``
interface. Each process reads its own shard (``batch_size / process_count`` examples per step); the grain iterator
state goes into every checkpoint, so a resumed run continues with exactly the next batch."""

from __future__ import annotations

import jax
import numpy as np

from flowgen.data import digits, pipeline


class ImageInput:
    on_device = False   # host batches: the loop feeds them through input.DevicePrefetcher

    def __init__(self, data_cfg, seed: int):
        self.name = data_cfg.name
        spec = pipeline.dataset_spec(self.name)
        n_proc = jax.process_count()
        if data_cfg.batch_size % n_proc:
            raise ValueError(f"data.batch_size={data_cfg.batch_size} is not divisible by the number of processes "
                             f"({n_proc})")
        self.element_shape = tuple(spec.image_shape)
        self.num_classes = spec.num_classes or 0
        self._kwargs = dict(data_dir=data_cfg.data_dir or None, seed=seed, dequantize=data_cfg.dequantize,
                            random_flip=bool(data_cfg.random_flip), mock=bool(data_cfg.get("mock", False)))
        try:
            self._dataset = pipeline.image_dataset(self.name, batch_size=data_cfg.batch_size // n_proc,
                                                   **self._kwargs)
        except pipeline.DatasetNotPreparedError:
            if spec.tfds_name != digits.NAME:
                raise
            # The embedded dataset needs no download: build it on first use (about a second).
            digits.prepare_digits(pipeline.resolve_data_dir(self._kwargs["data_dir"]))
            self._dataset = pipeline.image_dataset(self.name, batch_size=data_cfg.batch_size // n_proc,
                                                   **self._kwargs)
        self._iter = iter(self._dataset)
        self._reference = None

    def next(self) -> dict:
        batch = next(self._iter)
        out = {"x": np.asarray(batch["image"], np.float32)}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"], np.int32)
        return out

    def get_state(self) -> dict:
        return self._iter.get_state()

    def set_state(self, state: dict) -> None:
        self._iter.set_state(state)

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        """n training images in stored order (no augmentation), for sample-quality numbers."""
        if self._reference is None or len(self._reference) < n:
            ds = pipeline.image_dataset(self.name, batch_size=n, data_dir=self._kwargs["data_dir"], seed=seed,
                                        mock=self._kwargs["mock"],
                                        shuffle=False, num_epochs=1, drop_remainder=False, random_flip=False,
                                        shard_index=0, shard_count=1)
            self._reference = np.asarray(next(iter(ds))["image"], np.float32)
        return self._reference[:n]
