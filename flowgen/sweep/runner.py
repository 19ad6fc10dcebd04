"""Run a sweep: models × solvers × NFE budgets × guidance × seeds, one result file per cell, then the report.

    python -m flowgen.main --mode=sweep --config=experiments/digits_nfe.py --workdir=results/digits_nfe

1. The config is checked (``flowgen.sweep.spec``): nothing runs if any part is wrong.
2. Models given as training configs are trained (resumably) in ``WORKDIR/models/NAME``; all are loaded.
3. Each missing cell is sampled and scored and written once (``flowgen.sweep.store``); existing cells are read.
   The noise of a seed is the same for every solver, budget and model of the same shape (common random numbers).
   Samples are sharded over every device of every process along the batch (padded to a multiple of the device
   count), then gathered, so every process scores the same samples; process 0 writes the files.
4. ``results.csv``, ``results.md``, ``nfe_vs_<metric>.png`` and ``samples_<model>.png`` are written from the cells.

A model trained on latents (``data.name = "latents"``): its image metrics and its cells' previews see its samples
decoded by the latent dataset's autoencoder (``decoder``: ``flowgen.latents.decode.run_decoder``, once per model);
its context metrics (ode_error, straightness) and its saved samples stay latents.

Multi-process (``--distributed`` or ``--coordinator``, every process running the same command): sample i's noise is
row i of one draw from the seed, generated where it is used and never depending on the process or device count; the
cells to run are process 0's choice, broadcast; metrics of the gathered samples (digits-FID's features are again
sharded over all devices, ``flowgen.evals.sharded``) give every process the same values, equal to one process's
(``tests/test_evals_layout.py``). Every process decodes the same gathered latents, as it scores them.

Seconds: ``compile_seconds`` is the time JAX reports for tracing, lowering and compiling during the cell's sampler
call (``jax.monitoring`` events), ``sampling_seconds`` the rest of its wall time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

import flowgen as fg
from flowgen.evals.sharded import to_host
from flowgen.io import is_remote
from flowgen.sweep import budget, report, store
from flowgen.sweep import spec as spec_lib
from flowgen.sweep.metrics import METRICS, score

log = logging.getLogger("flowgen")

PREVIEW = 64          # samples kept in each cell file (sample grids)

# --------------------------------------------------------------------------------------------- compile timing
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]
_listening = [False]


def _listen_to_compiles() -> None:
    if not _listening[0]:
        def on_event(event, duration, **_):
            if event in _COMPILE_EVENTS:
                _compile_seconds[0] += duration

        jax.monitoring.register_event_duration_secs_listener(on_event)
        _listening[0] = True


# --------------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True, eq=False)
class Ready:
    """A model ready to sample: ``fn(params, x_t, t[, cond])`` on ``spec.sample_path`` predicting
    ``spec.sample_target``; ``identity`` names the exact weights (for cell ids)."""

    spec: spec_lib.ModelSpec
    fn: object
    params: object
    identity: dict
    sample_apply: object = None     # the network as the method's own samplers take it (trained models)


def _train(m: spec_lib.ModelSpec, workdir: str) -> str:
    """Train (or finish training) ``m`` in WORKDIR/models/NAME, holding its lock (``flowgen.sweep.lock``); a
    finished run is only loaded. A model with a teacher first gets the teacher's pairs (``pairs_file``)."""
    from flowgen.sweep import lock
    from flowgen.train import config as config_lib
    from flowgen.train.loop import train_and_evaluate

    model_dir = os.path.join(workdir, "models", m.name)
    if _trained(m, workdir):
        return model_dir
    config = m.source
    if m.teacher is not None:
        config = config_lib.on_pairs(config, pairs_file(m, workdir))
        config_lib.validate(config)
    with lock.held(model_dir):
        log.info("training model %r in %s (%d steps)", m.name, model_dir, m.source.train.num_steps)
        train_and_evaluate(config, model_dir)
    return model_dir


