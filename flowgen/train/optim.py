"""Optimiser and EMA from the config: an optax chain (clip → Adam/AdamW with a warm-up + constant/cosine schedule).

    optim.name          "adam" | "adamw"
    optim.lr            peak learning rate;  optim.warmup_steps linear warm-up from 0
    optim.schedule      "constant" | "cosine" (cosine decays to optim.min_lr_ratio·lr at train.num_steps)
    optim.b1, b2, eps   Adam moments;  optim.weight_decay (adamw)
    optim.grad_clip     global-norm clipping (0 disables)
    ema.decays          tuple of EMA decays; ema.half_life_steps, if set, adds decay 0.5^(1/half_life)

EMA after each step: ``ema ← d·ema + (1 − d)·params`` (as in DDPM/EDM; EDM2's power EMA is not implemented).
"""

from __future__ import annotations

import optax

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


def schedule_uses_num_steps(optim) -> bool:
    """Whether the learning rate at a given step depends on ``train.num_steps`` (so it must not change on resume)."""
    return optim.schedule == "cosine"


def make_schedule(optim, num_steps: int) -> optax.Schedule:
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {optim.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if optim.lr <= 0 or optim.warmup_steps < 0:
        raise ValueError(f"need optim.lr > 0 and optim.warmup_steps >= 0; got {optim.lr}, {optim.warmup_steps}")
    warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
    if optim.schedule == "constant":
        main = optax.constant_schedule(optim.lr)
    else:
        decay_steps = max(num_steps - optim.warmup_steps, 1)
        main = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.get("min_lr_ratio", 0.0))
    if optim.warmup_steps == 0:
        return main
    return optax.join_schedules([warmup, main], [optim.warmup_steps])


def make_optimizer(optim, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"unknown optim.name {optim.name!r}; valid: {', '.join(OPTIMIZERS)}")
    schedule = make_schedule(optim, num_steps)
    parts = []
    if optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.name == "adam":
        parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    else:
        parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*parts), schedule


def ema_decays(ema) -> tuple[float, ...]:
    decays = list(ema.decays)
    if ema.get("half_life_steps"):
        decays.append(0.5 ** (1.0 / ema.half_life_steps))
    for d in decays:
        if not 0.0 <= d < 1.0:
            raise ValueError(f"EMA decays must be in [0, 1); got {d}")
    return tuple(sorted(set(decays)))
