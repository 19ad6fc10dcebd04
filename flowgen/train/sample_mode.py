"""``--mode=sample``: draw samples from the newest good checkpoint into files named by what they are.

    workdir/samples/sample_step0004000_ema_heun_16steps_uniform_nfe31_g1.5.png   the grid (images) or scatter (2-D)
    workdir/samples/sample_step0004000_ema_heun_16steps_uniform_nfe31_g1.5.npz   samples, nfe, step and the settings

A run on latents (``data.name = "latents"``) stores its model-space latents as ``samples`` and the decoded images as
``images`` (uint8, what ``python -m flowgen.evals.fid`` reads), and its grid shows the decoded images.

The name holds every setting that changes the samples: the checkpoint step, the parameters (``sample.ema``), the
solver, its number of steps and its grid, the guidance weight, and the *measured* NFE. Nothing is ever overwritten:
before any work (restore, compilation, sampling), files of the same settings are looked for (with any NFE, which an
adaptive solver only knows afterwards) and the run is refused naming them; the samples are drawn once and both files
come from that one draw. Training's own grids (``step_<step>.png``) are never touched.
"""

from __future__ import annotations

import io
import logging
import os

import jax
import numpy as np
from etils import epath

from flowgen.io import workdir_path, write_bytes_once
from flowgen.train import config as config_lib
from flowgen.train import resume, visualize
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.run import Run

log = logging.getLogger("flowgen")


class SamplesExistError(resume.RunRefusedError, FileExistsError):
    """Sample files of these settings already exist (nothing was drawn or written)."""


def sample_stem(config, step: int, nfe: int | str) -> str:
    """The file name of samples: every setting that changes them (checkpoint step, parameters, solver, steps, grid,
    guidance) and the measured NFE."""
    s = config.sample
    guidance = "none" if s.guidance is None else f"{s.guidance:g}"
    opts = "".join(f"_{k}-{v}" for k, v in sorted(config_lib.solver_options(config).items()))   # e.g. _eta-1.0
    return f"sample_step{step:07d}_{s.ema}_{s.solver}{opts}_{s.num_steps}steps_{s.grid}_nfe{nfe}_g{guidance}"


def _refuse_existing(config, out_dir: epath.Path, step: int) -> None:
    existing = sorted(str(p) for p in out_dir.glob(sample_stem(config, step, "*") + ".*")) if out_dir.exists() else []
    if existing:
        raise SamplesExistError(
            f"samples of checkpoint step {step} with these settings exist already: {', '.join(existing)}. Refusing "
            "to overwrite them: change --config.sample.* (solver, num_steps, grid, ema, guidance), or move those "
            "files away. "
            "Nothing was drawn or written.")


def sample_from_checkpoint(config, workdir: str | os.PathLike) -> dict:
    """Restore the newest good checkpoint of ``workdir`` (a local path or a URI such as gs://...), draw
    ``sample.num_samples`` samples once, write the PNG and the ``.npz`` (see the module docstring) and return the
    quality metrics plus ``png``/``npz`` paths (strings)."""
    config_lib.validate(config)
    workdir = workdir_path(workdir)
    out_dir = workdir / "samples"
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise resume.RunRefusedError(f"no checkpoint in {checkpointer.directory}: train first (--mode=train)")
        resume.check_workdir(config, workdir, checkpointer, training=False)
        _refuse_existing(config, out_dir, latest)
        run = Run.from_config(config)
        decoder = run.decoder            # a latent run's autoencoder: missing, it fails before anything is drawn
        restored = run.restore(checkpointer)
    finally:
        checkpointer.close()
    if restored is None:
        raise resume.RunRefusedError(f"no good checkpoint left in {checkpointer.directory} (all were quarantined)")
    step, state, _ = restored
    if step != latest:  # the newest was damaged and quarantined: the names change with the step
        _refuse_existing(config, out_dir, step)
    key = jax.random.fold_in(run.keys[2], step)
    samples, nfe = run.draw_samples(state, key, config.sample.num_samples)
    stem = sample_stem(config, step, nfe)
    quality = visualize.sample_and_report(run, workdir, step, state, run.make_input(), key, drawn=(samples, nfe),
                                          png_name=stem + ".png")
    npz = out_dir / (stem + ".npz")
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        extra = {}
        if decoder is not None:          # a latent run: the decoded images too, uint8 as FID reads them
            from flowgen.latents.decode import to_uint8

            extra["images"] = to_uint8(run.images(samples))
        np.savez(buffer, samples=samples, nfe=nfe, step=step, solver=config.sample.solver, **extra,
                 num_steps=config.sample.num_steps, grid=config.sample.grid,
                 guidance=np.nan if config.sample.guidance is None else config.sample.guidance,
                 ema=config.sample.ema)
        # Exclusive: never replaces a file (locally; an object store has no exclusive create, see write_bytes_once).
        write_bytes_once(npz, buffer.getvalue())
    npz, png = str(npz), str(out_dir / (stem + ".png"))
    log.info("wrote %s and %s (%s)", png, npz, ", ".join(f"{k} {v:.4g}" for k, v in quality.items()))
    return {**quality, "png": png, "npz": npz}
