"""Training objectives for any path and any prediction target: ``make_loss(...) -> loss_fn(params, batch, key)``.

For a batch of data, a coupling gives noise, a time sampler gives t, and with ``x_t = α(t)·x_data + σ(t)·noise``

    L(θ) = E_t E_(x_data, noise) [ w_T(t) · mean_dims (F_θ(x_t, t) − T(x_data, noise, t))² ]

where T is the target (velocity: flow matching; noise: DDPM; data; v; score: denoising score matching).

Weightings are defined once, as weights w_x(t) on the *data-prediction* error, and applied exactly in whatever
target the network outputs. At fixed x_t every target's error is a multiple of the data error, F_T − T = c_T·(x̂ − x):

    c_data = 1,  c_noise = −α/σ,  c_v = −(α² + σ²)/σ,  c_velocity = α̇ − σ̇·α/σ = α·λ̇,  c_score = α/σ²

so w_T = w_x / c_T². The named weightings (λ = log(α/σ), SNR = e^{2λ}, σ̃ = σ/α):

    uniform      w_T = 1 (the plain objective of the chosen target; w_x is not used)
    snr          w_x = SNR                       — the DDPM ε-loss (uniform in noise space)
    min_snr      w_x = min(SNR, γ), γ = 5        — Hang et al. 2023
    edm          w_x = (σ̃² + σ_data²)/(σ̃·σ_data)²   — Karras et al. 2022, λ(σ), σ_data = 0.5
    likelihood   w_x = g²·α²/σ⁴ = 2·λ̇·SNR        — score_sde's likelihood weighting g² on the score error

Weights are computed with λ clipped to [−20, 20]; this only matters at the ends of a path where α or σ vanish.
Label dropout for classifier-free guidance replaces a label by the null label with probability ``label_dropout``;
with ``text_cond`` the conditioning is a caption's precomputed embeddings ``{"context": batch["context"], "pooled":
batch["pooled"]}`` and a dropped caption is all zeros (the null caption, ``flowgen.data.text``).

The model is called as ``model(params, x_t, t, cond, rng)`` with t of shape (B,), cond the (possibly dropped) labels,
caption embeddings or None, and rng a key for dropout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.couplings import Coupling, get_coupling
from flowgen.paths.schedules import Path, host_eval
from flowgen.paths.targets import check_target, get_target, target_from_pair
from flowgen.paths.time_samplers import TimeSampler, get_time_sampler
from flowgen.sources import GAUSSIAN, Source

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm", "likelihood")
TEXT_KEYS = ("context", "pooled")     # a caption's precomputed embeddings in a batch (flowgen.data.text)
_LAMBDA_CLIP = 20.0


def _log_data_weight(weighting: str, path: Path, t, gamma: float, sigma_data: float):
    lam = jnp.clip(path.log_snr(t), -_LAMBDA_CLIP, _LAMBDA_CLIP)
    if weighting == "snr":
        return 2.0 * lam
    if weighting == "min_snr":
        return jnp.minimum(2.0 * lam, math.log(gamma))
    if weighting == "edm":
        # (σ̃² + σ_d²)/(σ̃σ_d)² = (1 + σ_d²·e^{2λ})/σ_d², with σ̃ = e^{−λ}
        return jnp.logaddexp(0.0, 2.0 * lam + 2.0 * math.log(sigma_data)) - 2.0 * math.log(sigma_data)
    if weighting == "likelihood":
        d_lam = jax.jvp(path.log_snr, (t,), (jnp.ones_like(t),))[1]
        return math.log(2.0) + jnp.log(d_lam) + 2.0 * lam
    raise ValueError(f"unknown weighting {weighting!r}; valid weightings: {', '.join(WEIGHTINGS)}")


def _log_target_scale_sq(target: str, path: Path, t):
    """log c_T² (see module docstring; each target knows its own), with λ clipped so the ends of a path stay
    finite."""
    lam = jnp.clip(path.log_snr(t), -_LAMBDA_CLIP, _LAMBDA_CLIP)
    return get_target(target).log_scale_sq(*path.coefficients(t), lam)


def loss_weight(weighting: str, target: str, path: Path, t, gamma: float = 5.0, sigma_data: float = 0.5):
    """w_T(t) for the named weighting applied to ``target`` (shape of t)."""
    t = jnp.asarray(t)
    if weighting == "uniform":
        return jnp.ones_like(t)
    return jnp.exp(_log_data_weight(weighting, path, t, gamma, sigma_data) - _log_target_scale_sq(target, path, t))


def drop_labels(key, labels, rate: float, null_label: int):
    """Classifier-free guidance training: each of (B,) labels becomes ``null_label`` with probability ``rate``."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def make_loss(
    model: Callable,
    path: Path,
    target: str = "velocity",
    weighting: str = "uniform",
    time_sampler: str | TimeSampler = "uniform",
    coupling: str | Coupling = "independent",
    *,
    label_dropout: float = 0.0,
    null_label: int | None = None,
    gamma: float = 5.0,
    sigma_data: float = 0.5,
    time_sampler_options: dict | None = None,
    coupling_options: dict | None = None,
    source: Source = GAUSSIAN,
    text_cond: bool = False,
):
    """A pure ``loss_fn(params, batch, key) -> (loss, aux)``; batch = {"x": (B, ...), optional "label": (B,),
    optional "noise" (coupling "given"), optional "t": (B,) to fix the times; with ``text_cond`` "context"
    (B, L, D_ctx) and "pooled" (B, D_pool)}. x₀ ("noise") is drawn from ``source`` (N(0, I) by default) and paired
    with the data by ``coupling``. All options are checked here."""
    check_target(target)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid weightings: {', '.join(WEIGHTINGS)}")
    sampler = get_time_sampler(time_sampler, path, **(time_sampler_options or {}))
    couple = get_coupling(coupling, **(coupling_options or {}))
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1]; got {label_dropout!r}")
    if label_dropout > 0 and null_label is None and not text_cond:
        raise ValueError("label_dropout > 0 needs null_label (the label index meaning 'no label', e.g. num_classes)")
    if not (gamma > 0 and sigma_data > 0):
        raise ValueError(f"gamma and sigma_data must be > 0; got gamma={gamma!r}, sigma_data={sigma_data!r}")
    ends = np.array([sampler.t_min, sampler.t_max])
    if get_target(target).infinite_where_sigma_is_zero and np.any(host_eval(path.sigma, ends) <= 0):
        raise ValueError(f"the {target} target is infinite where σ = 0; train on t_max < {sampler.t_max} for "
                         f"{path!r}")
    end_weights = host_eval(lambda t: loss_weight(weighting, target, path, t, gamma, sigma_data), ends)
    if not np.all(np.isfinite(end_weights)):
        raise ValueError(f"weighting {weighting!r} for target {target!r} is not finite at t in {ends.tolist()} on "
                         f"{path!r}; narrow the time sampler's interval (t_min/t_max)")

    def loss_fn(params, batch, key):
        x_data = batch["x"]
        k_couple, k_time, k_drop, k_model = jax.random.split(key, 4)
        x_data, noise = couple(k_couple, x_data, batch, source)
        b = x_data.shape[0]
        t = batch["t"] if "t" in batch else sampler.sample(k_time, (b,), x_data.dtype)
        x_t = path.sample(x_data, noise, t)
        goal = jax.lax.stop_gradient(target_from_pair(target, path, x_data, noise, t))
        if text_cond:
            missing = [k for k in TEXT_KEYS if k not in batch]
            if missing:
                raise ValueError(f"a text-conditioned loss needs the batch entries {list(TEXT_KEYS)} (precomputed "
                                 f"caption embeddings); the batch lacks {missing}")
            cond = {k: batch[k] for k in TEXT_KEYS}
            if label_dropout > 0:   # dropped captions become the null caption: zeros
                drop = jax.random.bernoulli(k_drop, label_dropout, (b,))
                cond = {k: jnp.where(drop.reshape((b,) + (1,) * (v.ndim - 1)), jnp.zeros((), v.dtype), v)
                        for k, v in cond.items()}
        else:
            cond = batch.get("label")
            if cond is not None and label_dropout > 0:
                cond = drop_labels(k_drop, cond, label_dropout, null_label)
        pred = model(params, x_t, t, cond, k_model)
        if pred.shape != x_t.shape:
            raise ValueError(f"the model returned shape {pred.shape}; expected the input's {x_t.shape}")
        err = jnp.mean(jnp.reshape((pred.astype(jnp.float32) - goal.astype(jnp.float32)) ** 2, (b, -1)), axis=1)
        w = jax.lax.stop_gradient(loss_weight(weighting, target, path, t, gamma, sigma_data))
        loss = jnp.mean(w * err)
        return loss, {"loss": loss, "mse": jnp.mean(err), "t_mean": jnp.mean(t)}

    return loss_fn