def pairs_file(m: spec_lib.ModelSpec, workdir: str) -> str:
    """The pairs of ``m``'s teacher with ``m.pairs``' settings: WORKDIR/pairs/TEACHER-HASH/pairs.npz (one file per
    teacher and settings, shared by the models that ask for it), generated if missing (``flowgen.reflow``: resumable,
    written once) under that directory's lock (waiting while another task writes it). The teacher is trained first if
    it is not yet (under its own lock)."""
    import hashlib
    import json

    from flowgen import reflow
    from flowgen.sweep import lock

    settings = dict(m.pairs)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    directory = os.path.join(workdir, "pairs", f"{m.teacher.name}-{digest}")
    file = os.path.join(directory, "pairs.npz")
    if os.path.exists(file):
        return file
    t = m.teacher
    with lock.held(directory, wait=24 * 3600):
        if os.path.exists(file):
            return file
        if t.kind == "analytic":
            teacher = reflow.analytic_teacher(t.data_name, t.path, t.target)
        else:
            teacher = reflow.workdir_teacher(_train(t, workdir) if t.kind == "train" else t.source,
                                             settings["params"])
        log.info("pairs of %r for %r: %d, %s at %d steps", t.name, m.name, settings["num_pairs"], settings["solver"],
                 settings["num_steps"])
        reflow.generate_pairs(teacher, file, **{k: settings[k] for k in ("num_pairs", "solver", "num_steps", "seed",
                                                                          "chunk", "grid")})
    return file


def prepare(m: spec_lib.ModelSpec, workdir: str) -> Ready:
    if m.kind == "analytic":
        from flowgen.data import toy

        exact = toy.toy_mixture(m.data_name).model(m.path, m.target)
        apply, params, sample_apply = (lambda params, x, t, *cond: exact(x, t)), {}, None
        identity = {"analytic": m.data_name, "path": repr(m.path), "target": m.target}
    else:
        model_dir = _train(m, workdir) if m.kind == "train" else m.source
        trained = fg.load_model(model_dir, params=m.params)
        apply, params, sample_apply = trained.apply, trained.params, trained.run.sample_apply
        identity = {"step": trained.step, "params": trained.params_name, "path": repr(m.path), "target": m.target}
    if m.transformed:
        from flowgen.paths.transform import schedule_transformed

        inner = schedule_transformed(lambda x, t, p, *c: apply(p, x, t, *c), m.path, m.target, m.sample_path,
                                     m.sample_target)
        fn = lambda params, x, r, *cond: inner(x, r, params, *cond)  # noqa: E731
        identity.update(sample_path=repr(m.sample_path), sample_target=m.sample_target)
    else:
        fn = apply
    return Ready(m, fn, params, identity, sample_apply)


# --------------------------------------------------------------------------------------------- cells
@dataclasses.dataclass(frozen=True)
class Cell:
    model: Ready
    solver: spec_lib.SolverSpec
    nfe_budget: int
    guidance: float | None
    seed: int
    id: str


def plan(spec: spec_lib.SweepSpec, models: dict[str, Ready]) -> list[Cell]:
    cells = []
    for m in spec.models:
        for s in spec.solvers_of(m):
            for b in spec.nfe:
                for w in spec.guidance:
                    for seed in spec.seeds:
                        identity = {"model": m.name, **models[m.name].identity, "solver": s.label, "nfe_budget": b,
                                    "guidance": w, "seed": seed, "num_samples": spec.num_samples,
                                    "grid": spec.grid, **({} if spec.dtype == "float32" else {"dtype": spec.dtype})}
                        cells.append(Cell(models[m.name], s, b, w, seed, store.cell_id(identity)))
    return cells


def batch_sharding() -> NamedSharding:
    """The batch axis split over every device: the training mesh's batch sharding (``flowgen.train.sharding``)."""
    from flowgen.train import sharding as sharding_lib

    return sharding_lib.batch_sharding(sharding_lib.make_mesh(1))


def _writer() -> bool:
    """Whether this process writes the sweep's files: process 0 of a multi-process job, or the only one."""
    return jax.process_index() == 0


def _agree(flags: list[bool]) -> list[bool]:
    """Process 0's ``flags`` on every process (a collective: every process calls it with a list of one length)."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    return [bool(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(flags, bool))]


def _barrier(name: str) -> None:
    """Wait for every process (files written by process 0 before it are there for the others after it)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@functools.partial(jax.jit, static_argnames=("n", "shape", "dtype", "num_classes", "sharding"))
