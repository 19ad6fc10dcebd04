"""Input pipelines for training, behind one small interface:

    data.element_shape   shape of one example, e.g. (2,) or (32, 32, 3)
    data.num_classes     number of classes (0 if unlabelled)
    data.on_device       True: ``data.device_batch(step)`` makes global batch ``step`` inside the compiled step
                         False: ``data.next()`` gives this process's share of the next global batch (host numpy)
    data.get_state()     JSON-serialisable iterator state (checkpointed);  data.set_state(state)
    data.reference(n, seed)  n examples for quality metrics (from the data, not the model)

Text-conditioned inputs (``flowgen.train.text_input``) add ``context`` and ``pooled`` caption embeddings to every
batch. Toy sets are a pure function of (seed, step), so they are drawn on the device inside the training program: no
host work and no transfer per step, and a resumed run sees exactly the same batches. So are pairs files (reflow) up
to ``PAIRS_DEVICE_MAX_MB``; larger ones are memory-mapped and fed from the host, the same rows by the same rule.
Image datasets go through ``flowgen.data`` (TFDS ArrayRecord + grain) on the host; ``DevicePrefetcher`` puts host
batches on the devices ahead of use from a background thread, so a step never waits for reading, stacking or the
transfer.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flowgen.data import toy


class StepState:
    """The state of an input whose batches are a pure function of the step: ``{"step": n}`` (checkpointed)."""

    step: int = 0

    def advance(self, num_steps: int) -> None:
        self.step += num_steps

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


class ToyInput(StepState):
    on_device = True

    def __init__(self, name: str, seed: int, batch_size: int, kwargs: dict):
        self.name, self.seed, self.batch_size, self.kwargs = name, seed, batch_size, kwargs
        self.labelled = name in toy.MIXTURE_DATASETS
        self.num_classes = toy.toy_mixture(name, **kwargs).num_components if self.labelled else 0
        self.element_shape = (2,)
        self.step = 0

    def device_batch(self, step) -> dict:
        """Global batch number ``step`` (a traced int32 scalar) as ``{"x": (B, 2)[, "label": (B,)]}``; the same
        values as ``flowgen.data.toy.toy_batch(name, seed, step, B)``."""
        out = toy.toy_batch(self.name, self.seed, step, self.batch_size, return_labels=self.labelled, **self.kwargs)
        if not self.labelled:
            return {"x": out}
        return {"x": out[0], "label": out[1].astype(np.int32)}

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return np.asarray(toy.toy_batch(self.name, seed, 0, n, **self.kwargs))


#: Pairs sets up to this many MiB (x_data + noise + labels) are held on the devices (``PairsInput``); larger ones are
#: fed from the host (``HostPairsInput``). Option ``data.kwargs.device_max_mb``; 0 feeds every set from the host.
PAIRS_DEVICE_MAX_MB = 64.0


def pair_indices(seed: int, step, batch_size: int, num_pairs: int):
    """The rows of global pairs batch ``step``: ``batch_size`` uniform draws with replacement in [0, num_pairs) by the
    key ``fold_in(key(seed), step)`` (threefry: the same integers on any backend, traced or not)."""
    return jax.random.randint(jax.random.fold_in(jax.random.key(seed), step), (batch_size,), 0, num_pairs)


def _pairs_reference(x, n: int, seed: int) -> np.ndarray:
    """n pairs' x_data drawn without replacement by ``seed`` (the same rows for both pairs inputs)."""
    return np.asarray(x[np.random.default_rng(seed).permutation(len(x))[:n]], np.float32)


class PairsInput(StepState):
    """A pairs file (``flowgen.data.pairs``) held on the devices: batch ``step`` is the rows ``pair_indices(seed,
    step, B, N)``, a pure function of the step like the toy sets (no host work per step; exact resume). For sets up
    to ``PAIRS_DEVICE_MAX_MB`` (they are compiled into the training program as constants)."""

    on_device = True

    def __init__(self, file: str, seed: int, batch_size: int):
        from flowgen.data.pairs import load_pairs

        arrays = load_pairs(file)
        self.seed, self.batch_size = seed, batch_size
        self._x = np.asarray(arrays["x_data"], np.float32)
        self._noise = np.asarray(arrays["noise"], np.float32)
        self._label = np.asarray(arrays["label"], np.int32) if "label" in arrays else None
        self.element_shape = tuple(self._x.shape[1:])
        self.num_classes = int(self._label.max()) + 1 if self._label is not None else 0
        self.step = 0

    def device_batch(self, step) -> dict:
        idx = pair_indices(self.seed, step, self.batch_size, len(self._x))
        out = {"x": jnp.asarray(self._x)[idx], "noise": jnp.asarray(self._noise)[idx]}
        if self._label is not None:
            out["label"] = jnp.asarray(self._label)[idx]
        return out

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return _pairs_reference(self._x, n, seed)


