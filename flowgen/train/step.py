"""The jitted, sharded train step: grads of the loss, optax update, EMA, metrics.

    state, metrics = train_step(state, batch, key)

The per-step key is ``fold_in(key, state.step)``: the state carries no RNG. Under ``jax.jit`` with NamedSharding
the global-batch mean in the loss is computed across devices by XLA; the state is donated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from flowgen.train.state import TrainState, ema_name


def init_state(params, optimizer: optax.GradientTransformation, decays) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema={ema_name(d): params for d in decays})


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    decays) -> Callable:
    """An un-jitted step function; ``jit_train_step`` adds shardings and donation."""

    def train_step(state: TrainState, batch, key):
        step_key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = {
            ema_name(d): jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, state.ema[ema_name(d)], params)
            for d in decays
        }
        metrics = {**aux, "loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return train_step


def jit_train_step(train_step: Callable, state_sharding, batch_sharding, replicated) -> Callable:
    return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