def _draw(key, *, n, shape, dtype, num_classes, sharding):
    """The noise of ``key`` (the seed's), (n, *shape) from one draw, its first rows repeated to pad n to a multiple
    of the devices; labels i % num_classes (or None); both sharded along the batch, each device computing its rows."""
    pad = -n % sharding.mesh.size
    noise = jax.random.normal(key, (n, *shape), dtype)
    noise = jax.lax.with_sharding_constraint(jnp.concatenate([noise, noise[:pad]]), sharding)
    if not num_classes:
        return noise, None
    return noise, jax.lax.with_sharding_constraint(jnp.arange(n + pad, dtype=jnp.int32) % num_classes, sharding)


#: dopri5's rtol = atol for the ``ode_error`` metric's reference solve, by the sweep's dtype.
REFERENCE_TOL = {"float64": 1e-10, "float32": 1e-6}


def _inputs(cell: Cell, spec: spec_lib.SweepSpec, sharding: NamedSharding) -> dict:
    """The noise of the cell's seed (the same for every solver and budget) and its labels (or, for a text-conditioned
    model, its captions: ``TextConditioning.sample_cond``), padded and sharded over every device of every process
    (``_draw``): sample i's noise depends only on the seed, i and the sample count."""
    m = cell.model.spec
    noise, cond = _draw(jax.random.key(cell.seed), n=spec.num_samples, shape=tuple(m.element_shape),
                        dtype=jnp.dtype(spec.dtype), num_classes=m.num_classes or 0, sharding=sharding)
    kwargs = {"noise": noise}
    if m.num_classes:
        kwargs["cond"] = cond
        if cell.guidance is not None:
            kwargs.update(guidance=float(cell.guidance), null_cond=m.num_classes)
    elif m.text is not None:
        n = spec.num_samples
        rows = m.text.sample_cond(n + (-n % sharding.mesh.size))      # the same host arrays on every process
        kwargs["cond"] = {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
                          for k, v in rows.items()}
        if cell.guidance is not None:
            kwargs.update(guidance=float(cell.guidance), null_cond=m.text.null())
    return kwargs


