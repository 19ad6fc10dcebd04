"""Train the digits-FID classifier and write its weights, sha256 and accuracy into ``flowgen/evals/data/``.

    python -m flowgen.evals.train_digits_classifier                  # the shipped weights (about a minute on a CPU)
    python -m flowgen.evals.train_digits_classifier --out-dir /tmp/c --epochs 5   # quick run elsewhere

Trains ``flowgen.evals.digits_fid.DigitsClassifier`` on the ``flowgen_digits`` train split only (1,500 images,
the split the digits configs train on) with cross-entropy, AdamW and a cosine learning rate, augmenting each image
by a random small affine warp (rotation ±10°, scale ±10 %, shift ±1 pixel; background −1 outside). The number of
epochs is fixed in advance; the test split (297 images) is never used for training or selection, only measured
at the end. Everything is seeded, and the weights file is written byte-deterministically (fixed zip timestamps),
so the same software on the same machine reproduces the same sha256; on other machines the accuracy is the check.
Existing weights are not overwritten unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowgen.evals import digits_fid

DEFAULTS = {"epochs": 60, "batch_size": 100, "learning_rate": 5e-3, "weight_decay": 1e-4, "max_shift": 1.0,
            "max_rotation": 10.0, "max_scale": 0.1, "seed": 0}


def random_affine(key: jax.Array, images: jax.Array, max_shift: float, max_rotation: float,
                  max_scale: float) -> jax.Array:
    """Warp each image (N, 8, 8, 1) by a random rotation (± max_rotation degrees), isotropic scaling
    (1 ± max_scale) and shift (± max_shift pixels) about its centre; bilinear, background (−1) outside."""
    n = images.shape[0]
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-max_rotation, maxval=max_rotation))
    scale = 1.0 + jax.random.uniform(k_scale, (n,), minval=-max_scale, maxval=max_scale)
    shift = jax.random.uniform(k_shift, (n, 2), minval=-max_shift, maxval=max_shift)
    grid = jnp.stack(jnp.meshgrid(jnp.arange(8.0), jnp.arange(8.0), indexing="ij")) - 3.5   # (2, 8, 8) centred

    def one(image, angle, scale, shift):
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        inverse = jnp.array([[cos, sin], [-sin, cos]]) / scale       # output pixel -> source pixel
        source = jnp.einsum("ij,jhw->ihw", inverse, grid - shift[:, None, None]) + 3.5
        warped = jax.scipy.ndimage.map_coordinates(image[..., 0], list(source), order=1, mode="constant",
                                                   cval=-1.0)
        return warped[..., None]

    return jax.vmap(one)(images, angle, scale, shift)


def train(epochs: int, batch_size: int, learning_rate: float, weight_decay: float, max_shift: float,
          max_rotation: float, max_scale: float, seed: int) -> dict:
    """Return the trained variables ``{"params": ...}`` (float32)."""
    images, labels = digits_fid.split_images("train")
    n = images.shape[0]
    if n % batch_size:
        raise ValueError(f"batch_size must divide the {n} training images; got {batch_size}")
    steps_per_epoch = n // batch_size
    model = digits_fid.DigitsClassifier()
    key = jax.random.key(seed)
    init_key, key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros((1, 8, 8, 1), jnp.float32))
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = tx.init(variables)
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)

    def loss_fn(variables, x, y):
        logits, _ = model.apply(variables, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def epoch(carry, key):
        variables, opt_state = carry
        perm_key, warp_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, n).reshape(steps_per_epoch, batch_size)

        def step(carry, inputs):
            variables, opt_state = carry
            idx, step_key = inputs
            x = random_affine(step_key, images[idx], max_shift, max_rotation, max_scale)
            loss, grads = jax.value_and_grad(loss_fn)(variables, x, labels[idx])
            updates, opt_state = tx.update(grads, opt_state, variables)
            return (optax.apply_updates(variables, updates), opt_state), loss

        (variables, opt_state), losses = jax.lax.scan(step, (variables, opt_state),
                                                      (order, jax.random.split(warp_key, steps_per_epoch)))
        return (variables, opt_state), losses.mean()

    carry = (variables, opt_state)
    for i, epoch_key in enumerate(jax.random.split(key, epochs)):
        carry, loss = epoch(carry, epoch_key)
        if (i + 1) % 10 == 0 or i + 1 == epochs:
            print(f"epoch {i + 1}/{epochs}: train loss {float(loss):.4f}", flush=True)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), carry[0])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive (readable by np.load) whose bytes depend only on the arrays: sorted names, fixed dates."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(Path(digits_fid.__file__).parent / "data"),
                        help="folder for digits_classifier.npz and .json (default: the package's data folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing weights in --out-dir")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    settings = {name: getattr(args, name) for name in DEFAULTS}

    out_dir = Path(args.out_dir)
    weights_path, meta_path = out_dir / digits_fid.WEIGHTS_FILE, out_dir / digits_fid.METADATA_FILE
    if not args.overwrite and (weights_path.exists() or meta_path.exists()):
        raise SystemExit(f"{weights_path} or {meta_path} exists; pass --overwrite to replace it")

    variables = train(**settings)
    data = npz_bytes(digits_fid.flatten(variables["params"]))
    record = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "num_params": int(sum(a.size for a in jax.tree.leaves(variables))),
        "feature_dim": digits_fid.FEATURE_DIM,
        "train_accuracy": digits_fid.accuracy(variables, "train"),
        "test_accuracy": digits_fid.accuracy(variables, "test"),
        "test_count": int(len(digits_fid.split_images("test")[1])),
        "settings": settings,
        "command": "python -m flowgen.evals.train_digits_classifier",
        "software": {"jax": jax.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path.write_bytes(data)
    meta_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("sha256", "bytes", "train_accuracy", "test_accuracy")}))
    return record


if __name__ == "__main__":
    main()
