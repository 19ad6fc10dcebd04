"""The train state: a pytree with no RNG in it (step keys are ``fold_in(key, step)``, so resume is exact)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar), params, optimiser state, and one EMA copy of the params per decay, keyed by its name."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema: dict[str, Any]


def ema_name(decay: float) -> str:
    """Key of an EMA copy, e.g. 0.9999 -> "ema_0.9999"."""
    return f"ema_{decay:g}"
