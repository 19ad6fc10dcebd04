"""Networks from the config: the Flax module, and the two pure functions the rest of flowgen sees.

    train_apply(params, x_t, t, cond, rng)   the training-time call (dropout on), as ``flowgen.losses`` expects
    sample_apply(params, x_t, t[, cond])     the sampling call (dropout off), as ``flowgen.sample`` expects

With ``model.precond`` set (``flowgen.paths.precond.PRECONDITIONINGS``, e.g. "edm") both wrap the network in that
preconditioning.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp

from flowgen import networks
from flowgen.paths.precond import PRECONDITIONINGS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_network(model_cfg, num_classes: int | None, extra_times: tuple[str, ...] = ()):
    kwargs = dict(model_cfg.kwargs.to_dict()) if hasattr(model_cfg.kwargs, "to_dict") else dict(model_cfg.kwargs)
    kwargs["dtype"] = DTYPES[model_cfg.dtype]
    if extra_times:
        kwargs["extra_times"] = tuple(extra_times)
    precond = PRECONDITIONINGS[model_cfg.precond]
    if precond is not None:   # e.g. EDM feeds c_noise = ¼·ln σ as the time input, embedded unscaled
        kwargs.setdefault("time_scale", precond.network_time_scale)
    if model_cfg.name not in networks.NETWORKS:
        raise ValueError(f"model.name={model_cfg.name!r} is not one of: {', '.join(networks.NETWORKS)}")
    return networks.NETWORKS[model_cfg.name](num_classes=num_classes, **kwargs)


def make_apply_fns(module, path, precond: str = "none", sigma_data: float = 0.5):
    takes_train = "train" in inspect.signature(type(module).__call__).parameters

    def raw(params, x, t, cond, *, train, rng, times):
        extra = {"train": train} if takes_train else {}
        if times:
            extra["times"] = times
        rngs = {"dropout": rng} if (train and takes_train and rng is not None) else None
        return module.apply(params, x, t, cond, rngs=rngs, **extra)

    wrapper = PRECONDITIONINGS[precond]
    if wrapper is not None:
        wrap = wrapper(sigma_data).wrap       # the raw network gets the preconditioner's time input in place of t

        def train_apply(params, x_t, t, cond, rng, **times):
            net = lambda p, x, c_noise, *c: raw(p, x, c_noise, c[0] if c else None, train=True, rng=rng,  # noqa: E731
                                                times=times)
            return wrap(net, path)(params, x_t, t, *(() if cond is None else (cond,)))

        def sample_apply(params, x_t, t, *cond, **times):
            net = lambda p, x, c_noise, *c: raw(p, x, c_noise, c[0] if c else None, train=False,  # noqa: E731
                                                rng=None, times=times)
            return wrap(net, path)(params, x_t, t, *cond)
    else:
        def train_apply(params, x_t, t, cond, rng, **times):
            return raw(params, x_t, t, cond, train=True, rng=rng, times=times)

        def sample_apply(params, x_t, t, *cond, **times):
            return raw(params, x_t, t, cond[0] if cond else None, train=False, rng=None, times=times)

    return train_apply, sample_apply
