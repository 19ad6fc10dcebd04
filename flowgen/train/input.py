"""Input pipelines for training, behind one small interface:

    data.element_shape   shape of one example, e.g. (2,) or (32, 32, 3)
    data.num_classes     number of classes (0 if unlabelled)
    data.next()          this process's share of the next global batch: {"x": (B_local, ...), "label": (B_local,)}
    data.get_state()     JSON-serialisable iterator state (checkpointed);  data.set_state(state)
    data.reference(n, seed)  n examples for quality metrics (from the data, not the model)

Toy sets are stateless in (seed, step); image datasets go through ``flowgen.data`` (TFDS ArrayRecord + grain).
"""

from __future__ import annotations

import jax
import numpy as np

from flowgen.data import toy


class ToyInput:
    def __init__(self, name: str, seed: int, batch_size: int, kwargs: dict):
        self.name, self.seed, self.batch_size, self.kwargs = name, seed, batch_size, kwargs
        self.labelled = name in toy.MIXTURE_DATASETS
        self.num_classes = toy.toy_mixture(name, **kwargs).num_components if self.labelled else 0
        self.element_shape = (2,)
        self._sample = toy.toy_sampler(name, batch_size, return_labels=self.labelled, **kwargs)
        self.step = 0
        n_proc = jax.process_count()
        if batch_size % n_proc:
            raise ValueError(f"data.batch_size={batch_size} is not divisible by the number of processes ({n_proc})")
        local = batch_size // n_proc
        self._local = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

    def next(self) -> dict:
        out = self._sample(self.seed, self.step)
        self.step += 1
        x, labels = out if self.labelled else (out, None)
        batch = {"x": np.asarray(x)[self._local]}
        if labels is not None:
            batch["label"] = np.asarray(labels, np.int32)[self._local]
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return np.asarray(toy.toy_batch(self.name, seed, 0, n, **self.kwargs))


def make_input(data_cfg, seed: int):
    name = data_cfg.name
    kwargs = data_cfg.get("kwargs", {})
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    if name in toy.TOY_DATASETS:
        return ToyInput(name, seed, data_cfg.batch_size, kwargs)
    from flowgen.train.image_input import ImageInput

    return ImageInput(data_cfg, seed)
