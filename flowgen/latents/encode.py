"""Encode an image dataset once into autoencoder latents: ``python -m flowgen.latents``.

    python -m flowgen.latents --dataset=imagenet2012 --split=train --autoencoder=sd-vae-ft-mse \\
        --resolution=256 --out=latents/imagenet256_sd-vae-ft-mse

For every image the posterior mean and std (unscaled, diffusers' ``latent_dist.mean`` / ``.std``) are stored, of the
image and of its horizontal flip, as DiT and SiT keep both (Peebles & Xie 2023; Ma et al. 2024): training then draws
z = mean + std·ε and one of the two copies afresh each step (``data.name = "latents"``). The output directory::

    OUT/mean.npy        (N, F, h, w, Z)   F = 2 copies (0: as is, 1: flipped) or 1 without flips
    OUT/std.npy         (N, F, h, w, Z)
    OUT/label.npy       (N,) int32         labelled datasets only
    OUT/provenance.json                    autoencoder (folder, config, weights' sha256, scaling, shift), source
                                           (dataset, split, count), crop/resize protocol, flips, dtype, date, version

Plain ``.npy`` files, so training memory-maps them and reads only its rows.

Work is cut in chunks of ``chunk`` images; process p of P encodes chunks i ≡ p (mod P), its batches split over its
local devices (``flowgen.evals.sharded``: each device encodes fixed micro-batches of ``micro_batch`` images, so an
image's latents are the same bits whatever the device or process count). Chunks are written straight into their rows
of the final arrays (preallocated in ``OUT.parts/``) and marked done (``OUT.parts/chunk-XXXXX.done``) once on disk; a
killed run resumes from the marks and its arrays are byte-identical to an uninterrupted run's (the provenance differs
only in ``created``). When every chunk is done, process 0 writes the provenance and renames the finished folder to
``OUT``. An existing ``OUT`` is never touched: the same request returns its provenance, any other is refused.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import shutil

import numpy as np

from flowgen.latents import protocol as protocol_lib
from flowgen.latents import sources

log = logging.getLogger("flowgen")

FORMAT = "flowgen-latents/1"
ARRAYS = ("mean", "std", "label")
DTYPES = ("float32", "float16")
_NOT_IDENTITY = ("created",)


def sha256(file: str, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class _EncodeBlock:
    """(m, H, W, C) images → (mean, std), each (m, F, h, w, Z): the image and, with ``flips``, its mirror."""

    module: object
    flips: bool

    def __call__(self, params, block):
        import jax.numpy as jnp

        x = jnp.concatenate([block, block[:, :, ::-1]]) if self.flips else block
        mean, std = self.module.apply(params, x, method="encode")
        copies = 2 if self.flips else 1
        split = lambda a: jnp.swapaxes(a.reshape(copies, block.shape[0], *a.shape[1:]), 0, 1)  # noqa: E731
        return split(mean), split(std)


def _create_array(file: str, dtype, shape) -> None:
    """A preallocated .npy (header written, data sparse) at ``file``, created atomically once: every process may
    call this; a file that exists must have this header (else FileExistsError)."""
    shape = tuple(int(k) for k in shape)
    if not os.path.exists(file):
        tmp = f"{file}.{os.getpid()}.tmp"
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
        try:
            os.link(tmp, file)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    found = np.load(file, mmap_mode="r")
    if found.shape != tuple(shape) or found.dtype != np.dtype(dtype):
        raise FileExistsError(f"{file} holds {found.dtype} {found.shape}, not {np.dtype(dtype)} {tuple(shape)}; "
                              "move it away")


def _write_json(file: str, value: dict) -> None:
    with open(f"{file}.{os.getpid()}.tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{file}.{os.getpid()}.tmp", file)


def read_provenance(folder: str) -> dict:
    with open(os.path.join(folder, "provenance.json")) as f:
        return json.load(f)


def _identity(provenance: dict) -> dict:
    return {k: v for k, v in provenance.items() if k not in _NOT_IDENTITY}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The keys (dotted, innermost) whose values differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def encode_dataset(out: str, *, dataset: str, autoencoder: str, split: str = "train", resolution: int = 256,
                   protocol: str = "adm", flips: bool = True, num_images: int | None = None, dtype: str = "float32",
                   chunk: int = 1024, micro_batch: int = 8, batch_size: int = 256, data_dir: str | None = None,
                   mock: bool = False, process_index: int | None = None,
                   process_count: int | None = None) -> dict | None:
    """Encode ``dataset``/``split`` (its first ``num_images`` records, default all) with the diffusers autoencoder
    folder (or known name) ``autoencoder`` into the folder ``out``; returns the provenance (None on a process other
    than 0, which does not publish). See the module docstring for the layout, sharding and resumption.
    ``process_index``/``process_count`` default to JAX's."""
    import jax

    from flowgen import __version__, autoencoders
    from flowgen.evals import sharded

    sources.check_dataset(dataset)
    protocol_lib.check_protocol(protocol, resolution, 1)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of: {', '.join(DTYPES)}")
    for name, value in (("chunk", chunk), ("micro_batch", micro_batch), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer >= 1")
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int)
                                   or num_images < 1):
        raise ValueError(f"num_images={num_images!r}: must be None (all) or an integer >= 1")
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= p < count:
        raise ValueError(f"process_index={p} must be in [0, process_count={count})")

    vae = autoencoders.from_pretrained(autoencoder)          # FileNotFoundError with what to fetch
    protocol_lib.check_protocol(protocol, resolution, vae.downsampling_factor)
    images = sources.open_images(dataset, split, data_dir, mock)
    n = len(images) if num_images is None else num_images
    if n > len(images):
        raise ValueError(f"num_images={n}: {dataset}/{split} has only {len(images)} images")
    copies = 2 if flips else 1
    f = vae.downsampling_factor
    latent_shape = (resolution // f, resolution // f, vae.latent_channels)
    weights = os.path.join(vae.folder, autoencoders.pretrained.WEIGHTS)
    with open(os.path.join(vae.folder, "config.json")) as fh:
        ae_config = json.load(fh)
    provenance = {
        "format": FORMAT,
        "autoencoder": {"name": os.path.basename(os.path.normpath(vae.folder)), "folder": os.fspath(vae.folder),
                        "config": ae_config, "weights": os.path.basename(weights), "weights_sha256": sha256(weights)},
        "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor,
        "source": {"dataset": dataset, "tfds_name": images.tfds_name, "split": split, "num_images": n,
                   "split_size": len(images), "mock": bool(mock)},
        "protocol": {"name": protocol, "resolution": resolution, "description": protocol_lib.PROTOCOLS[protocol],
                     "pixels": "uint8 p -> p*2/255 - 1; greyscale repeated to RGB"},
        "flips": bool(flips), "copies": ["as stored", "horizontally flipped"][:copies],
        "dtype": dtype, "latent_shape": list(latent_shape), "num_classes": images.num_classes,
        "arrays": {"mean": [n, copies, *latent_shape], "std": [n, copies, *latent_shape],
                   **({"label": [n]} if images.num_classes else {})},
        "chunk": chunk, "micro_batch": micro_batch, "flowgen_version": __version__,
    }
    out = os.path.abspath(os.fspath(out))
    parts = f"{out}.parts"
    if os.path.lexists(out):
        found = read_provenance(out) if os.path.isfile(os.path.join(out, "provenance.json")) else {}
        if _identity(found) != _identity(provenance):
            differ = _differences(_identity(found), _identity(provenance)) if found else ["it is not a latent dataset"]
            raise FileExistsError(f"{out} exists ({', '.join(differ)} differ); it is never replaced: choose another "
                                  "--out, or move it away")
        log.info("latents %s already written; nothing to do", out)
        _remove_own_parts(parts, provenance)
        return found
    data = os.path.join(parts, "data")
    os.makedirs(data, exist_ok=True)
    request = os.path.join(parts, "request.json")
    if os.path.exists(request):
        with open(request) as fh:
            if _identity(json.load(fh)) != _identity(provenance):
                raise FileExistsError(f"{parts} holds chunks of another request (its request.json differs); "
                                      "finish that request or move it away")
    elif p == 0 or count == 1:
        _write_json(request, provenance)
    for name, shape in provenance["arrays"].items():
        _create_array(os.path.join(data, f"{name}.npy"), np.int32 if name == "label" else dtype, shape)

    mesh = sharded.data_mesh(jax.local_devices())
    fn = _EncodeBlock(vae.module, bool(flips))
    num_chunks = -(-n // chunk)
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i in range(p, num_chunks, count):
            mark = os.path.join(parts, f"chunk-{i:05d}.done")
            if os.path.exists(mark):
                continue
            rows = range(i * chunk, min(n, (i + 1) * chunk))
            items = list(pool.map(functools.partial(_load, images, protocol, resolution), rows))
            pixels = protocol_lib.to_autoencoder_input(np.stack([x for x, _ in items]), vae.config.in_channels)
            pad = chunk - len(pixels)        # every chunk has one shape: one compilation (the last is cut back)
            pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]), pixels.dtype)]) if pad else pixels
            means, stds = [], []
            for mean, std in sharded.batches(fn, vae.params, pixels, batch_size=batch_size,
                                             micro_batch=micro_batch, mesh=mesh):
                means.append(mean)
                stds.append(std)
            arrays = {"mean": np.concatenate(means)[:len(rows)], "std": np.concatenate(stds)[:len(rows)]}
            if not np.all(np.isfinite(arrays["mean"])) or not np.all(np.isfinite(arrays["std"])):
                raise FloatingPointError(f"non-finite latents in chunk {i} (images {rows.start}..{rows.stop - 1})")
            if images.num_classes:
                arrays["label"] = np.asarray([label for _, label in items], np.int32)
            for name, value in arrays.items():
                target = np.load(os.path.join(data, f"{name}.npy"), mmap_mode="r+")
                target[rows.start:rows.stop] = value.astype(target.dtype)
                target.flush()
                del target
            with open(f"{mark}.tmp", "w") as fh:
                fh.write(f"{rows.start} {rows.stop}\n")
            os.replace(f"{mark}.tmp", mark)
            log.info("latents: chunk %d/%d (images %d..%d)", i + 1, num_chunks, rows.start, rows.stop - 1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("flowgen.latents: chunks done")
    missing = [i for i in range(num_chunks) if not os.path.exists(os.path.join(parts, f"chunk-{i:05d}.done"))]
    if p != 0:
        return None
    if missing:
        raise RuntimeError(f"chunks {missing[:8]}{'...' if len(missing) > 8 else ''} of {parts} are not done: run "
                           "the other processes' shares (same command), then this again")
    provenance["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _write_json(os.path.join(data, "provenance.json"), provenance)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} appeared while encoding; it is never replaced (the latents stay in {data})")
    os.rename(data, out)
    shutil.rmtree(parts)
    log.info("latents: %d images (%d copies each) written to %s", n, copies, out)
    return read_provenance(out)


def _load(images, protocol: str, resolution: int, i: int):
    image, label = images.item(i)
    return protocol_lib.prepare(np.asarray(image), protocol, resolution), label


def _remove_own_parts(parts: str, provenance: dict) -> None:
    """The parts of a run killed after publishing (same request) are left over: remove them."""
    request = os.path.join(parts, "request.json")
    if os.path.exists(request):
        with open(request) as fh:
            if _identity(json.load(fh)) == _identity(provenance):
                shutil.rmtree(parts)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flowgen.latents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(sources.dataset_names())}")
    parser.add_argument("--autoencoder", required=True, help="a diffusers AutoencoderKL folder or a known name")
    parser.add_argument("--out", required=True, help="the latent dataset's folder (never replaced)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--protocol", default="adm", help=f"one of: {', '.join(protocol_lib.PROTOCOLS)}")
    parser.add_argument("--no_flips", action="store_true", help="store no horizontally flipped copy")
    parser.add_argument("--num_images", type=int, default=None, help="the first N images (default: all)")
    parser.add_argument("--dtype", default="float32", help=f"one of: {', '.join(DTYPES)}")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--micro_batch", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--mock", action="store_true", help="TFDS's mock data (random records; smoke tests)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False                   # TFDS configures the root logger too: one line per message
    try:
        provenance = encode_dataset(args.out, dataset=args.dataset, autoencoder=args.autoencoder, split=args.split,
                                    resolution=args.resolution, protocol=args.protocol, flips=not args.no_flips,
                                    num_images=args.num_images, dtype=args.dtype, chunk=args.chunk,
                                    micro_batch=args.micro_batch, batch_size=args.batch_size,
                                    data_dir=args.data_dir, mock=args.mock)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}")
        return 2
    if provenance is not None:
        print(json.dumps(provenance, indent=1))
    return 0
