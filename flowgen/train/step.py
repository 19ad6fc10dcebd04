"""The jitted, sharded training program: grads of the loss, optax update, EMA, metrics; several steps per call.

    step_fn = make_train_step(loss_fn, optimizer, schedule, decays)     # one step: (state, batch, key) -> ...
    # loss_fn(params, state, batch, key) -> (loss, aux): a method's loss (``flowgen.methods``), which sees the state
    chunk = jit_train_chunk(make_train_chunk(step_fn, ...), ...)
    state, report = chunk(state, batches, key, num_steps)               # num_steps steps in one call

The per-step key is ``fold_in(key, state.step)``: the state carries no RNG. Under ``jax.jit`` with NamedSharding
the global-batch mean in the loss is computed across devices by XLA; the state is donated.

With ``steps_per_call`` K > 1 one call runs ``num_steps`` ≤ K steps in a ``lax.while_loop``. ``num_steps`` is a
traced argument, so one compiled program serves every call length (the loop cuts calls at log/checkpoint/sample
steps without recompiling). The loop stops early at the first step whose loss or gradient norm is not finite and
reports that step's number; the state it returns is then not to be used (the training loop raises and never saves
it). With K = 1 (the default, see ``make_train_call``) a call is one plain step with the same report. Fused and
unfused runs give bit-identical parameters and logged losses (tests/test_train_fused.py).

Data come either from the device (``device_batch(step)``: toy sets, a pure function of the step) or from the host
as ``batches`` stacked on a leading axis of size ≥ num_steps (step i of the call uses ``batches[i]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import optax

from flowgen.train.state import TrainState, ema_name


def init_state(params, optimizer: optax.GradientTransformation, decays) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema={ema_name(d): params for d in decays})


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    decays) -> Callable:
    """One un-jitted step ``(state, batch, key) -> (state, metrics)``; ``make_train_chunk`` loops it.

    ``loss_fn(params, state, batch, key)`` is differentiated in ``params`` only; ``state`` (the step, the EMA
    copies, ...) reaches it as a constant, so a method can build targets from the EMA or a stop-gradient copy."""

    def train_step(state: TrainState, batch, key):
        step_key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = {
            ema_name(d): jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, state.ema[ema_name(d)], params)
            for d in decays
        }
        metrics = {**aux, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step


def make_train_chunk(train_step: Callable, device_batch: Callable | None = None) -> Callable:
    """``chunk(state, batches, key, num_steps) -> (state, report)``: ``num_steps`` steps of ``train_step``.

    ``device_batch(step)`` (traced step number, 0-based) makes the batch on the device; without it, step i of the
    call reads ``batches[i]`` (host batches stacked on a leading axis). ``report``:

        metrics     the metrics of the last step run (not averages)
        steps       number of steps run (< num_steps only after a non-finite step)
        bad_step    the 1-based number of the first step whose loss or gradient norm is not finite, else -1
    """

    def batch_at(state, batches, i):
        if device_batch is not None:
            return device_batch(state.step)
        return jax.tree.map(lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False), batches)

    def chunk(state: TrainState, batches, key, num_steps):
        metrics_shape = jax.eval_shape(train_step, state, batch_at(state, batches, 0), key)[1]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

        def cond(carry):
            i, _, _, bad = carry
            return (i < num_steps) & (bad < 0)

        def body(carry):
            i, state, _, bad = carry
            new_state, metrics = train_step(state, batch_at(state, batches, i), key)
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            bad = jnp.where(finite, bad, state.step + 1)
            return i + 1, new_state, metrics, bad

        init = (jnp.zeros((), jnp.int32), state, zeros, jnp.full((), -1, jnp.int32))
        steps, state, metrics, bad = jax.lax.while_loop(cond, body, init)
        return state, {"metrics": metrics, "steps": steps, "bad_step": bad}

    return chunk


def make_train_call(train_step: Callable, device_batch: Callable | None = None, steps_per_call: int = 1) -> Callable:
    """The program the training loop calls: ``make_train_chunk`` for ``steps_per_call`` > 1, else one plain step
    with the same signature and report (``num_steps`` must then be 1; host batches are stacked with length 1).

    One plain step is the default: XLA:CPU runs a ``while_loop`` body far slower than the same step on its own when
    the step has convolutions (see benchmarks/README.md), and for the MLP fusing gains nothing there.
    """
    if steps_per_call > 1:
        return make_train_chunk(train_step, device_batch)

    def call(state: TrainState, batches, key, num_steps):
        del num_steps
        batch = device_batch(state.step) if device_batch is not None else jax.tree.map(lambda b: b[0], batches)
        new_state, metrics = train_step(state, batch, key)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        report = {"metrics": metrics, "steps": jnp.ones((), jnp.int32),
                  "bad_step": jnp.where(finite, -1, state.step + 1).astype(jnp.int32)}
        return new_state, report

    return call


def jit_train_chunk(chunk: Callable, state_sharding, batches_sharding, replicated) -> Callable:
    """``jax.jit`` with the state's shardings, the state donated and ``num_steps`` traced (one compile)."""
    return jax.jit(chunk, in_shardings=(state_sharding, batches_sharding, replicated, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))


def chunk_sizes(start: int, stop: int, every: tuple[int, ...], steps_per_call: int) -> Iterator[int]:
    """Lengths of the calls from step ``start`` to ``stop``: at most ``steps_per_call`` steps each, ending on every
    multiple of each (nonzero) period in ``every`` (log, checkpoint and sample steps). The first call runs one
    step, so that compilation is timed on its own and the first progress line comes early.

        list(chunk_sizes(0, 23, (10,), 4)) == [1, 4, 4, 1, 4, 4, 2, 3]
    """
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1; got {steps_per_call}")
    periods = [p for p in every if p]
    step, first = start, True
    while step < stop:
        n = 1 if first else steps_per_call
        for p in periods:
            n = min(n, p - step % p)
        n = min(n, stop - step)
        yield n
        step, first = step + n, False