@dataclasses.dataclass
class CellContext:
    """What a metric with ``needs_context`` may ask of a cell: whether its solver is stochastic, and the reference
    solve of the same model from the same noise over the same interval (computed once per model, seed, guidance and
    interval, then cached)."""

    cell: Cell
    spec: spec_lib.SweepSpec
    sharding: NamedSharding
    t_start: float
    t_end: float
    stochastic: bool
    _cache: dict

    def reference(self) -> np.ndarray:
        c = self.cell
        key = (c.model.spec.name, c.seed, c.guidance, self.t_start, self.t_end)
        if key not in self._cache:
            m = c.model.spec
            tol = REFERENCE_TOL[self.spec.dtype]
            x, _ = fg.sample(c.model.fn, m.sample_path, target=m.sample_target, solver="dopri5",
                             solver_options={"rtol": tol, "atol": tol}, grid=np.array([self.t_start, self.t_end]),
                             params=c.model.params, **_inputs(c, self.spec, self.sharding))
            self._cache[key] = to_host(x)[:self.spec.num_samples]
        return self._cache[key]

    def trajectory(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times (K + 1,), positions (K + 1, n, ...), velocities (K + 1, n, ...))`` of the model's
        probability-flow ODE (unguided) from the cell's start over its interval, by RK4 with K = ``num_steps``
        uniform steps, the velocity at every grid time; cached per model, seed and interval."""
        c = self.cell
        key = ("trajectory", c.model.spec.name, c.seed, self.t_start, self.t_end, num_steps)
        if key not in self._cache:
            m = c.model.spec
            inputs = _inputs(c, self.spec, self.sharding)
            x0 = (m.sample_path.sigma(self.t_start) * inputs["noise"]).astype(inputs["noise"].dtype)
            times = np.linspace(self.t_start, self.t_end, num_steps + 1)
            xs, vs = _rk4_trajectory(x0, inputs.get("cond"), c.model.params, jnp.asarray(times, x0.dtype),
                                     fn=c.model.fn, path=m.sample_path, target=m.sample_target)
            n = self.spec.num_samples
            self._cache[key] = (times, to_host(xs)[:, :n], to_host(vs)[:, :n])
        return self._cache[key]


@functools.partial(jax.jit, static_argnames=("fn", "path", "target"))
def _rk4_trajectory(x0, cond, params, times, *, fn, path, target):
    """Positions and velocities at every time of ``times`` of dx/dt = v(x, t) from x0 by classical RK4."""
    from flowgen.paths import targets as targets_lib

    convert = targets_lib.get_target(target)

    def velocity(x, t):
        tt = jnp.full((x.shape[0],), t, times.dtype)
        prediction = fn(params, x, tt, *(() if cond is None else (cond,)))
        return convert.velocity(prediction, x, path.coefficients(tt)).astype(x.dtype)

    def step(x, ends):
        t0, t1 = ends
        h = t1 - t0
        k1 = velocity(x, t0)
        k2 = velocity(x + 0.5 * h * k1, t0 + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, t0 + 0.5 * h)
        k4 = velocity(x + h * k3, t1)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), (x, k1)

    x_end, (xs, vs) = jax.lax.scan(step, x0, (times[:-1], times[1:]))
    return jnp.concatenate([xs, x_end[None]]), jnp.concatenate([vs, velocity(x_end, times[-1])[None]])


def generate(cell: Cell, spec: spec_lib.SweepSpec, num_steps: int, sharding: NamedSharding):
    """Samples (num_samples, *shape) as numpy (gathered: the same on every process), the sampler's info, compile
    and sampling seconds."""
    m = cell.model.spec
    n = spec.num_samples
    compiled_before = _compile_seconds[0]
    start = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cell.seed), 1)
    if cell.solver.own:                  # the method's own sampler (a few-step method's jumps)
        x, info = m.method.sample(cell.model.sample_apply, cell.model.params, key=key, solver=cell.solver.name,
                                  num_steps=num_steps, grid="uniform", **_inputs(cell, spec, sharding))
    else:
        x, info = fg.sample(cell.model.fn, m.sample_path, target=m.sample_target, solver=cell.solver.build(),
                            grid=spec.grid, num_steps=num_steps, t_start=m.t_start, t_end=m.t_end, key=key,
                            params=cell.model.params, **_inputs(cell, spec, sharding))
    x = to_host(jax.block_until_ready(x))[:n]
    wall = time.perf_counter() - start
    compile_seconds = _compile_seconds[0] - compiled_before
    return x, jax.tree.map(to_host, info), compile_seconds, max(wall - compile_seconds, 0.0)


def _stochastic(cell: Cell) -> bool:
    if cell.solver.own:
        return cell.solver.name in cell.model.spec.method.stochastic_samplers
    return cell.solver.build().stochastic


def decoder(m: spec_lib.ModelSpec, cache: dict):
    """The decoder of latent model ``m`` (``flowgen.latents.decode.run_decoder`` of its training config), built
    once per model and kept in ``cache``; None for a model without one."""
    if m.decoded_data is None:
        return None
    key = ("decoder", m.name)
    if key not in cache:
        from flowgen.latents.decode import run_decoder

        cache[key] = run_decoder(m.data_config)
    return cache[key]


class _Scored:
    """The samples each metric of model ``m`` scores: the model-space samples ``x``, or (``m.metric_data``) their
    decoded images, decoded once on first use."""

    def __init__(self, m: spec_lib.ModelSpec, x, cache: dict):
        self.m, self.x, self.cache, self._images = m, x, cache, None

    @property
    def images(self):
        """``x`` decoded (a latent model) or ``x`` itself."""
        if self._images is None:
            decode = decoder(self.m, self.cache)
            self._images = self.x if decode is None else np.asarray(decode(self.x))
        return self._images

    def __call__(self, metric: str):
        return self.images if self.m.metric_data(metric) != self.m.data_name else self.x

    def preview(self, n: int):
        """The first ``n`` samples as images: decoded (only those ``n`` unless all were decoded for a metric)."""
        if self._images is not None:
            return self._images[:n]
        decode = decoder(self.m, self.cache)
        return self.x[:n] if decode is None else np.asarray(decode(self.x[:n]))


def run_cell(cell: Cell, spec: spec_lib.SweepSpec, metrics: dict, sharding: NamedSharding, cache: dict):
    """(record, samples): the cell's JSON record with every metric of ``spec``, and its samples (None if the
    budget is below the solver's minimum NFE). A latent model's image metrics and preview see its decoded samples;
    the samples returned (saved) stay latents."""
    m = cell.model.spec
    own = cell.solver.own
    solver = None if own else cell.solver.build()
    record = {"id": cell.id, "model": m.name, "data": m.data_name,
              **({} if m.decoded_data is None else {"decoded_data": m.decoded_data}), "trained_path": repr(m.path),
              "path": repr(m.sample_path), "target": m.sample_target, "solver": cell.solver.name,
              "options": dict(cell.solver.options), "series": cell.solver.label,
              "grid": "uniform" if own else budget.grid_name(solver, spec.grid), "nfe_budget": cell.nfe_budget,
              "guidance": cell.guidance, "seed": cell.seed, "num_samples": spec.num_samples,
              "devices": sharding.mesh.size, "model_identity": cell.model.identity}
    if own:
        steps = m.method.sampler_steps(cell.solver.name, cell.nfe_budget)
    else:
        steps = budget.steps_for_budget(solver, m.sample_path, m.sample_target, cell.nfe_budget, spec.grid,
                                        m.t_start, m.t_end)
    if steps is None:
        lowest = (next((n for n in range(1, 1025) if m.method.sampler_steps(cell.solver.name, n) is not None), None)
                  if own else budget.minimum_nfe(solver, m.sample_path, m.sample_target, spec.grid, m.t_start,
                                                 m.t_end))
        record.update(status="unreachable", steps=None, nfe=None, forward_passes=None, minimum_nfe=lowest)
        return record, None
    x, info, compile_seconds, sampling_seconds = generate(cell, spec, steps, sharding)
    while int(info["nfe"]) > cell.nfe_budget and steps > (1 if own else budget.min_steps(solver)):
        steps -= 1                                                                  # a cost not affine in n
        if own and m.method.sampler_steps(cell.solver.name, steps) != steps:
            continue
        x, info, compile_seconds, sampling_seconds = generate(cell, spec, steps, sharding)
    grid = np.asarray(info["grid"], np.float64)
    context = CellContext(cell, spec, sharding, float(grid[0]), float(grid[-1]), _stochastic(cell), cache)
    scored = _Scored(m, x, cache)
    record.update(status="done", steps=steps, nfe=int(info["nfe"]), forward_passes=int(info["forward_passes"]),
                  t_start=float(grid[0]), t_end=float(grid[-1]), compile_seconds=compile_seconds,
                  sampling_seconds=sampling_seconds,
                  metrics={name: score(metrics[(name, m.metric_data(name))], scored(name), context)
                           for name in spec.metrics},
                  preview=np.round(scored.preview(PREVIEW).astype(np.float64), 5).tolist())
    if record["nfe"] > cell.nfe_budget:
        raise RuntimeError(f"cell {cell.id}: measured NFE {record['nfe']} exceeds the budget {cell.nfe_budget}")
    return record, x


def add_metrics(record: dict, cell: Cell, spec: spec_lib.SweepSpec, metrics: dict, cells_dir: str,
                sharding: NamedSharding, cache: dict) -> dict:
    """Fill in metrics the record lacks (added to the config after the cell ran) from its saved samples; each is
    written once as a side file (by process 0), so the cell's own file is never rewritten. Every process of a
    multi-process job calls it for the same records (scoring may be a collective). A latent model's image metrics
    score its saved samples decoded."""
    m, scored = cell.model.spec, None
    for name in spec.metrics:
        if record["status"] != "done" or name in record["metrics"]:
            continue
        side = f"{record['id']}.metric-{name}"
        found = store.read(cells_dir, side)
        if not _agree([found is not None])[0]:
            if scored is None:
                samples = store.read_samples(cells_dir, record["id"])
                if samples is None:
                    raise FileNotFoundError(f"cell {record['id']} has no saved samples to score with {name!r}")
                scored = _Scored(m, samples, cache)
            context = CellContext(cell, spec, sharding, record["t_start"], record["t_end"], _stochastic(cell),
                                  cache)
            found = {"metric": name, "value": score(metrics[(name, m.metric_data(name))], scored(name), context)}
            if _writer():
                store.write_once(cells_dir, side, found)
                found = store.read(cells_dir, side)
        record["metrics"][name] = found["value"]
    return record


# --------------------------------------------------------------------------------------------- the sweep
def _trained(m: spec_lib.ModelSpec, workdir: str) -> bool:
    """Whether WORKDIR/models/NAME holds a checkpoint at the model's last step (read from the directory names)."""
    ckpt = os.path.join(workdir, "models", m.name, "checkpoints")
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    return bool(steps) and max(steps) >= m.source.train.num_steps