def host_share(batch_size: int, shard_index: int | None = None, shard_count: int | None = None) -> slice:
    """This process's rows of a global batch, [i·B/P, (i+1)·B/P) for process i of P (default: this JAX process of
    all); ValueError if B does not split evenly."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count or batch_size % shard_count:
        raise ValueError(f"data.batch_size={batch_size} must split evenly over {shard_count} processes "
                         f"(shard {shard_index})")
    local = batch_size // shard_count
    return slice(shard_index * local, (shard_index + 1) * local)


def host_program(fn):
    """``fn(step, ...)`` (a jittable function of int32 scalars) compiled for the host CPU, called with Python ints
    and returning numpy: host inputs draw their per-step randomness with it, the same bits on any backend."""
    try:
        device = jax.devices("cpu")[0]
    except RuntimeError:                  # no CPU backend (JAX_PLATFORMS without cpu): the default device
        device = None
    compiled = jax.jit(fn)

    def call(*ints: int):
        args = [jnp.asarray(i, jnp.int32) if device is None else jax.device_put(np.int32(i), device) for i in ints]
        return jax.tree.map(np.asarray, compiled(*args))

    return call


class HostPairsInput(StepState):
    """A pairs file too large for the devices, memory-mapped on the host (``flowgen.data.pairs.open_pairs``): global
    batch ``step`` is the same rows ``pair_indices(seed, step, B, N)`` as ``PairsInput``'s (computed on the host CPU),
    and this process reads only its share, rows [i·B/P, (i+1)·B/P) for process i of P (``shard_index``,
    ``shard_count``; default: this JAX process of all). The state is the step, so a resumed run reads exactly the
    batches an uninterrupted one does; ``DevicePrefetcher`` reads ahead in a background thread."""

    on_device = False

    def __init__(self, file: str, seed: int, batch_size: int, shard_index: int | None = None,
                 shard_count: int | None = None):
        from flowgen.data.pairs import open_pairs

        self._rows = host_share(batch_size, shard_index, shard_count)
        arrays = open_pairs(file)
        self.seed, self.batch_size = seed, batch_size
        self._x, self._noise, self._label = arrays["x_data"], arrays["noise"], arrays.get("label")
        self.element_shape = tuple(self._x.shape[1:])
        self.num_classes = int(np.max(self._label)) + 1 if self._label is not None else 0
        self._indices = host_program(lambda step: pair_indices(seed, step, batch_size, len(self._x)))
        self.step = 0

    def indices(self, step: int) -> np.ndarray:
        """This process's rows of global batch ``step``."""
        return self._indices(step)[self._rows]

    def next(self) -> dict:
        idx = self.indices(self.step)
        self.step += 1
        out = {"x": np.asarray(self._x[idx], np.float32), "noise": np.asarray(self._noise[idx], np.float32)}
        if self._label is not None:
            out["label"] = np.asarray(self._label[idx], np.int32)
        return out

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return _pairs_reference(self._x, n, seed)


def pairs_input(file: str, seed: int, batch_size: int, device_max_mb: float = PAIRS_DEVICE_MAX_MB):
    """``PairsInput`` (on the devices) if the file's arrays take at most ``device_max_mb`` MiB, else
    ``HostPairsInput`` (memory-mapped, fed from the host). Both draw the same rows for the same seed and step."""
    from flowgen.data.pairs import pairs_nbytes

    if pairs_nbytes(file) <= device_max_mb * 2**20:
        return PairsInput(file, seed, batch_size)
    return HostPairsInput(file, seed, batch_size)


class DevicePrefetcher:
    """Iterates ``(n, batches, data_state)`` for each call length ``n`` in ``sizes``: ``n`` host batches of ``data``
    stacked on a leading axis padded to ``length`` (by repeating the last; padded entries are never used), put on
    the devices with ``sharding`` (global arrays), and the iterator state just after the n-th batch (what a
    checkpoint taken after these steps must record). A background thread keeps ``depth`` calls ready.

    ``close()`` (or leaving the ``with`` block) stops the thread; batches it read ahead are dropped, which is
    harmless because checkpoints record ``data_state`` of the batches actually used.
    """

    _END = object()

    def __init__(self, data, sizes: Iterable[int], length: int, sharding, depth: int = 2):
        self._data, self._sizes, self._length, self._sharding = data, iter(sizes), length, sharding
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="flowgen-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for n in self._sizes:
                if n > self._length:
                    raise ValueError(f"a call of {n} steps does not fit the stacked length {self._length}")
                local = [self._data.next() for _ in range(n)]
                state = copy.deepcopy(self._data.get_state())
                local += [local[-1]] * (self._length - n)
                arrays = {k: jax.make_array_from_process_local_data(self._sharding, np.stack([b[k] for b in local]))
                          for k in local[0]}
                if not self._put((n, arrays, state)):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
            self._put(e)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stacked_sharding(batch_sharding: NamedSharding) -> NamedSharding:
    """The sharding of host batches stacked for one call, (steps, batch, ...): the batch axis split as in
    ``batch_sharding``, the steps axis not split."""
    return NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))


def make_input(data_cfg, seed: int):
    """The training input of ``config.data``; a text-conditioned one (``data.captions`` or a text_embeddings
    folder) yields caption embeddings, ``flowgen.train.text_input``."""
    from flowgen.train import config as config_lib

    name = data_cfg.name
    kwargs = data_cfg.get("kwargs", {})
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    text = config_lib.text_conditioning(data_cfg)
    if name == config_lib.TEXT_FOLDER:
        from flowgen.train.text_input import TextFolderInput

        return TextFolderInput(data_cfg, seed, text, config_lib.element_shape(data_cfg))
    if name in toy.TOY_DATASETS:
        if text is not None:
            raise ValueError(f"data.captions={data_cfg.captions!r}: toy sets are drawn on the device; captions "
                             "apply to image datasets")
        return ToyInput(name, seed, data_cfg.batch_size, kwargs)
    if name == config_lib.LATENTS:
        from flowgen.train.latent_input import LatentInput

        return LatentInput(data_cfg, seed)
    if name == "pairs":
        return pairs_input(kwargs.get("file", ""), seed, data_cfg.batch_size,
                           kwargs.get("device_max_mb", PAIRS_DEVICE_MAX_MB))
    from flowgen.train.image_input import ImageInput

    data = ImageInput(data_cfg, seed)
    if text is not None:
        from flowgen.train.text_input import CaptionedInput

        return CaptionedInput(data, text.caption_set)
    return data
