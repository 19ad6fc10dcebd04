"""A sweep config (``experiments/NAME.py``: ``get_config()`` → ConfigDict), read and checked before anything runs.

    models       {name: model}, each one of
                   {"workdir": DIR}                                a trained run (``fg.load_model``)
                   {"train": CONFIG}                               a training ConfigDict (or "configs/x.py[:variant]")
                                                                   trained first, resumably, in SWEEP_DIR/models/name
                   {"analytic": DATA, "path": NAME, "target": T}  the exact model of a 2-D mixture (e.g. "circle")
                 optional keys: "params" ("ema", "params", "ema_0.999"), "sample_path" (sample under another path:
                 the exact schedule transformation, ``flowgen.paths.transform``), "sample_target", and "t_start",
                 "t_end" (the grid's ends; default the path's interval)
    solvers      ("euler", "ddim:eta=1", ...): a name in ``fg.solvers.SOLVERS`` with options name:key=value
    nfe          NFE budgets; each cell runs the most steps whose measured NFE fits the budget
    guidance     (None,) or weights w for classifier-free guidance (conditional models only; None = no guidance)
    seeds        one noise draw per seed (shared by every solver and budget: common random numbers)
    metrics      names in ``flowgen.sweep.metrics.METRICS`` (each must fit every model's data)
    num_samples  samples per cell and seed
    grid         "" (each solver's default) or a grid kind
    dtype        "float32" (default) or "float64" (the noise and the sampling; e.g. to resolve ODE errors below 1e-6)
    skip_unreachable   False: a budget below a solver's minimum NFE is an error; True: that cell is reported as
                 unreachable (e.g. Heun's 2 calls on a path that does not end at σ = 0 cannot fit NFE 1)

Every mistake raises a ValueError naming the bad value and the valid choices.
"""

from __future__ import annotations

import ast
import dataclasses
import os

import ml_collections

import flowgen as fg
from flowgen.sweep import budget
from flowgen.sweep.metrics import check_fits

KEYS = ("models", "solvers", "nfe", "guidance", "seeds", "metrics", "num_samples", "grid", "skip_unreachable",
        "title", "dtype")
