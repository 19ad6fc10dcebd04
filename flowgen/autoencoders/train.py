"""Train a small KL autoencoder (the architecture of :mod:`flowgen.autoencoders.kl`) on an in-memory image set, for
latent flow matching where no pretrained autoencoder fits (the embedded digits; a class exercise). Rombach et al.
2022 train theirs with an L1 + LPIPS + patch-GAN loss; with no perceptual network here, this is the plain VAE
objective with a small KL weight β (their "KL-reg." autoencoders, β ≈ 1e-6 at f8):

    z = μ(x) + σ(x)·ε,   L = mean_pixels (D(z) − x)² + β · mean_latent ½(μ² + σ² − 1 − log σ²)

Adam with a linear warm-up and cosine decay (optax), batches of rows drawn uniformly with replacement by
``fold_in(key(seed), step)``, the mean loss logged every ``log_every`` steps. After training the latent statistics
of the whole set set the diffusers factors (the SD3 convention): ``shift_factor`` = mean, ``scaling_factor`` =
1 / std of posterior draws, so models train on latents of mean 0 and std 1.

    vae, log = train_autoencoder(images, config, steps=3000)    # images (N, H, W, C) float32 in [−1, 1]
    save_pretrained(vae, folder)                                # a diffusers AutoencoderKL folder

Command line (writes the folder and ``training.json`` beside it; refuses an existing folder)::

    python -m flowgen.autoencoders.train --dataset flowgen_digits --out /tmp/digits_ae
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowgen.autoencoders.config import AutoencoderConfig, config_from_dict
from flowgen.autoencoders.kl import KLAutoencoder
from flowgen.autoencoders.pretrained import Autoencoder

#: The digits autoencoder of notebook 6 and ``configs/digits_latent.py``: 8×8×1 → 4×4×2 (32 numbers for 64 pixels).
DIGITS_CONFIG = {"in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32], "layers_per_block": 1,
                 "latent_channels": 2, "norm_num_groups": 8, "sample_size": 8,
                 "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    kl_weight: float = 1e-4
    seed: int = 0
    log_every: int = 250

    def check(self):
        for k in ("steps", "batch_size", "log_every"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}={v!r}: must be a positive integer")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup={self.warmup!r}: must be an integer in [0, steps={self.steps})")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: must be positive")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight={self.kl_weight!r}: must be >= 0")


def vae_loss(module: KLAutoencoder, params, x, key, kl_weight):
    """(loss, (reconstruction mse, kl per latent element)) of one batch (the module docstring's L)."""
    mean, std = module.apply(params, x, method="encode")
    z = mean + std * jax.random.normal(key, mean.shape)
    y = module.apply(params, z, method="decode")
    mse = jnp.mean((y - x) ** 2)
    kl = 0.5 * jnp.mean(mean**2 + std**2 - 1.0 - 2.0 * jnp.log(std))
    return mse + kl_weight * kl, (mse, kl)


def _check_images(images, config: AutoencoderConfig) -> np.ndarray:
    images = np.asarray(images)
    f = config.downsampling_factor
    if images.ndim != 4 or images.shape[-1] != config.in_channels or images.shape[1] % f or images.shape[2] % f:
        raise ValueError(f"images must be (N, H, W, {config.in_channels}) with H and W multiples of {f}; "
                         f"got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [-1, 1]; got {images.dtype}")
    return images.astype(np.float32)


def train_autoencoder(images, config: AutoencoderConfig | dict, settings: TrainSettings = TrainSettings(),
                      log=print) -> tuple[Autoencoder, dict]:
    """Train on ``images`` (N, H, W, C) float32 in [−1, 1]; returns the autoencoder (its config carrying the fitted
    ``shift_factor`` / ``scaling_factor``) and a log {"steps", "loss", "mse", "kl"} every ``log_every`` steps."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    settings.check()
    data = jnp.asarray(_check_images(images, config))
    module = KLAutoencoder(config)
    key = jax.random.key(settings.seed)
    params = module.init(jax.random.fold_in(key, 0), data[:1])
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, settings.warmup, settings.steps)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)
    loss_fn = jax.value_and_grad(functools.partial(vae_loss, module), has_aux=True)

    # One compiled step per call: XLA:CPU runs these small convolutions several times slower inside a lax.scan
    # (measured: 2.6 s against 0.17 s a step at batch 128), and the Python loop costs little beside a step.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, s):
        k = jax.random.fold_in(jax.random.fold_in(key, 1), s)
        rows = jax.random.randint(jax.random.fold_in(k, 0), (settings.batch_size,), 0, data.shape[0])
        (loss, (mse, kl)), grads = loss_fn(params, data[rows], jax.random.fold_in(k, 1), settings.kl_weight)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([loss, mse, kl])

    history = {"steps": [], "loss": [], "mse": [], "kl": []}
    t0, sums = time.perf_counter(), []
    for s in range(settings.steps):
        params, opt_state, out = train_step(params, opt_state, jnp.int32(s))
        sums.append(out)
        if (s + 1) % settings.log_every == 0 or s + 1 == settings.steps:
            loss, mse, kl = (float(v) for v in jnp.stack(sums).mean(0))
            sums = []
            for k, v in zip(("steps", "loss", "mse", "kl"), (s + 1, loss, mse, kl), strict=True):
                history[k].append(v)
            if log:
                log(f"step {s + 1}/{settings.steps}: loss {loss:.5f}  mse {mse:.5f}  kl {kl:.4f}  "
                    f"({time.perf_counter() - t0:.1f} s)")
    shift, scale = latent_factors(module, params, data, jax.random.fold_in(key, 2))
    config = dataclasses.replace(config, shift_factor=shift, scaling_factor=scale)
    return Autoencoder(config, params), history


def latent_factors(module, params, data, key, batch: int = 512) -> tuple[float, float]:
    """(shift, scaling): the mean and 1 / std of posterior draws z = μ + σ·ε over ``data``, as Python floats."""
    encode = jax.jit(functools.partial(module.apply, method="encode"))
    draws = []
    for i in range(0, data.shape[0], batch):
        mean, std = encode(params, data[i:i + batch])
        draws.append(np.asarray(mean + std * jax.random.normal(jax.random.fold_in(key, i), mean.shape), np.float64))
    z = np.concatenate(draws)
    return float(z.mean()), float(1.0 / z.std())


def reconstruct(vae: Autoencoder, images, batch: int = 512) -> np.ndarray:
    """decode(posterior mean) of ``images``, batch by batch."""
    images = np.asarray(images, np.float32)
    return np.concatenate([np.asarray(vae.decode(vae.encode(images[i:i + batch])[0]))
                           for i in range(0, len(images), batch)])


def _read_images(dataset: str, split: str, data_dir: str | None) -> np.ndarray:
    """Every image of ``dataset``/``split`` in [−1, 1] (in memory: small data sets only)."""
    from flowgen.latents import protocol, sources

    source = sources.open_images(dataset, split, data_dir)
    side = np.asarray(source.item(0)[0]).shape[0]          # "stored": every image must be square at this side
    images = np.stack([protocol.prepare(source.item(i)[0], "stored", side) for i in range(len(source))])
    return protocol.to_autoencoder_input(images, images.shape[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowgen.autoencoders.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="an image data set small enough to hold in memory")
    parser.add_argument("--out", required=True, help="the autoencoder folder to write (never replaced)")
    parser.add_argument("--config", default=None, help="a diffusers AutoencoderKL config.json (default: the digits "
                                                       "autoencoder, flowgen.autoencoders.train.DIGITS_CONFIG)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--data_dir", default=None)
    for f in dataclasses.fields(TrainSettings):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    from pathlib import Path

    from flowgen.autoencoders.config import read_config
    from flowgen.autoencoders.save import save_pretrained
    from flowgen.latents import sources

    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    try:
        sources.check_dataset(args.dataset)
        settings.check()
        config = read_config(args.config) if args.config else config_from_dict(DIGITS_CONFIG)
        if Path(args.out).exists():
            raise FileExistsError(f"--out {args.out} exists; an autoencoder folder is never replaced")
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = _read_images(args.dataset, args.split, args.data_dir)
    vae, history = train_autoencoder(images, config, settings)
    mse = float(np.mean((reconstruct(vae, images) - images) ** 2))
    record = {"dataset": args.dataset, "split": args.split, "num_images": len(images),
              "settings": dataclasses.asdict(settings), "final": {k: v[-1] for k, v in history.items()},
              "reconstruction_mse_of_mean": mse, "num_params": vae.num_params}
    folder = save_pretrained(vae, args.out, extra_files={"training.json": record})
    print(f"wrote {folder}: {vae.num_params:,} parameters, reconstruction mse {mse:.5f} on {args.split}, "
          f"shift {vae.shift_factor:.4f}, scaling {vae.scaling_factor:.4f}")
    print(json.dumps(record["final"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
