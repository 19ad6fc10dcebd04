"""Reflow pairs (Liu, Gong & Liu 2023, "Flow Straight and Fast"): a trained flow's noise → data couplings, written
once as a pairs data set with its provenance, for training the next rectified flow or a one-step student.

The k-rectified flow is flow matching on the pairs of the (k−1)-th: for x₀ from the teacher's source,

    x₁ = Φ_{t_min→t_max}(σ(t_min)·x₀)          (the teacher's probability-flow ODE, solved accurately)

and the (k)-RF trains with ``data.name = "pairs"``, ``data.kwargs.file = FILE`` and ``loss.coupling = "given"``
(x_t = α(t)·x₁ + σ(t)·x₀ on the same pair); ``method.name = "distill"`` fits a one-step model to the same pairs.
Rectifying never increases the transport cost and makes paths straighter (Liu et al., Theorems 3.3 and 3.7).

    python -m flowgen.reflow --teacher=WORKDIR --out=pairs.npz --num_pairs=50000 [--solver=rk4 --num_steps=32]

Pairs are drawn in chunks of ``chunk`` on every device (the batch axis sharded, as the sweep samples): one jitted
solve per chunk (one compilation for all), no host round trip per step. Chunk i's x₀ comes from the key
``fold_in(key(seed), i)``, so the file is a pure function of its provenance. Each chunk is written straight into its
rows of the final file's layout (``flowgen.data.pairs.PairsWriter``, preallocated in ``FILE.parts/pairs.tmp``) and
marked done (``FILE.parts/chunk-XXXXX.json``, with its measured NFE); nothing is concatenated in memory and the disk
holds the pairs once. A killed run resumes from the chunks marked done, and its file is bit-identical to an
uninterrupted run's (up to the ``created`` time). The file is published once, exclusively (a hard link), then the
parts are removed; an existing file is returned as is if its provenance matches the request and refused (never
replaced) otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("flowgen")

#: Provenance keys that do not identify the pairs (when they were made).
_NOT_IDENTITY = ("created",)


def _chunk_file(parts: str, index: int, ext: str = "json") -> str:
    return os.path.join(parts, f"chunk-{index:05d}.{ext}")


def _mean_nfe(nfes: list[int]) -> int | float:
    """NFE per pair over the chunks' solves (an adaptive solver's differs by chunk): an int when they agree."""
    mean = sum(nfes) / len(nfes)
    return int(mean) if mean == int(mean) else round(mean, 2)


def read_provenance(file: str) -> dict:
    """The ``meta_*`` entries of a pairs file as a dict of strings."""
    with np.load(file) as f:
        return {k[len("meta_"):]: str(f[k]) for k in f.files if k.startswith("meta_")}


def _identity(provenance: dict) -> dict:
    return {k: str(v) for k, v in provenance.items() if k not in _NOT_IDENTITY}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """What pair generation needs of a model: ``sample(x0, cond, key, solver, num_steps, grid) -> (x1, info)``
    (x0 (n, *element_shape) from ``source``, sharded; cond (n,) labels or None), and its provenance."""

    sample: Callable
    source: Any
    element_shape: tuple[int, ...]
    num_classes: int | None
    provenance: dict


def workdir_teacher(model, params: str = "ema") -> Teacher:
    """The teacher of a training workdir (or a model of ``fg.load_model``): its method's sampler, its source."""
    import flowgen as fg

    model = fg.load_model(model, params=params) if isinstance(model, (str, os.PathLike)) else model
    run = model.run
    if run is None:
        raise ValueError("teacher must be a training workdir or a model from fg.load_model (it carries its run)")
    if run.text is not None:
        raise ValueError(f"teacher {model.workdir!r} is text-conditioned; pairs carry labels only, so a "
                         "text-conditioned model cannot be a teacher yet")

    def sample(x0, cond, key, solver, num_steps, grid):
        kwargs = {} if cond is None else {"cond": cond}
        return run.method.sample(run.sample_apply, model.params, x0, key=key, solver=solver, num_steps=num_steps,
                                 grid=grid, **kwargs)

    return Teacher(sample, run.source, tuple(model.element_shape), model.num_classes,
                   {"teacher": model.workdir, "teacher_step": model.step, "teacher_params": model.params_name,
                    "teacher_data": model.data_name, "method": run.method.name, "path": repr(model.path),
                    "target": model.target, "source": run.source.name})