def require_local_workdir(workdir: str | os.PathLike) -> None:
    """Refuse (ValueError) a sweep workdir that is a URI such as gs://...: a sweep's lock (``O_EXCL``, a pid check)
    and its write-once cells rely on a POSIX filesystem, which object stores are not. (A training workdir may be one.)
    """
    if is_remote(workdir):
        raise ValueError("sweep workdirs must be local (the lock and the write-once cells need a POSIX filesystem); "
                         f"got {os.fspath(workdir)}")


def evaluate(config, workdir: str, progress: bool = True, only: str | None = None) -> None:
    """Sample and score every missing cell of the sweep ``config`` (its models trained or loaded in this process),
    or only of model ``only``: the task of one model in ``flowgen.sweep.launch``."""
    require_local_workdir(workdir)
    spec = spec_lib.parse(config)
    if only is not None:
        spec = dataclasses.replace(spec, models=tuple(m for m in spec.models if m.name == only))
    _listen_to_compiles()
    models = {m.name: prepare(m, workdir) for m in spec.models}
    cells_dir = os.path.join(workdir, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    if _writer():
        store.remove_stray_temporaries(cells_dir)
    metrics = _metrics(spec)
    cells = plan(spec, models)
    missing = _agree([store.read(cells_dir, c.id) is None for c in cells])      # process 0's view, on every process
    todo = [c for c, miss in zip(cells, missing, strict=True) if miss]
    sharding = batch_sharding()
    cache: dict = {}
    log.info("%d cells, %d to run, on %d device(s)", len(cells), len(todo), sharding.mesh.size)
    with jax.enable_x64(spec.dtype == "float64"), _Progress(len(cells), len(cells) - len(todo), progress) as bar:
        for cell in todo:
            what = f"{cell.model.spec.name} {cell.solver.label} nfe<={cell.nfe_budget} seed {cell.seed}"
            bar.start(what)
            record, samples = run_cell(cell, spec, metrics, sharding, cache)
            if _writer():
                if samples is not None:
                    store.write_samples_once(cells_dir, cell.id, samples)
                store.write_once(cells_dir, cell.id, record)
            bar.done(what, record)
    _barrier("flowgen_sweep_cells_written")


def _run_in_waves(launcher, spec: spec_lib.SweepSpec, todo: list[str], workdir: str) -> list:
    """The tasks of ``todo`` through ``launcher``, in waves by teacher depth: a model trained on a teacher's pairs
    runs after its teacher's wave; one whose teacher failed is reported failed, not run."""
    from flowgen.sweep import launch

    by_name = {m.name: m for m in spec.models}
    failures: list = []
    for depth in sorted({by_name[n].depth for n in todo}):
        wave = []
        for name in (n for n in todo if by_name[n].depth == depth):
            task = launch.Task("point", name, workdir)
            teacher = by_name[name].teacher
            bad = next((f for f in failures if teacher is not None and f.task.model == teacher.name), None)
            if bad is not None:
                failures.append(launch.Failure(task, bad.log, f"its teacher {teacher.name!r} failed"))
            else:
                wave.append(task)
        failures += launcher.run(wave) if wave else []
    return failures


class _Progress:
    """A tqdm bar on a terminal; otherwise (a log file, a pipe) one log line per finished cell."""

    def __init__(self, total: int, initial: int, enabled: bool):
        import sys

        from tqdm import tqdm

        self.total, self.count = total, initial
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="cell", desc="sweep", dynamic_ncols=True,
                        disable=not self.interactive)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def start(self, what: str) -> None:
        self.bar.set_postfix_str(what)

    def done(self, what: str, record: dict) -> None:
        self.count += 1
        self.bar.update()
        if not self.interactive:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in (record.get("metrics") or {}).items()
                               if isinstance(v, (int, float)))
            log.info("cell %d/%d %s: %s", self.count, self.total, what,
                     f"NFE {record['nfe']}, {scores}" if record["status"] == "done" else record["status"])


