"""Run a sweep: models × solvers × NFE budgets × guidance × seeds, one result file per cell, then the report.

    python -m flowgen.main --mode=sweep --config=experiments/digits_nfe.py --workdir=results/digits_nfe

1. The config is checked (``flowgen.sweep.spec``): nothing runs if any part is wrong.
2. Models given as training configs are trained (resumably) in ``WORKDIR/models/NAME``; all are loaded.
3. Each missing cell is sampled and scored and written once (``flowgen.sweep.store``); existing cells are read.
   The noise of a seed is the same for every solver, budget and model of the same shape (common random numbers).
   Samples are sharded over every device along the batch (padded to a multiple of the device count).
4. ``results.csv``, ``results.md``, ``nfe_vs_<metric>.png`` and ``samples_<model>.png`` are written from the cells.

Seconds: ``compile_seconds`` is the time JAX reports for tracing, lowering and compiling during the cell's sampler
call (``jax.monitoring`` events), ``sampling_seconds`` the rest of its wall time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

import flowgen as fg
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


def _train(m: spec_lib.ModelSpec, workdir: str) -> str:
    """Train (or finish training) ``m`` in WORKDIR/models/NAME; a finished run is only loaded."""
    from flowgen.train.loop import train_and_evaluate

    model_dir = os.path.join(workdir, "models", m.name)
    target_step = m.source.train.num_steps
    try:
        if fg.load_model(model_dir, params=m.params).step >= target_step:
            return model_dir
    except FileNotFoundError:
        pass
    log.info("training model %r in %s (%d steps)", m.name, model_dir, target_step)
    train_and_evaluate(m.source, model_dir)
    return model_dir


def prepare(m: spec_lib.ModelSpec, workdir: str) -> Ready:
    if m.kind == "analytic":
        from flowgen.data import toy

        exact = toy.toy_mixture(m.data_name).model(m.path, m.target)
        apply, params = (lambda params, x, t, *cond: exact(x, t)), {}
        identity = {"analytic": m.data_name, "path": repr(m.path), "target": m.target}
    else:
        model_dir = _train(m, workdir) if m.kind == "train" else m.source
        trained = fg.load_model(model_dir, params=m.params)
        apply, params = trained.apply, trained.params
        identity = {"step": trained.step, "params": trained.params_name, "path": repr(m.path), "target": m.target}
    if m.transformed:
        from flowgen.paths.transform import schedule_transformed

        inner = schedule_transformed(lambda x, t, p, *c: apply(p, x, t, *c), m.path, m.target, m.sample_path,
                                     m.sample_target)
        fn = lambda params, x, r, *cond: inner(x, r, params, *cond)  # noqa: E731
        identity.update(sample_path=repr(m.sample_path), sample_target=m.sample_target)
    else:
        fn = apply
    return Ready(m, fn, params, identity)


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
        for s in spec.solvers:
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


#: dopri5's rtol = atol for the ``ode_error`` metric's reference solve, by the sweep's dtype.
REFERENCE_TOL = {"float64": 1e-10, "float32": 1e-6}


def _inputs(cell: Cell, spec: spec_lib.SweepSpec, sharding: NamedSharding) -> dict:
    """The noise of the cell's seed (the same for every solver and budget) and its labels, padded and sharded."""
    m = cell.model.spec
    n = spec.num_samples
    pad = -n % sharding.mesh.size
    noise = jax.random.normal(jax.random.key(cell.seed), (n, *m.element_shape), jnp.dtype(spec.dtype))
    kwargs = {"noise": jax.device_put(jnp.concatenate([noise, noise[:pad]]), sharding)}
    if m.num_classes:
        kwargs["cond"] = jax.device_put(jnp.arange(n + pad, dtype=jnp.int32) % m.num_classes, sharding)
        if cell.guidance is not None:
            kwargs.update(guidance=float(cell.guidance), null_cond=m.num_classes)
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
            self._cache[key] = np.asarray(x)[:self.spec.num_samples]
        return self._cache[key]


def generate(cell: Cell, spec: spec_lib.SweepSpec, num_steps: int, sharding: NamedSharding):
    """Samples (num_samples, *shape) as numpy, the sampler's info, compile and sampling seconds."""
    m = cell.model.spec
    n = spec.num_samples
    solver = cell.solver.build()
    compiled_before = _compile_seconds[0]
    start = time.perf_counter()
    x, info = fg.sample(cell.model.fn, m.sample_path, target=m.sample_target, solver=solver, grid=spec.grid,
                        num_steps=num_steps, t_start=m.t_start, t_end=m.t_end,
                        key=jax.random.fold_in(jax.random.key(cell.seed), 1), params=cell.model.params,
                        **_inputs(cell, spec, sharding))
    x = np.asarray(jax.block_until_ready(x))[:n]
    wall = time.perf_counter() - start
    compile_seconds = _compile_seconds[0] - compiled_before
    return x, jax.device_get(info), compile_seconds, max(wall - compile_seconds, 0.0)