def analytic_teacher(data_name: str, path="linear", target: str = "velocity") -> Teacher:
    """The exact model of a 2-D Gaussian-mixture data set (``flowgen.data.toy.MIXTURE_DATASETS``) as a teacher:
    its pairs are the exact probability-flow coupling up to the solver's error (1-RF with no learning error)."""
    import flowgen as fg
    from flowgen.data import toy
    from flowgen.sources import GAUSSIAN

    path = fg.paths.get(path)
    exact = toy.toy_mixture(data_name).model(path, target)

    def sample(x0, cond, key, solver, num_steps, grid):
        return fg.sample(lambda x, t: exact(x, t), path, target=target, solver=solver, num_steps=num_steps,
                         grid=grid, key=key, noise=x0)

    return Teacher(sample, GAUSSIAN, (2,), None, {"teacher": f"analytic:{data_name}", "path": repr(path),
                                                   "target": target, "source": GAUSSIAN.name})


def generate_pairs(teacher, file: str, *, num_pairs: int, solver: str = "rk4", num_steps: int = 32,
                   seed: int = 0, params: str = "ema", chunk: int = 4096, grid: str = "uniform") -> dict:
    """Write ``num_pairs`` (x₀, x₁) pairs of ``teacher`` (a ``Teacher``, a training workdir or a model of
    ``fg.load_model``, whose ``params`` are used) to ``file`` (a ``.npz`` of ``flowgen.data.pairs``) with ``solver``
    at ``num_steps`` steps on ``grid``; returns the provenance written beside them. Resumable (``FILE.parts/``);
    never replaces a file (see the module docstring)."""
    import flowgen as fg
    from flowgen.data.pairs import PairsWriter
    from flowgen.train import sharding as sharding_lib

    for name, value, low in (("num_pairs", num_pairs, 1), ("num_steps", num_steps, 1), ("chunk", chunk, 1),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    fg.solvers.get(solver)                 # an unknown solver is named with the valid ones before anything loads
    if not isinstance(teacher, Teacher):
        teacher = workdir_teacher(teacher, params)
    provenance = {**teacher.provenance, "solver": solver, "num_steps": num_steps, "grid": grid, "seed": seed,
                  "num_pairs": num_pairs, "chunk": chunk}
    file = os.path.abspath(os.fspath(file))
    if os.path.exists(file):
        found = read_provenance(file)
        if _identity({k: v for k, v in found.items() if k != "nfe"}) != _identity(provenance):
            differ = sorted(k for k in set(found) | set(provenance) if k not in (*_NOT_IDENTITY, "nfe")
                            and str(found.get(k)) != str(provenance.get(k)))
            raise FileExistsError(f"{file} exists with other provenance ({', '.join(differ)} differ); it is never "
                                  "replaced: choose another file, or move it away")
        log.info("pairs %s already written (%s pairs); nothing to do", file, found.get("num_pairs"))
        _remove_own_parts(f"{file}.parts", json.dumps(_identity(provenance), sort_keys=True))
        return found
    parts = f"{file}.parts"
    os.makedirs(parts, exist_ok=True)
    wanted = json.dumps(_identity(provenance), sort_keys=True)
    stamp = os.path.join(parts, "provenance.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() != wanted:
                raise FileExistsError(f"{parts} holds chunks of other pairs (its provenance.json differs); move it "
                                      "away or finish that request")
    else:
        with open(f"{stamp}.tmp", "w") as f:
            f.write(wanted)
        os.replace(f"{stamp}.tmp", stamp)

    sharding = sharding_lib.batch_sharding(sharding_lib.make_mesh(1))     # the batch over every device
    num_chunks = -(-num_pairs // chunk)
    size = chunk + (-chunk % sharding.mesh.size)
    shape = teacher.element_shape
    writer = PairsWriter(os.path.join(parts, "pairs.tmp"), num_pairs, shape, bool(teacher.num_classes), resume=True)
    try:
        for i in range(num_chunks):
            done = _chunk_file(parts, i)
            if os.path.exists(done):
                continue
            if os.path.exists(_chunk_file(parts, i, "npz")):          # a chunk of a run before the in-place layout
                with np.load(_chunk_file(parts, i, "npz")) as f:
                    writer.write(i * chunk, f["x_data"], f["noise"], f["label"] if "label" in f.files else None)
                    nfe = int(f["nfe"])
            else:
                nfe = _solve_chunk(teacher, writer, i, chunk, num_pairs, size, shape, sharding, seed, solver,
                                   num_steps, grid)
            writer.sync()                                             # the rows are on disk before the mark
            with open(f"{done}.tmp", "w") as f:
                json.dump({"nfe": nfe}, f)
            os.replace(f"{done}.tmp", done)
            log.info("pairs: chunk %d/%d (NFE %d)", i + 1, num_chunks, nfe)
        nfes = []
        for i in range(num_chunks):
            with open(_chunk_file(parts, i)) as f:
                nfes.append(int(json.load(f)["nfe"]))
        provenance.update(nfe=_mean_nfe(nfes),
                          created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        writer.finish(file, **provenance)
    except BaseException:
        writer.close()
        raise
    shutil.rmtree(parts)
    log.info("pairs: %d written to %s (%s, %d steps, NFE %s per pair)", num_pairs, file, solver, num_steps,
             provenance["nfe"])
    return read_provenance(file)


def _remove_own_parts(parts: str, wanted: str) -> None:
    """The parts of a run killed after publishing its file (same provenance) are left over: remove them."""
    stamp = os.path.join(parts, "provenance.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == wanted:
                shutil.rmtree(parts)


def _solve_chunk(teacher, writer, i, chunk, num_pairs, size, shape, sharding, seed, solver, num_steps, grid) -> int:
    """Solve chunk ``i`` (at the full, device-padded chunk size: one compilation; the last is cut to its rows) and
    write its rows; returns the solve's measured NFE."""
    import jax
    import jax.numpy as jnp

    n = min(chunk, num_pairs - i * chunk)
    x0 = teacher.source.sample(jax.random.fold_in(jax.random.key(seed), i), (size, *shape), jnp.float32)
    cond = labels = None
    if teacher.num_classes:
        labels = (np.arange(i * chunk, i * chunk + size) % teacher.num_classes).astype(np.int32)
        cond = jax.device_put(jnp.asarray(labels), sharding)
        labels = labels[:n]
    x1, info = teacher.sample(jax.device_put(x0, sharding), cond,
                              jax.random.fold_in(jax.random.key(seed), 2**30 + i), solver, num_steps, grid)
    x1 = np.asarray(jax.device_get(x1))[:n]
    if not np.all(np.isfinite(x1)):
        raise FloatingPointError(f"the teacher's solve gave non-finite samples in chunk {i}; pairs not written")
    writer.write(i * chunk, x1, np.asarray(x0)[:n], labels)
    return int(info["nfe"])


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flowgen.reflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the trained model's workdir")
    parser.add_argument("--out", required=True, help="the pairs file to write (.npz; never replaced)")
    parser.add_argument("--num_pairs", type=int, required=True)
    parser.add_argument("--solver", default="rk4")
    parser.add_argument("--num_steps", type=int, default=32)
    parser.add_argument("--grid", default="uniform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="ema", help="ema, params or ema_<decay>")
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        provenance = generate_pairs(args.teacher, args.out, num_pairs=args.num_pairs, solver=args.solver,
                                    num_steps=args.num_steps, seed=args.seed, params=args.params, chunk=args.chunk,
                                    grid=args.grid)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}")
        return 2
    print(json.dumps(provenance, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
