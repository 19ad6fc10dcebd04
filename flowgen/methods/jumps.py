"""What the few-step methods (``meanflow.py``, ``shortcut.py``) share: a network that, given a point x at time t and a
step to a later time t' (its extra time input), predicts the *average* velocity over [t, t'], and the sampler that
jumps with it.

On a uniform grid t_min = t_0 < t_1 < … < t_N = t_max of the path's interval (N = ``num_steps``), starting from
``x_0 = σ(t_0)·x₀`` (x₀ from the source, as ``fg.sample`` starts):

    x_{k+1} = x_k + (t_{k+1} − t_k)·F_θ(x_k, t_k, step_k),      step_k = the method's extra time for the jump

With the exact average velocity F = (Φ_{t_k→t_{k+1}}(x_k) − x_k)/(t_{k+1} − t_k) every jump lands on the probability
flow, so N = 1 is already exact (``flowgen.analytic.GaussianMixture.average_velocity``). NFE is measured as in
``fg.sample``: every network call the program makes adds to a counter carried through the ``lax.scan``
(``info["nfe"]``; ``info["forward_passes"]`` doubles it under classifier-free guidance).

At extra time 0 the network is the instantaneous velocity (both methods train it there by flow matching), so the
methods' ``prediction`` is ``velocity`` and every solver of ``fg.sample`` samples a trained model too (the network
called with the extra time set to 0): ``sample.solver`` names either one of ``fg.sample``'s solvers or the method's
own sampler (``samplers``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.methods.flow_matching import FlowMatching


@dataclasses.dataclass(frozen=True, eq=False)
class JumpMethod(FlowMatching):
    """Base class of the few-step methods: options of flow matching (``config.loss``) plus their own; subclasses
    set ``extra_times`` (one name), ``samplers`` (one name) and implement ``jump_times`` and ``check_jumps``."""

    name: ClassVar[str] = "jump_method"
    supports_text: ClassVar[bool] = False   # its loss conditions on labels only (not on caption embeddings)
    #: Whether the method's own sampler accepts classifier-free guidance of its average velocity.
    guidable: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.target != "velocity":
            raise ValueError(f"loss.target={self.target!r}: method {self.name!r} predicts (average) velocities; "
                             "set loss.target='velocity'")
        if self.weighting != "uniform":
            raise ValueError(f"loss.weighting={self.weighting!r}: method {self.name!r} supports only 'uniform'")

    @property
    def prediction(self) -> str:
        return "velocity"

    # ---------------------------------------------------------------------------------------- subclass hooks
    def jump_times(self, t0, t1) -> dict:
        """The extra time inputs ``{name: (B,)}`` of one jump from t0 to t1 (each (B,))."""
        raise NotImplementedError

    def check_jumps(self, num_steps) -> None:
        """Raise ValueError if the method's own sampler cannot take ``num_steps`` jumps."""

    # ---------------------------------------------------------------------------------------- sampling
    def check_sampler(self, solver: str, num_steps: int, grid: str, guidance=None) -> None:
        if solver not in self.samplers:
            return
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"sample.num_steps={num_steps!r}: sampler {solver!r} needs an integer >= 1")
        self.check_jumps(int(num_steps))
        if grid != "uniform":
            raise ValueError(f"sample.grid={grid!r}: sampler {solver!r} jumps on the uniform grid only; "
                             "set sample.grid='uniform'")
        if guidance is not None and not self.guidable:
            raise ValueError(f"sample.guidance={guidance!r}: sampler {solver!r} samples unguided (leave it None)")

    def solver_model(self, apply):
        """``(params, x_t, t[, cond])`` → the network at extra time(s) 0: the instantaneous velocity. The same
        function object for the same ``apply`` (so ``fg.sample`` compiles once)."""
        cache = self.__dict__.setdefault("_velocity_models", {})
        if apply not in cache:
            names = self.extra_times

            def model(params, x_t, t, *cond):
                return apply(params, x_t, t, *cond, **{n: jnp.zeros_like(t) for n in names})

            cache[apply] = model
        return cache[apply]

    def sample(self, apply, params, noise, *, key, solver: str, num_steps: int, grid: str = "uniform",
               cond=None, guidance=None, null_cond=None, solver_options=None):
        """The method's own jump sampler if ``solver`` is in ``samplers`` (``num_steps`` jumps on a uniform grid;
        ``grid`` must be "uniform"), else ``fg.sample``'s ``solver`` on the network at extra time 0."""
        if solver not in self.samplers:
            import flowgen as fg

            kwargs = {} if cond is None else {"cond": cond}
            if guidance is not None:
                kwargs.update(guidance=guidance, null_cond=null_cond)
            return fg.sample(self.solver_model(apply), self.path, target="velocity", solver=solver,
                             num_steps=num_steps, grid=grid, key=key, noise=noise, params=params,
                             solver_options=solver_options, **kwargs)
        self.check_sampler(solver, num_steps, grid, guidance)
        if guidance is not None and (cond is None or null_cond is None):
            raise ValueError("classifier-free guidance needs cond=... and null_cond=... (the unconditional label)")
        noise = jnp.asarray(noise)
        ts = np.linspace(self.path.t_min, self.path.t_max, int(num_steps) + 1)
        if cond is not None and guidance is not None:
            null_cond = jnp.broadcast_to(jnp.asarray(null_cond, jnp.asarray(cond).dtype), jnp.shape(cond))
        weight = jnp.asarray(1.0 if guidance is None else guidance, jnp.float32)
        return _jump_jit(noise, jnp.asarray(ts, jnp.float32), params, cond, null_cond, weight, method=self,
                         apply=apply, guided=guidance is not None)


@functools.partial(jax.jit, static_argnames=("method", "apply", "guided"))
def _jump_jit(noise, grid, params, cond, null_cond, weight, *, method, apply, guided):
    dtype = noise.dtype
    x0 = (method.path.sigma(grid[0]) * noise).astype(dtype)
    batch = noise.shape[0]

    def call(x, t0, t1):
        """One network call (two passes, batched, under guidance): the average velocity over [t0, t1]."""
        t = jnp.full((batch,), t0, grid.dtype)
        times = method.jump_times(t, jnp.full((batch,), t1, grid.dtype))
        if not guided:
            return apply(params, x, t, *(() if cond is None else (cond,)), **times)
        both = apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, null_cond]),
                     **{k: jnp.concatenate([v, v]) for k, v in times.items()})
        conditional, unconditional = jnp.split(both, 2)
        return unconditional + weight * (conditional - unconditional)

    def body(carry, ends):
        x, nfe = carry
        t0, t1 = ends
        u = call(x, t0, t1)
        nfe = nfe + 1                      # counted where the call is made
        return ((x + (t1 - t0) * u).astype(dtype), nfe), None

    (x, nfe), _ = jax.lax.scan(body, (x0, jnp.zeros((), jnp.int32)), (grid[:-1], grid[1:]))
    return x, {"nfe": nfe, "forward_passes": nfe * (2 if guided else 1), "num_steps": jnp.asarray(
        grid.shape[0] - 1, jnp.int32), "grid": grid}