DTYPES = ("float32", "float64")
MODEL_KINDS = ("workdir", "train", "analytic")
MODEL_OPTIONS = ("params", "sample_path", "sample_target", "path", "target", "t_start", "t_end")


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    name: str
    options: tuple[tuple[str, object], ...]

    @property
    def label(self) -> str:
        return self.name if not self.options else f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options)})"

    def build(self) -> fg.solvers.Solver:
        return fg.solvers.get(self.name, **dict(self.options))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """What the sweep knows about a model before it exists: how to get it and its sampling facts."""

    name: str
    kind: str
    source: object                  # workdir path, training ConfigDict, or analytic data name
    params: str
    data_name: str
    element_shape: tuple[int, ...]
    num_classes: int | None
    path: object                    # the path the model was trained on
    target: str
    sample_path: object             # the path sampled under (== path unless transformed)
    sample_target: str
    t_start: float | None           # grid ends (set when sampling under another path)
    t_end: float | None

    @property
    def transformed(self) -> bool:
        return self.sample_path is not self.path


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    models: tuple[ModelSpec, ...]
    solvers: tuple[SolverSpec, ...]
    nfe: tuple[int, ...]
    guidance: tuple[float | None, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    num_samples: int
    grid: str | None
    skip_unreachable: bool
    title: str
    dtype: str = "float32"


def parse_solver(text: str, allow_adaptive: bool = False) -> SolverSpec:
    """``"name[:option=value...]"`` (values as Python literals) -> SolverSpec, checked by building the solver; an
    adaptive solver is refused unless ``allow_adaptive`` (an NFE sweep needs fixed-step solvers)."""
    name, *opts = str(text).strip().split(":")
    options = []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise ValueError(f"bad solver option {opt!r} in {text!r}; write name:option=value[:option=value]")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = value.strip()
        options.append((key.strip(), value))
    spec = SolverSpec(name.strip(), tuple(options))
    solver = spec.build()                      # unknown names/options/values raise a ValueError naming the valid ones
    if not allow_adaptive and budget.is_adaptive(solver):
        raise ValueError(f"solver {spec.label!r} is adaptive (its NFE follows its tolerance, not a budget); an NFE "
                         "sweep needs a fixed-step solver")
    return spec


def load_training_config(value) -> ml_collections.ConfigDict:
    """A ConfigDict as is, or "configs/NAME.py[:variant]" loaded with its ``get_config(variant)``."""
    if isinstance(value, ml_collections.ConfigDict):
        return value
    if isinstance(value, str):
        from flowgen.train.config import load_config_module

        file, _, variant = value.partition(":")
        if not os.path.exists(file):
            raise ValueError(f"training config file {file!r} not found")
        module = load_config_module(os.path.abspath(file), os.path.splitext(os.path.basename(file))[0])
        return module.get_config(variant)
    raise ValueError(f"a model's 'train' must be a training ConfigDict or 'configs/NAME.py[:variant]'; got {value!r}")


def _model_spec(name: str, entry: dict) -> ModelSpec:
    from flowgen.train import config as config_lib

    kinds = [k for k in MODEL_KINDS if k in entry]
    unknown = sorted(set(entry) - set(MODEL_KINDS) - set(MODEL_OPTIONS))
    if len(kinds) != 1 or unknown:
        raise ValueError(f"model {name!r} must have exactly one of {', '.join(MODEL_KINDS)} (plus optional "
                         f"{', '.join(MODEL_OPTIONS)}); got keys {sorted(entry)}")
    kind = kinds[0]
    params = entry.get("params") or "ema"
    if kind == "analytic":
        from flowgen.data import toy

        data = entry["analytic"]
        if data not in toy.MIXTURE_DATASETS:
            raise ValueError(f"analytic model {name!r}: data {data!r} is not one of {', '.join(toy.MIXTURE_DATASETS)}")
        path = fg.paths.get(entry.get("path") or "linear")
        target = fg.paths.check_target(entry.get("target") or "velocity")
        source, shape, num_classes = data, (2,), None
    else:
        if "path" in entry or "target" in entry:
            raise ValueError(f"model {name!r}: 'path'/'target' are set by its training config; use 'sample_path' "
                             "to sample under another path")
        if kind == "train":
            source = load_training_config(entry["train"])
            config_lib.validate(source)
        else:
            source = os.path.abspath(entry["workdir"])
            if not os.path.isdir(source):
                raise ValueError(f"model {name!r}: workdir {source!r} does not exist")
            if not os.path.exists(os.path.join(source, "config.json")):
                raise ValueError(f"model {name!r}: {source!r} is not a flowgen training workdir (no config.json)")
            ckpt = os.path.join(source, "checkpoints")
            if not os.path.isdir(ckpt) or not any(d.isdigit() for d in os.listdir(ckpt)):
                raise ValueError(f"model {name!r}: workdir {source!r} has no checkpoint yet; train it first "
                                 f"(python -m flowgen.main --config=... --workdir={source})")
        cfg = config_lib.upgrade(source) if kind == "train" else config_lib.saved_config(source)
        data = cfg.data.name
        shape = config_lib.element_shape(cfg.data)
        num_classes = cfg.model.num_classes or None
        method = config_lib.build_method(cfg)
        path, target = method.path, method.prediction
    sample_path, t_start, t_end = path, None, None
    if entry.get("sample_path"):
        from flowgen.paths.transform import matching_interval

        sample_path = fg.paths.get(entry["sample_path"])
        t_start, t_end = matching_interval(path, sample_path)
    sample_target = fg.paths.check_target(entry.get("sample_target") or target)
    for key in ("t_start", "t_end"):
        if entry.get(key) is not None:
            if sample_path is not path:
                raise ValueError(f"model {name!r}: {key} is set by sample_path (the matching interval)")
            t_start, t_end = (float(entry[key]), t_end) if key == "t_start" else (t_start, float(entry[key]))
    return ModelSpec(name, kind, source, params, data, shape, num_classes, path, target, sample_path,
                     sample_target, t_start, t_end)


def _ints(values, key: str, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < minimum]
    if not values or bad:
        raise ValueError(f"{key} must be a non-empty list of integers >= {minimum}; bad: {bad or values!r}")
    return values


def parse(config) -> SweepSpec:
    """Read and check a sweep config (ConfigDict or dict); nothing is trained, sampled or written."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if {"data", "model", "optim"} <= set(c):
        raise ValueError("--mode=sweep takes a sweep config (e.g. --config=experiments/digits_nfe.py: models, "
                         "solvers, nfe, metrics), but this is a training config; train it with --mode=train, or "
                         "name it in a sweep config's models as {'train': 'configs/NAME.py'}")
    unknown = sorted(set(c) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown sweep config keys {unknown}; valid keys: {', '.join(KEYS)}")
    missing = [k for k in ("models", "solvers", "nfe", "metrics") if not c.get(k)]
    if missing:
        raise ValueError(f"the sweep config needs {', '.join(missing)}")
    raw_models = config["models"]
    models = tuple(_model_spec(name, dict(entry)) for name, entry in raw_models.items())
    solvers = tuple(parse_solver(s) for s in c["solvers"])
    nfe = _ints(c["nfe"], "nfe", 1)
    seeds = _ints(c.get("seeds") or (0,), "seeds", 0)
    num_samples = c.get("num_samples", 1000)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    guidance = tuple(c.get("guidance") or (None,))
    for w in guidance:
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
            raise ValueError(f"guidance weights must be numbers or None (no guidance); got {w!r}")
    grid = c.get("grid") or None
    if grid is not None and grid not in fg.solvers.grids.GRIDS:
        raise ValueError(f"grid={grid!r} is not one of: {', '.join(fg.solvers.grids.GRIDS)} (or '' for each "
                         "solver's default)")
    metrics = tuple(c["metrics"])
    for m in models:
        for metric in metrics:
            check_fits(metric, m.data_name, m.name)
        if m.num_classes is None and any(w is not None for w in guidance):
            raise ValueError(f"guidance {[w for w in guidance if w is not None]} given, but model {m.name!r} is "
                             "unconditional; use guidance=(None,)")
    dtype = c.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of: {', '.join(DTYPES)}")
    spec = SweepSpec(models, solvers, nfe, guidance, seeds, metrics, num_samples, grid,
                     bool(c.get("skip_unreachable", False)), c.get("title") or "NFE sweep", dtype)
    for m in models:
        for s in solvers:
            # A dry run of the sampler: refuses path/target/solver/grid combinations that cannot run, and measures
            # the solver's minimum NFE on this path.
            try:
                lowest = budget.minimum_nfe(s.build(), m.sample_path, m.sample_target, grid, m.t_start, m.t_end)
            except ValueError as e:
                raise ValueError(f"solver {s.label!r} cannot sample model {m.name!r}: {e}") from e
            below = [n for n in nfe if n < lowest]
            if below and not spec.skip_unreachable:
                raise ValueError(f"nfe {below} is below the minimum NFE {lowest} of solver {s.label!r} on model "
                                 f"{m.name!r} (path {m.sample_path!r}); valid: nfe >= {lowest}, or set "
                                 "skip_unreachable=True to report such cells as unreachable")
    return spec