def run_cell(cell: Cell, spec: spec_lib.SweepSpec, metrics: dict, sharding: NamedSharding, cache: dict):
    """(record, samples): the cell's JSON record with every metric of ``spec``, and its samples (None if the
    budget is below the solver's minimum NFE)."""
    m = cell.model.spec
    solver = cell.solver.build()
    record = {"id": cell.id, "model": m.name, "data": m.data_name, "trained_path": repr(m.path),
              "path": repr(m.sample_path), "target": m.sample_target, "solver": cell.solver.name,
              "options": dict(cell.solver.options), "series": cell.solver.label,
              "grid": budget.grid_name(solver, spec.grid), "nfe_budget": cell.nfe_budget, "guidance": cell.guidance,
              "seed": cell.seed, "num_samples": spec.num_samples, "devices": sharding.mesh.size,
              "model_identity": cell.model.identity}
    steps = budget.steps_for_budget(solver, m.sample_path, m.sample_target, cell.nfe_budget, spec.grid, m.t_start,
                                    m.t_end)
    if steps is None:
        record.update(status="unreachable", steps=None, nfe=None, forward_passes=None,
                      minimum_nfe=budget.minimum_nfe(solver, m.sample_path, m.sample_target, spec.grid, m.t_start,
                                                     m.t_end))
        return record, None
    x, info, compile_seconds, sampling_seconds = generate(cell, spec, steps, sharding)
    while int(info["nfe"]) > cell.nfe_budget and steps > budget.min_steps(solver):   # a cost not affine in n
        steps -= 1
        x, info, compile_seconds, sampling_seconds = generate(cell, spec, steps, sharding)
    grid = np.asarray(info["grid"], np.float64)
    context = CellContext(cell, spec, sharding, float(grid[0]), float(grid[-1]), solver.stochastic, cache)
    record.update(status="done", steps=steps, nfe=int(info["nfe"]), forward_passes=int(info["forward_passes"]),
                  t_start=float(grid[0]), t_end=float(grid[-1]), compile_seconds=compile_seconds,
                  sampling_seconds=sampling_seconds,
                  metrics={name: score(metrics[(name, m.data_name)], x, context) for name in spec.metrics},
                  preview=np.round(x[:PREVIEW].astype(np.float64), 5).tolist())
    if record["nfe"] > cell.nfe_budget:
        raise RuntimeError(f"cell {cell.id}: measured NFE {record['nfe']} exceeds the budget {cell.nfe_budget}")
    return record, x


def add_metrics(record: dict, cell: Cell, spec: spec_lib.SweepSpec, metrics: dict, cells_dir: str,
                sharding: NamedSharding, cache: dict) -> dict:
    """Fill in metrics the record lacks (added to the config after the cell ran) from its saved samples; each is
    written once as a side file, so the cell's own file is never rewritten."""
    for name in spec.metrics:
        if record["status"] != "done" or name in record["metrics"]:
            continue
        side = f"{record['id']}.metric-{name}"
        found = store.read(cells_dir, side)
        if found is None:
            samples = store.read_samples(cells_dir, record["id"])
            if samples is None:
                raise FileNotFoundError(f"cell {record['id']} has no saved samples to score with {name!r}")
            context = CellContext(cell, spec, sharding, record["t_start"], record["t_end"],
                                  cell.solver.build().stochastic, cache)
            store.write_once(cells_dir, side, {"metric": name,
                                               "value": score(metrics[(name, record["data"])], samples, context)})
            found = store.read(cells_dir, side)
        record["metrics"][name] = found["value"]
    return record


# --------------------------------------------------------------------------------------------- the sweep
def run(config, workdir: str, progress: bool = True) -> dict:
    """Run (or finish) the sweep of ``config`` in ``workdir``; returns {"rows", "markdown", "files"}."""
    from tqdm import tqdm

    spec = spec_lib.parse(config)                 # every check before anything is trained, sampled or written
    workdir = os.path.abspath(workdir)
    _listen_to_compiles()
    models = {m.name: prepare(m, workdir) for m in spec.models}     # trains or loads: fails before cells/ exists
    cells_dir = os.path.join(workdir, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    store.remove_stray_temporaries(cells_dir)
    metrics = {(name, m.data_name): METRICS[name](m.data_name, spec.num_samples)
               for m in spec.models for name in spec.metrics}
    cells = plan(spec, models)
    records = {c.id: store.read(cells_dir, c.id) for c in cells}
    todo = [c for c in cells if records[c.id] is None]
    sharding = batch_sharding()
    cache: dict = {}
    log.info("%d cells, %d to run, on %d device(s)", len(cells), len(todo), sharding.mesh.size)
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", desc="sweep", dynamic_ncols=True,
               disable=not progress)
    with jax.enable_x64(spec.dtype == "float64"), bar:
        for cell in todo:
            bar.set_postfix_str(f"{cell.model.spec.name} {cell.solver.label} nfe<={cell.nfe_budget} seed {cell.seed}")
            record, samples = run_cell(cell, spec, metrics, sharding, cache)
            if samples is not None:
                store.write_samples_once(cells_dir, cell.id, samples)
            store.write_once(cells_dir, cell.id, record)
            records[cell.id] = store.read(cells_dir, cell.id)
            bar.update()
        rows = [add_metrics(records[c.id], c, spec, metrics, cells_dir, sharding, cache) for c in cells]
    return report.write(workdir, spec, rows, metrics)
