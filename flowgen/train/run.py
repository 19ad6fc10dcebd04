"""A run is one value: everything a config (or a training workdir) determines, built once, before any compilation.

    run = Run.from_config(config)            # training, ``--mode=describe``, tests
    run = Run.from_workdir("workdirs/toy")   # the run's saved config.json: load_model, --mode=sample, sweeps

It holds the one device mesh, the path, the source of x₀, the training method (``flowgen.methods``), the Flax
network and its two apply functions, the optimiser and its schedule, the EMA decays, the run's three keys (init,
train, sample), the sharded abstract train state and the text conditioning, if any (``flowgen.data.text``). It
knows which parameters sample (``sampling_params``: the slowest EMA by default) and how (``draw_samples``: the
method's sampler, with measured NFE, conditioned as ``sample_conditioning`` says) and, for a run on latents, how
samples become images (``images``: decoded by the dataset's autoencoder). Nothing here reads the data set
(except the few captions a text_embeddings folder's samples are drawn with) or touches the workdir; ``make_input``
opens the data for training.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgen import methods as methods_lib
from flowgen import sources as sources_lib
from flowgen.couplings import get_coupling
from flowgen.train import config as config_lib
from flowgen.train import sharding as sharding_lib
from flowgen.train.model import build_network, make_apply_fns
from flowgen.train.optim import ema_decays, make_optimizer
from flowgen.train.state import TrainState, ema_name
from flowgen.train.step import init_state

#: Which parameters sample: "params", "ema" (the slowest EMA) or an EMA key like "ema_0.999".
PARAMS_CHOICES = ("params", "ema")


def _kwargs(node) -> dict:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node)


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    element_shape: tuple[int, ...]
    num_classes: int | None
    path: Any
    source: sources_lib.Source
    method: methods_lib.Method
    module: Any
    train_apply: Any
    sample_apply: Any
    optimizer: Any
    schedule: Any
    decays: tuple[float, ...]
    keys: tuple            # (init, train, sample)
    abstract_state: Any    # TrainState of jax.ShapeDtypeStruct with .sharding set
    text: Any = None       # flowgen.data.text.TextConditioning of a text-conditioned run, else None

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config, *, mesh: jax.sharding.Mesh | None = None) -> Run:
        """Check ``config`` (ValueError naming the key, the value and the choices) and build the run on ``mesh``
        (default: every device, ``mesh.fsdp`` as configured). No data are read and nothing is compiled."""
        config_lib.validate(config)
        mesh = sharding_lib.make_mesh(config.mesh.fsdp) if mesh is None else mesh
        shape = config_lib.element_shape(config.data)
        num_classes = config.model.num_classes or None
        text = config_lib.text_conditioning(config.data)
        method = config_lib.build_method(config)
        path, source = method.path, method.source
        source.check_shape(shape)
        module = build_network(config.model, num_classes, method.extra_times)
        train_apply, sample_apply = make_apply_fns(module, path, config.model.precond, config.model.sigma_data)
        optimizer, schedule = make_optimizer(config.optim, config.train.num_steps)
        decays = ema_decays(config.ema)
        keys = tuple(jax.random.split(jax.random.key(config.seed), 3))
        example = (jnp.zeros((1, *shape), jnp.float32), jnp.zeros((1,), jnp.float32),
                   jnp.zeros((1,), jnp.int32) if num_classes else (text.zeros(1) if text is not None else None))
        times = {name: example[1] for name in method.extra_times}

        def init(key):
            return init_state(module.init(key, *example, **({"times": times} if times else {})), optimizer, decays)

        abstract = jax.eval_shape(init, keys[0])
        shardings = sharding_lib.state_shardings(abstract, mesh)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        run = cls(config, mesh, shape, num_classes, path, source, method, module, train_apply, sample_apply,
                  optimizer, schedule, decays, keys, abstract, text=text)
        object.__setattr__(run, "_init", init)
        return run

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike) -> Run:
        """The run of a training workdir, from its ``config.json`` (configs of earlier versions are upgraded,
        ``config.upgrade``). The mesh spans every device, with the run's ``mesh.fsdp`` where it divides the device
        count (else 1: parameters replicated). FileNotFoundError if the workdir has no config."""
        config = config_lib.saved_config(os.fspath(workdir))
        fsdp = config.mesh.fsdp if jax.device_count() % config.mesh.fsdp == 0 else 1
        return cls.from_config(config, mesh=sharding_lib.make_mesh(fsdp))

    def __repr__(self) -> str:
        count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self.abstract_state.params))
        return (f"Run(method={self.method.name!r}, path={self.path!r}, source={self.source.name!r}, "
                f"network={self.config.model.name!r} with {count} parameters, data={self.config.data.name!r} "
                f"{self.element_shape}, mesh={dict(self.mesh.shape)})")

    # ------------------------------------------------------------------------------------------------ state
    @property
    def state_sharding(self):
        return jax.tree.map(lambda a: a.sharding, self.abstract_state)

    def init_state(self) -> TrainState:
        """The initial train state, created directly in its shardings."""
        return jax.jit(self._init, out_shardings=self.state_sharding)(self.keys[0])

    def restore(self, checkpointer, step: int | None = None, *, quarantine: bool = True):
        """``(step, state, metadata)`` of the newest good checkpoint (at or before ``step``), or None; see
        ``Checkpointer.restore``."""
        return checkpointer.restore(self.abstract_state, step, quarantine=quarantine)

    def params_choices(self) -> list[str]:
        return ["params", *(["ema", *(ema_name(d) for d in self.decays)] if self.decays else [])]

    def sampling_params(self, state: TrainState, which: str = "ema") -> tuple[str, Any]:
        """``(name, params)`` to sample with: "params", "ema" (the EMA of the largest decay, the slowest) or an EMA
        key. ValueError naming the valid choices otherwise."""
        if which not in self.params_choices():
            raise ValueError(f"params={which!r} is not one of: {', '.join(self.params_choices())}")
        if which == "params":
            return "params", state.params
        name = ema_name(max(self.decays)) if which == "ema" else which
        return name, state.ema[name]

    # ------------------------------------------------------------------------------------------------ training
    def make_input(self):
        """The training data (opens the data set: image sets must be prepared, see ``--mode=prepare``)."""
        from flowgen.train import input as input_lib

        data = input_lib.make_input(self.config.data, self.config.seed)
        coupling = get_coupling(self.config.loss.coupling, **_kwargs(self.config.loss.coupling_options))
        if getattr(coupling, "pairs_on_host", False):   # e.g. minibatch OT solved on the host ahead of the step
            from flowgen.train.coupled_input import HostCoupledInput

            return HostCoupledInput(data, coupling, self.source, self.config.seed, self.config.data.batch_size)
        return data

    def loss_fn(self):
        """``loss(params, state, batch, key) -> (loss, aux)`` of the run's method."""
        return self.method.make_loss(self.train_apply)

    def abstract_batch(self, batch_size: int | None = None) -> dict:
        """Shapes of one global training batch (without reading data)."""
        b = self.config.data.batch_size if batch_size is None else batch_size
        batch = {"x": jax.ShapeDtypeStruct((b, *self.element_shape), jnp.float32)}
        if self.num_classes:
            batch["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
        if self.text is not None:
            batch.update({k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in self.text.shapes(b).items()})
        if self.config.data.name == config_lib.PAIRS:
            batch["noise"] = batch["x"]
        return batch

    # ------------------------------------------------------------------------------------------------ sampling
    @property
    def sample_groups(self) -> int:
        """How many conditions samples cycle through (sample i has condition ``i % sample_groups``): the classes,
        a caption set's captions, or 0 (unconditional, or a caption per sample)."""
        return self.num_classes or (self.text.num_captions if self.text is not None else 0)

    def sample_conditioning(self, num: int):
        """``(cond, null_cond)`` for ``num`` samples: labels ``i % num_classes`` and the null label; the captions
        of ``TextConditioning.sample_cond`` and the null caption (zeros); or (None, None)."""
        if self.num_classes:
            return jnp.arange(num) % self.num_classes, self.num_classes
        if self.text is not None:
            return jax.tree.map(jnp.asarray, self.text.sample_cond(num)), self.text.null()
        return None, None

    def draw_samples(self, state: TrainState, key, num: int, *, params: str | None = None):
        """``(samples (num, *element_shape) numpy, measured NFE)`` with the config's ``sample`` settings: x₀ from
        the source, the method's sampler, the conditions of ``sample_conditioning`` for a conditional model."""
        s = self.config.sample
        _, chosen = self.sampling_params(state, s.ema if params is None else params)
        k_noise, k_sample = jax.random.split(key)
        noise = self.source.sample(k_noise, (num, *self.element_shape), jnp.float32)
        cond, null_cond = self.sample_conditioning(num)
        guidance = s.guidance if cond is not None else None
        x, info = self.method.sample(self.sample_apply, chosen, noise, key=k_sample, solver=s.solver,
                                     num_steps=s.num_steps, grid=s.grid, cond=cond, guidance=guidance,
                                     null_cond=null_cond, solver_options=config_lib.solver_options(self.config))
        return np.asarray(jax.device_get(x)), int(info["nfe"])

    @functools.cached_property
    def decoder(self):
        """Latent runs (``data.name = "latents"``): the ``flowgen.latents.decode.LatentDecoder`` of the dataset's
        autoencoder (loaded on first use; ``AutoencoderMissingError`` naming what to fetch); else None."""
        from flowgen.latents.decode import run_decoder

        return run_decoder(self.config)

    def images(self, samples: np.ndarray) -> np.ndarray:
        """Samples as images: decoded for a latent run; mock latents (no autoencoder) show their first 3 channels
        (their first, when they have 2); others unchanged."""
        if self.decoder is not None:
            return self.decoder(samples)
        if self.config.data.name == config_lib.LATENTS and samples.shape[-1] not in (1, 3):
            return samples[..., :3] if samples.shape[-1] > 3 else samples[..., :1]
        return samples

    # ------------------------------------------------------------------------------------------------ describe
    def describe(self) -> str:
        """The network's parameter overview, the FLOPs of one training step (XLA's cost analysis of the lowered
        step, nothing compiled) and, last, ``parameters: <N>``."""
        from clu import parameter_overview

        from flowgen.train.step import make_train_step

        params = self.abstract_state.params
        overview = parameter_overview.get_parameter_overview(params, include_stats=False)
        count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
        step = make_train_step(self.loss_fn(), self.optimizer, self.schedule, self.decays)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        cost = jax.jit(step).lower(self.abstract_state, self.abstract_batch(), key).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        c = self.config
        lines = [overview,
                 f"method: {self.method.name} ({self.method.prediction} prediction) on {self.path!r}, source "
                 f"{self.source.name if self.source.gaussian else c.source.name}",
                 f"network: {c.model.name} {_kwargs(c.model.kwargs)}, element shape {self.element_shape}, "
                 + (f"text context {self.text.shapes(1)['context'][1:]}, pooled ({self.text.pooled_dim},)"
                    if self.text is not None else f"classes {self.num_classes or 0}"),
                 f"training step: batch {c.data.batch_size}, {flops:.4g} FLOPs (XLA cost analysis, per step)",
                 f"parameters: {count}"]
        return "\n".join(lines)