def _metrics(spec: spec_lib.SweepSpec) -> dict:
    """{(metric name, the data it scores): Metric}: a latent model's image metrics are keyed by its decoded
    dataset (``ModelSpec.metric_data``)."""
    return {(name, m.metric_data(name)): METRICS[name](m.metric_data(name), spec.num_samples)
            for m in spec.models for name in spec.metrics}


def run(config, workdir: str, progress: bool = True) -> dict:
    """Run (or finish) the sweep of ``config`` in ``workdir``; returns {"rows", "table", "markdown", "files",
    "orders", "failed"} ("failed": a ``launch.Failure`` per model whose training or cells failed, with its log).

    Each model whose training or cells are unfinished is one task of the config's launcher (``flowgen.sweep.launch``):
    train it (resumably, in WORKDIR/models/NAME), then sample and score its missing cells. Then the report of every
    model whose cells are all there; a failed model is named with its log and does not stop the others."""
    from flowgen.sweep import launch, lock

    require_local_workdir(workdir)
    spec = spec_lib.parse(config)                 # every check before anything is trained, sampled or written
    launcher = launch.get(dict(spec.launcher))
    workdir = os.path.abspath(workdir)
    _listen_to_compiles()
    cells_dir = os.path.join(workdir, "cells")
    with lock.held(workdir):
        if _writer():
            launch.save_config(spec_lib.resolve(config), workdir)
            os.makedirs(cells_dir, exist_ok=True)
            store.remove_stray_temporaries(cells_dir)
        _barrier("flowgen_sweep_config_saved")
        trainable = [m for m in spec.models if m.kind == "train"]
        untrained = [m.name for m, todo in zip(trainable, _agree([not _trained(m, workdir) for m in trainable]),
                                               strict=True) if todo]
        models = {m.name: prepare(m, workdir) for m in spec.models if m.name not in untrained}
        cells = plan(dataclasses.replace(spec, models=tuple(m for m in spec.models if m.name in models)), models)
        missing = dict(zip((c.id for c in cells), _agree([store.read(cells_dir, c.id) is None for c in cells]),
                           strict=True))                                  # process 0's view, on every process
        todo = untrained + [n for n in dict.fromkeys(c.model.spec.name for c in cells)
                            if any(missing[c.id] for c in cells if c.model.spec.name == n)]
        todo = [m.name for m in spec.models if m.name in todo]                       # the config's order
        log.info("%d model(s), %d to train and/or evaluate with the %s launcher", len(spec.models), len(todo),
                 launcher.name)
        failures = _run_in_waves(launcher, spec, todo, workdir)
        failed = {f.task.model for f in failures}
        good = [m for m in spec.models if m.name not in failed]
        models = {m.name: prepare(m, workdir) for m in good}
        cells = plan(dataclasses.replace(spec, models=tuple(good)), models)
        records = {c.id: store.read(cells_dir, c.id) for c in cells}
        for name in dict.fromkeys(c.model.spec.name for c in cells if records[c.id] is None):
            task = launch.Task("point", name, workdir)
            failures.append(launch.Failure(task, task.log, "cells missing after its task"))
            failed.add(name)
        done = [c for c in cells if c.model.spec.name not in failed]
        metrics = _metrics(spec)
        sharding, cache = batch_sharding(), {}
        with jax.enable_x64(spec.dtype == "float64"):
            rows = [add_metrics(records[c.id], c, spec, metrics, cells_dir, sharding, cache) for c in done]
        for f in failures:
            log.error("model %r failed: %s; log: %s", f.task.model, f.message, f.log)
        result = report.write(workdir, spec, rows, metrics, failures, write_files=_writer())
    result["failed"] = failures
    return result
