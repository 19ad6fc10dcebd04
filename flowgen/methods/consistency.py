"""Continuous-time consistency models (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time
Consistency Models", arXiv:2410.11081): sCT (consistency training from scratch) and sCD (consistency distillation of
a trained flowgen model), in TrigFlow's parameterisation, sampled in 1 or a few steps.

**TrigFlow in flowgen's time.** TrigFlow's time s ∈ [0, π/2] runs from data (s = 0) to noise (s = π/2); flowgen's t
runs from noise (t = 0) to data (t = 1). With s = (π/2)·(1 − t) the trig path (``path.name = "trig"``, the only path
this method takes) is TrigFlow's: α(t) = sin(πt/2) = cos(s), σ(t) = cos(πt/2) = sin(s),

    x_t = cos(s)·x_data + sin(s)·x₀,       x₀ ~ N(0, I),       ds/dt = −π/2.

TrigFlow's noise has standard deviation σ_d (its data are assumed to have σ_d too); flowgen's has 1. The two agree
in units of σ_d: the paper's x_s is σ_d·x_t (and its data σ_d·x_data), so every formula below is the paper's with
x_s = σ_d·x_t, and the network F_θ takes x_s/σ_d = x_t and flowgen's t, as every flowgen network does. The choice
of σ_d (``sigma_d``, default 1.0) therefore does not change the path; it sets the scale of the tangent g in the
paper's units, hence the effect of the normalisation constant c below (g/(‖g‖ + c) with ‖g‖ ∝ σ_d). The paper's
σ_d = 0.5 for images in [−1, 1] is the same model as flowgen data in [−2, 2] with ``sigma_d = 0.5``; the toy uses
1.0. The paper's proposal distribution of s, ln(σ_d·tan s) ~ N(P_mean, P_std²), is flowgen's time sampler "edm"
(ln(σ/α) = ln tan s ~ N(p_mean, p_std²)) with p_mean = P_mean − ln σ_d, p_std = P_std (the paper's CIFAR-10 values
P_mean = −1.0, P_std = 1.4: ``configs/toy2d_consistency.py``); the method takes whatever ``loss.time_sampler`` says.

**Consistency function**: with the network's output F_θ(x_t, t),

    f_θ(x_s, s) = cos(s)·x_s − sin(s)·σ_d·F_θ(x_s/σ_d, s),   in flowgen's units  x̂ = α(t)·x_t − σ(t)·F_θ(x_t, t),

so f_θ(x, 0) = x (the boundary condition holds by construction), and the exact f maps x_t to the data end of its
probability-flow trajectory, Φ_{t→1}(x_t) (``flowgen.analytic.GaussianMixture.flow_map``). In flowgen's terms F_θ is a
"v" prediction on the trig path (v = α·x₀ − σ·x_data = cos(s)·x₀ − sin(s)·x_data is TrigFlow's F target, and the
"v" conversion gives x̂ = α·x_t − σ·F exactly), so ``prediction = "v"``: any ``fg.sample`` solver runs on a trained
model, and one "ddim" step from t = 0 is the 1-step consistency sample, exactly. But F_θ learns the consistency
function, not the posterior mean: f_θ(x_t) is the *flow map's* endpoint, not E[x_data | x_t], so ODE solvers with more
steps integrate a velocity the model was never trained on. Use the method's own sampler (below).

**Loss** (the paper's Eq. (8) and Algorithm 1, with its weighting w(s) = 1/(σ_d·tan s) folded in, as the paper does):
the tangent of the stop-gradient model θ⁻ = sg(θ) (the online parameters, not an EMA) along the probability flow,

    g = cos(s)·df_θ⁻/ds = −cos²(s)·(σ_d·F_θ⁻ − dx_s/ds) − r·cos(s)·sin(s)·(x_s + σ_d·dF_θ⁻/ds),
    g ← g/(‖g‖ + c),                                                (tangent normalisation, per example)
    L(θ) = E[ ‖F_θ(x_t, t) − F_θ⁻(x_t, t) − g‖² / D ],

whose value is E‖g‖²/D and whose gradient is −2·E[gᵀ∇_θF_θ]/D: F moves along +df/ds, the continuous limit of the
discrete consistency loss. dF_θ⁻/ds = ∂_x F·dx_t/ds + ∂_t F·dt/ds is ONE ``jax.jvp`` of the network with tangents
(dx_t/ds, −2/π) on (x_t, t), in float32; dx_s/ds = σ_d·dx_t/ds = −(2/π)·σ_d·u with u the flowgen velocity dx_t/dt:

    sCT (``mode = "sct"``):  u = α̇·x_data + σ̇·x₀, the conditional velocity (as MeanFlow's target uses it);
    sCD (``mode = "scd"``):  u = the frozen teacher's velocity at (x_t, t) (``teacher``: a trained flowgen workdir,
                             loaded once with ``flowgen.load_model(teacher, params="ema")``, its prediction converted
                             to a velocity by ``flowgen.paths.targets``).

At the exact consistency function and the exact marginal velocity, g = 0 identically (the consistency condition
df/ds = 0); with sCT's conditional velocity, g is linear in u before normalisation, so E[g | x_t] = 0 and the
gradient vanishes in expectation (``tests/test_methods_consistency.py``).

**Stabilisers applied**: the TrigFlow parameterisation; the stop-gradient target θ⁻ = sg(θ); tangent warm-up r =
min(1, step/``warmup_steps``) (``state.step``; the paper: 10k steps) on the cos·sin term; tangent normalisation with
c = ``tangent_norm`` (0.1; None turns it off); the proposal time distribution (the time sampler above). **Not
applied**: the learned adaptive weighting e^{w_φ(s)}/D·‖·‖² − w_φ(s) (it needs a second network; here w_φ ≡ 0, the
plain per-example mean), and the paper's architecture changes (positional time embeddings, adaptive double
normalisation, pixel norm) — with the MLP, time features of 10·t instead of 1000·t play the role of its smaller time
embedding scale (the JVP differentiates the network in t, see ``meanflow.py``). With a non-independent coupling the
path's marginals are not those the multistep sampler re-noises to, so the coupling must be "independent".

**Sampling** (``sample.solver = "consistency"``): start from x = x₀ at t = 0 (s = π/2, the paper's σ_d·z); at each of
the N = ``num_steps`` steps, x̂ = f_θ(x, s_k), then re-noise x ← cos(s_{k+1})·x̂ + sin(s_{k+1})·x₀' with fresh x₀'
(the last step ends at s = 0, where this is x̂ itself). s_0 = π/2, and s_1 … s_{N−1} are the first N − 1 of
``intermediate_times`` (TrigFlow times in radians; default (1.1,), the paper's 2-step intermediate time), so N can
be at most 1 + len(intermediate_times). One network call per step: NFE = N, measured as in ``flowgen.methods.jumps``
(``info["nfe"]``, ``info["forward_passes"]``, ``info["num_steps"]``, ``info["grid"]``: the flowgen times t_k =
1 − 2·s_k/π of the calls, then 1). Unguided only.

Options (``config.method.kwargs``): ``mode`` ("sct" or "scd"), ``teacher`` (sCD: a workdir; its path must be this
trig path, its prediction one that converts to a velocity where α = 0 (velocity, data or v), its labels the same),
``sigma_d`` (1.0), ``warmup_steps`` (10000), ``tangent_norm`` (c = 0.1, or None), ``intermediate_times`` ((1.1,)).
From ``config.loss``: time_sampler (+ options), label_dropout; target must be "v" (what F_θ is), weighting "uniform",
coupling "independent".

sCD's teacher is read when the method is built (its config.json, for the checks above; so a trained sCD run loads,
e.g. to sample, only while its teacher's workdir exists) and when the loss is made (its newest good checkpoint, EMA
parameters). Those parameters are closed over by the compiled training step as constants: right for the toy and
small teachers; a large teacher would rather travel in the train state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.couplings import get_coupling
from flowgen.methods.flow_matching import FlowMatching
from flowgen.paths.targets import target_from_pair
from flowgen.paths.time_samplers import get_time_sampler

MODES = ("sct", "scd")
HALF_PI = 0.5 * math.pi
#: Teacher predictions that convert to a velocity on the whole trig path (noise and score need α > 0; α(0) = 0).
TEACHER_TARGETS = ("velocity", "data", "v")


def trig_time(t):
    """TrigFlow's s = (π/2)·(1 − t) of flowgen's t."""
    return HALF_PI * (1.0 - t)


def flowgen_time(s):
    """Flowgen's t = 1 − 2s/π of TrigFlow's s."""
    return 1.0 - s / HALF_PI


def _per_example(v, x):
    return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def consistency_tangent(net, x_t, t, u, r, path, sigma_d=1.0):
    """``(F_θ⁻(x_t, t), g)`` in float32: the network's output and the unnormalised sCM tangent
    g = cos(s)·df/ds (TrigFlow's units, x_s = σ_d·x_t) of a network ``net(x, t)`` at points x_t (B, ...) at flowgen
    times t (B,), with flowgen velocities u = dx_t/dt (B, ...) and warm-up factor r, dF/ds by one ``jax.jvp`` with
    tangents (dx_t/ds, dt/ds) = (−(2/π)·u, −2/π) on (x, t). Zero for the exact consistency function and the exact
    marginal velocity."""
    f32 = lambda a: jnp.asarray(a).astype(jnp.float32)  # noqa: E731
    x, tt = f32(x_t), f32(t)
    dx_ds = -f32(u) / HALF_PI                                          # flowgen units: dx_t/ds
    dt_ds = jnp.full(tt.shape, -1.0 / HALF_PI, jnp.float32)
    f, df_ds = jax.jvp(lambda xx, ts: f32(net(xx, ts)), (x, tt), (dx_ds, dt_ds))
    cos, sin = _per_example(path.alpha(tt), x), _per_example(path.sigma(tt), x)   # cos(s), sin(s)
    # g = −cos²(s)·(σ_d·F − σ_d·dx_t/ds) − r·cos(s)·sin(s)·(σ_d·x_t + σ_d·dF/ds)
    g = sigma_d * (-cos**2 * (f - dx_ds) - f32(r) * cos * sin * (x + df_ds))
    return f, g


def _number(value, name, low, *, low_open=False, integer=False):
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    bad = isinstance(value, bool) or not isinstance(value, kind) or (value <= low if low_open else value < low)
    if bad:
        what = "an integer" if integer else "a number"
        raise ValueError(f"method.kwargs.{name}={value!r}: must be {what} {'>' if low_open else '>='} {low}")


@dataclasses.dataclass(frozen=True, eq=False)
class ConsistencyModel(FlowMatching):
    name: ClassVar[str] = "consistency"
    supports_text: ClassVar[bool] = False   # its loss conditions on labels only (not on caption embeddings)
    samplers: ClassVar[tuple[str, ...]] = ("consistency",)
    stochastic_samplers: ClassVar[tuple[str, ...]] = ("consistency",)    # re-noises between steps

    target: str = "v"
    mode: str = "sct"
    teacher: str | None = None
    sigma_d: float = 1.0
    warmup_steps: int = 10000
    tangent_norm: float | None = 0.1
    intermediate_times: tuple = (1.1,)

    def __post_init__(self):
        if self.path.name != "trig" or (self.path.t_min, self.path.t_max) != (0.0, 1.0):
            raise ValueError(f"path {self.path!r}: method 'consistency' is TrigFlow's parameterisation and needs "
                             "path.name='trig' on its whole interval [0, 1] (the default t_min, t_max)")
        super().__post_init__()
        if self.target != "v":
            raise ValueError(f"loss.target={self.target!r}: method 'consistency' trains F_θ, the trig path's 'v' "
                             "prediction; set loss.target='v'")
        if self.weighting != "uniform":
            raise ValueError(f"loss.weighting={self.weighting!r}: method 'consistency' supports only 'uniform' (its "
                             "weighting is in the tangent)")
        if self.coupling != "independent":
            raise ValueError(f"loss.coupling={self.coupling!r}: method 'consistency' needs 'independent' (its "
                             "multistep sampler re-noises with fresh, independent x₀)")
        if self.mode not in MODES:
            raise ValueError(f"method.kwargs.mode={self.mode!r} is not one of: {', '.join(MODES)}")
        if self.mode == "sct" and self.teacher is not None:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r} is for mode 'scd' (distillation); mode 'sct' "
                             "trains from the data alone: leave teacher None or set mode='scd'")
        if self.mode == "scd":
            self._check_teacher()
        _number(self.sigma_d, "sigma_d", 0, low_open=True)
        _number(self.warmup_steps, "warmup_steps", 0, integer=True)
        if self.tangent_norm is not None:
            _number(self.tangent_norm, "tangent_norm", 0, low_open=True)
        times = self.intermediate_times
        ok = isinstance(times, (tuple, list)) and all(
            not isinstance(s, bool) and isinstance(s, (int, float)) and 0 < s < HALF_PI for s in times)
        if not ok or any(a <= b for a, b in zip([HALF_PI, *times], times, strict=False)):
            raise ValueError(f"method.kwargs.intermediate_times={times!r}: must be TrigFlow times s in (0, π/2) "
                             "(radians), strictly decreasing, e.g. (1.1,)")
        object.__setattr__(self, "intermediate_times", tuple(float(s) for s in times))

    def _check_teacher(self):
        from flowgen import paths as paths_lib
        from flowgen.train import config as config_lib

        if not isinstance(self.teacher, (str, os.PathLike)) or not os.fspath(self.teacher):
            raise ValueError(f"method.kwargs.teacher={self.teacher!r}: mode 'scd' needs the workdir of a trained "
                             "flowgen model (a string)")
        try:
            config = config_lib.saved_config(os.fspath(self.teacher))
        except FileNotFoundError as e:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r}: {e}") from e
        if config.method.name == self.name:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r} is itself a consistency model; the teacher "
                             "must predict the probability-flow velocity (e.g. a flow-matching run)")
        teacher_path = paths_lib.get(config.path.name, **config.path.kwargs.to_dict())
        if teacher_path != self.path:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r} was trained on {teacher_path!r}; the student's "
                             f"path is {self.path!r}: train the teacher on path 'trig'")
        prediction = config_lib.build_method(config).prediction
        if prediction not in TEACHER_TARGETS:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r} predicts {prediction!r}, which gives no "
                             f"velocity where α = 0 (t = 0); valid teacher predictions: {', '.join(TEACHER_TARGETS)}")
        if (config.model.num_classes or None) != self.num_classes:
            raise ValueError(f"method.kwargs.teacher={self.teacher!r} has num_classes={config.model.num_classes or 0}"
                             f"; the student has {self.num_classes or 0}")

    @property
    def prediction(self) -> str:
        return "v"

    # ---------------------------------------------------------------------------------------- the loss
    def teacher_velocity(self):
        """``(x_t, t, cond) -> u`` of the teacher (loaded once, its EMA parameters closed over)."""
        cache = self.__dict__.setdefault("_teacher", [])
        if not cache:
            import flowgen as fg
            from flowgen.paths.targets import get_target

            model = fg.load_model(self.teacher, params="ema")
            apply = model.apply
            if model.run.method.extra_times:
                apply = model.run.method.velocity_model(apply)       # a few-step teacher at extra time 0
            spec, path, params = get_target(model.target), self.path, model.params

            def velocity(x_t, t, cond):
                p = apply(params, x_t, t, *(() if cond is None else (cond,)))
                return spec.velocity(p, x_t, path.coefficients(t))

            cache.append((velocity, tuple(model.element_shape)))
        return cache[0]

    def make_loss(self, apply):
        sampler = get_time_sampler(self.time_sampler, self.path, **dict(self.time_sampler_options))
        couple = get_coupling(self.coupling)
        teacher = self.teacher_velocity() if self.mode == "scd" else None

        def loss(params, state, batch, key):
            k_couple, k_time, k_drop, k_model = jax.random.split(key, 4)
            x_data, noise = couple(k_couple, batch["x"], batch, self.source)
            b = x_data.shape[0]
            t = sampler.sample(k_time, (b,), x_data.dtype)
            x_t = self.path.sample(x_data, noise, t)
            cond = self.training_labels(batch, k_drop)
            if teacher is None:
                u = target_from_pair("velocity", self.path, x_data, noise, t)
            else:
                velocity, shape = teacher
                if tuple(x_t.shape[1:]) != shape:
                    raise ValueError(f"method.kwargs.teacher={self.teacher!r} takes examples of shape {shape}; the "
                                     f"data have {tuple(x_t.shape[1:])}")
                u = jax.lax.stop_gradient(velocity(x_t, t, cond))
            r = (jnp.ones((), jnp.float32) if self.warmup_steps == 0 else
                 jnp.minimum(1.0, jnp.asarray(state.step, jnp.float32) / self.warmup_steps))
            frozen = jax.lax.stop_gradient(params)                         # θ⁻ = sg(θ)
            f_minus, g = consistency_tangent(lambda x, tt: apply(frozen, x, tt, cond, k_model), x_t, t, u, r,
                                             self.path, self.sigma_d)
            norm = jnp.sqrt(jnp.sum(jnp.reshape(g**2, (b, -1)), axis=1))   # ‖g‖ per example
            if self.tangent_norm is not None:
                g = g / _per_example(norm + self.tangent_norm, g)
            pred = apply(params, x_t, t, cond, k_model).astype(jnp.float32)
            if pred.shape != x_t.shape:
                raise ValueError(f"the model returned shape {pred.shape}; expected the input's {x_t.shape}")
            goal = jax.lax.stop_gradient(f_minus + g)
            sq = jnp.sum(jnp.reshape((pred - goal) ** 2, (b, -1)), axis=1)
            value = jnp.mean(sq / sq.dtype.type(x_t[0].size))
            return value, {"loss": value, "tangent_norm": jnp.mean(norm), "warmup_r": r, "t_mean": jnp.mean(t)}

        return loss

    # ---------------------------------------------------------------------------------------- sampling
    def sampler_times(self, num_steps: int) -> np.ndarray:
        """The TrigFlow times s_0 = π/2 > s_1 > … > s_{N−1} of the N network calls, then s_N = 0."""
        return np.array([HALF_PI, *self.intermediate_times[:num_steps - 1], 0.0])

    def check_sampler(self, solver: str, num_steps: int, grid: str, guidance=None) -> None:
        if solver not in self.samplers:
            return
        most = 1 + len(self.intermediate_times)
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= most:
            raise ValueError(f"sample.num_steps={num_steps!r}: sampler 'consistency' takes 1 to {most} steps (1 + "
                             f"len(method.kwargs.intermediate_times), intermediate_times={self.intermediate_times})")
        if grid != "uniform":
            raise ValueError(f"sample.grid={grid!r}: sampler 'consistency' steps at method.kwargs.intermediate_times, "
                             "not on a grid; set sample.grid='uniform' (the default)")
        if guidance is not None:
            raise ValueError(f"sample.guidance={guidance!r}: sampler 'consistency' samples unguided (leave it None)")

    def sample(self, apply, params, noise, *, key, solver: str, num_steps: int, grid: str = "uniform",
               cond=None, guidance=None, null_cond=None, solver_options=None):
        """The consistency sampler if ``solver`` is "consistency", else ``fg.sample``'s ``solver`` on F_θ as the
        trig path's v-prediction (see the module docstring: exact at 1 "ddim" step only)."""
        if solver not in self.samplers:
            return super().sample(apply, params, noise, key=key, solver=solver, num_steps=num_steps, grid=grid,
                                  cond=cond, guidance=guidance, null_cond=null_cond, solver_options=solver_options)
        self.check_sampler(solver, num_steps, grid, guidance)
        if key is None:
            if num_steps > 1:
                raise ValueError(f"sampler 'consistency' at num_steps={num_steps} re-noises: give key=...")
            key = jax.random.key(0)                 # 1 step: the re-noise at s = 0 is multiplied by sin(0) = 0
        noise = jnp.asarray(noise)
        dtype = noise.dtype if jnp.issubdtype(noise.dtype, jnp.floating) else jnp.float32
        ts = jnp.asarray(flowgen_time(self.sampler_times(int(num_steps))), dtype)
        return _consistency_jit(noise, ts, params, cond, key, method=self, apply=apply)


@functools.partial(jax.jit, static_argnames=("method", "apply"))
def _consistency_jit(noise, grid, params, cond, key, *, method, apply):
    dtype = noise.dtype
    path = method.path
    x0 = (path.sigma(grid[0]) * noise).astype(dtype)
    batch = noise.shape[0]
    keys = jax.random.split(key, grid.shape[0] - 1)

    def body(carry, step):
        x, nfe = carry
        t0, t1, k = step
        t = jnp.full((batch,), t0, grid.dtype)
        f = apply(params, x, t, *(() if cond is None else (cond,)))
        nfe = nfe + 1                                       # counted where the call is made
        x_hat = path.alpha(t0) * x - path.sigma(t0) * f    # f_θ(x_s, s) = cos(s)·x − sin(s)·F
        fresh = method.source.sample(k, x.shape, dtype)
        return ((path.alpha(t1) * x_hat + path.sigma(t1) * fresh).astype(dtype), nfe), None

    (x, nfe), _ = jax.lax.scan(body, (x0, jnp.zeros((), jnp.int32)), (grid[:-1], grid[1:], keys))
    return x, {"nfe": nfe, "forward_passes": nfe, "num_steps": jnp.asarray(grid.shape[0] - 1, jnp.int32),
               "grid": grid}
