"""Noise paired with the data on the host, ahead of the step that uses it: minibatch OT without a host round trip
inside the compiled step (``loss.coupling = "ot"``, ``loss.coupling_options.host_threads`` > 0).

``HostCoupledInput`` wraps any training input (``flowgen.train.input``). For batch ``step`` it takes this process's
share of the data (from the host, or for data made on the device, the same batch drawn on the host CPU), draws the
noise x₀ ~ source on the host from ``fold_in(fold_in(key(seed), NOISE_TAG), step)`` (global batch, this process's
rows), and pairs them by the coupling's exact assignment (``MinibatchOT.host_permutation``):

    batch = {"x": x, "noise": x₀[π], ...},   π = argmin_π Σ_i ‖x_i − x₀_π(i)‖²  over this process's rows

The assignments run in ``host_threads`` worker threads, up to ``2·host_threads`` batches ahead of the step being
trained (POT's network simplex and scipy release the GIL: the solves run in parallel with each other and with the
device); batches come out in step order, so training is deterministic whatever the thread count and timing. The
checkpointed state is the wrapped input's state after the last batch handed out, so a resumed run sees exactly the
batches of an uninterrupted one: ``{"step": batches handed out, "inner": the wrapped input's state}``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.train.input import host_program, host_share

NOISE_TAG = 0x5EED


class HostCoupledInput:
    """``inner``'s batches with ``"noise"`` paired on the host by ``coupling`` (see the module docstring)."""

    on_device = False

    def __init__(self, inner, coupling, source, seed: int, batch_size: int, shard_index: int | None = None,
                 shard_count: int | None = None):
        self.inner, self.coupling = inner, coupling
        self.element_shape, self.num_classes = inner.element_shape, inner.num_classes
        self._rows = host_share(batch_size, shard_index, shard_count)    # default: this JAX process's rows
        shape = (batch_size, *inner.element_shape)
        self._noise = host_program(lambda step: source.sample(
            jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), NOISE_TAG), step), shape, jnp.float32))
        self._device_batch = host_program(inner.device_batch) if inner.on_device else None
        self._pool = concurrent.futures.ThreadPoolExecutor(coupling.host_threads, thread_name_prefix="flowgen-ot")
        self._ahead: collections.deque = collections.deque()       # (state after the batch, future of the batch)
        self._state = {"step": 0, "inner": copy.deepcopy(inner.get_state())}
        self._next_step = 0
        self._depth = 2 * coupling.host_threads

    def _inner_batch(self) -> dict:
        if self._device_batch is None:
            return self.inner.next()
        batch = {k: v[self._rows] for k, v in self._device_batch(self._next_step).items()}
        self.inner.advance(1)
        return batch

    def _pair(self, batch: dict, noise: np.ndarray) -> dict:
        perm = self.coupling.host_permutation(np.asarray(batch["x"]), noise)
        return {**batch, "noise": np.ascontiguousarray(noise[perm], np.float32)}

    def _fill(self) -> None:
        while len(self._ahead) < self._depth:
            batch = self._inner_batch()
            noise = self._noise(self._next_step)[self._rows]
            self._next_step += 1
            state = {"step": self._next_step, "inner": copy.deepcopy(self.inner.get_state())}
            self._ahead.append((state, self._pool.submit(self._pair, batch, noise)))

    def next(self) -> dict:
        self._fill()
        state, future = self._ahead.popleft()
        batch = future.result()
        self._state = state
        return batch

    def get_state(self) -> dict:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict) -> None:
        for _, future in self._ahead:
            future.cancel()
        self._ahead.clear()
        self.inner.set_state(state["inner"])
        self._state = copy.deepcopy(state)
        self._next_step = int(state["step"])

    def advance(self, num_steps: int) -> None:       # never called: the input is host-fed (``on_device`` False)
        raise RuntimeError("HostCoupledInput is fed from the host; advance() does not apply")

    def reference(self, n: int, seed: int = 12345) -> np.ndarray:
        return self.inner.reference(n, seed)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
