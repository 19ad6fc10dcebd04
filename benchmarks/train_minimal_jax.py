"""The practical limit for ``configs/toy2d_rf.py``: a minimal hand-written training loop in plain JAX + optax.

Same model, objective and optimiser as the config, written out by hand with no flowgen code:

    MLP (H = 256, depth 3) with DiT's time embedder: c = Dense(SiLU(Dense(sinusoidal(1000·t))))
    h = Dense(x) + c;  h = Dense(SiLU(h)) twice;  out = Dense(SiLU(h))             264,450 parameters
    linear path x_t = t·x_data + (1 − t)·noise, velocity target x_data − noise, t ~ U[0, 1], mean squared error
    clip_by_global_norm(1) → Adam(1e-3, linear warm-up over 100 steps) → EMA 0.999
    data: 8 Gaussians on a circle of radius 4, std 0.5, batch 256, drawn on the device inside the step

Two variants: one jitted, donated step per call (``--fuse 1``), or K steps fused in one ``lax.scan`` per call
(``--fuse K``). Prints one JSON line ``{"steps_per_s": ...}`` measured after a warm-up call (compile excluded), the
loss read only at the end (no per-step host synchronisation).

    python benchmarks/train_minimal_jax.py --steps 2000 --fuse 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HIDDEN, DEPTH, DIM, BATCH, LR, WARMUP, EMA = 256, 3, 2, 256, 1e-3, 100, 0.999


def init_params(key):
    shapes = {"t0": (HIDDEN, HIDDEN), "t1": (HIDDEN, HIDDEN), "in": (DIM, HIDDEN),
              **{f"h{i}": (HIDDEN, HIDDEN) for i in range(DEPTH - 1)}, "out": (HIDDEN, DIM)}
    keys = jax.random.split(key, len(shapes))
    init = jax.nn.initializers.lecun_normal()
    return {name: {"w": init(k, shape), "b": jnp.zeros(shape[1])}
            for k, (name, shape) in zip(keys, shapes.items(), strict=True)}


def model(p, x, t):
    half = HIDDEN // 2
    freqs = jnp.asarray(1000.0 * np.exp(-math.log(10_000.0) * np.arange(half) / half), jnp.float32)
    args = t[:, None] * freqs
    feats = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    dense = lambda name, h: h @ p[name]["w"] + p[name]["b"]  # noqa: E731
    c = dense("t1", jax.nn.silu(dense("t0", feats)))
    h = dense("in", x) + c
    for i in range(DEPTH - 1):
        h = dense(f"h{i}", jax.nn.silu(h))
    return dense("out", jax.nn.silu(h))


def circle_batch(key):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.randint(k_comp, (BATCH,), 0, 8)
    angle = comp * (2 * math.pi / 8)
    means = 4.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return means + 0.5 * jax.random.normal(k_noise, (BATCH, DIM))


def loss_fn(p, key):
    k_data, k_noise, k_t = jax.random.split(key, 3)
    x_data = circle_batch(k_data)
    noise = jax.random.normal(k_noise, x_data.shape)
    t = jax.random.uniform(k_t, (BATCH,))
    x_t = t[:, None] * x_data + (1 - t[:, None]) * noise
    return jnp.mean((model(p, x_t, t) - (x_data - noise)) ** 2)


schedule = optax.join_schedules([optax.linear_schedule(0.0, LR, WARMUP), optax.constant_schedule(LR)], [WARMUP])
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def step(carry, key):
    p, opt, ema, i = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(key, i))
    updates, opt = optimizer.update(grads, opt, p)
    p = optax.apply_updates(p, updates)
    ema = jax.tree.map(lambda e, q: EMA * e + (1 - EMA) * q, ema, p)
    return (p, opt, ema, i + 1), loss


def make(fuse: int):
    """(initial carry, call) where call(carry, key) runs ``fuse`` steps and returns (carry, last loss)."""
    p = init_params(jax.random.key(0))
    carry = (p, optimizer.init(p), jax.tree.map(jnp.copy, p), jnp.zeros((), jnp.int32))
    if fuse == 1:
        return carry, jax.jit(step, donate_argnums=0)

    def many(carry, key):
        carry, losses = jax.lax.scan(lambda c, _: step(c, key), carry, length=fuse)
        return carry, losses[-1]

    return carry, jax.jit(many, donate_argnums=0)


def run(steps: int, fuse: int) -> dict:
    carry, call = make(fuse)
    key = jax.random.key(1)
    carry, loss = call(carry, key)                    # compile + warm-up (one call)
    jax.block_until_ready(loss)
    calls = max(steps // fuse, 1)
    start = time.perf_counter()
    for _ in range(calls):
        carry, loss = call(carry, key)
    loss = float(loss)
    elapsed = time.perf_counter() - start
    params = sum(x.size for x in jax.tree.leaves(carry[0]))
    return {"steps_per_s": calls * fuse / elapsed, "steps": calls * fuse, "fuse": fuse, "loss": loss,
            "params": params}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--fuse", type=int, default=1, help="steps per call (lax.scan); 1 = one jitted step")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.steps, args.fuse)))


if __name__ == "__main__":
    main()
