"""A sweep config (``experiments/NAME.py``: ``get_config()`` → ConfigDict), read and checked before anything runs.

    ablation     (optional, beside or instead of ``models``) a grid of training overrides over one base config,
                 expanded to models of kind "train" named by their overrides (``expand_ablation``):
                   {"base": "configs/toy2d_rf.py:small" (or a ConfigDict),
                    "overrides": {"train": {"num_steps": 200}},             every point (optional)
                    "product": {"path": {"name": ["linear", "vp_linear"]},  every combination (optional)
                                "loss": {"target": ["velocity", "noise"]}},
                    "zip": {"optim": {"lr": [1e-3, 3e-3], "warmup_steps": [10, 30]}},   side by side (optional)
                    "options": {"params": "ema"}}                           model options of every point (optional)
                 keys nest like the training config (ConfigDicts take no dots in keys; a plain dict may also
                 write "optim.lr"); a knob's values are a list or tuple
    launcher     (optional) how models are trained and cells evaluated: {"name": "local" | "processes" | "submitit",
                 ...}; see ``flowgen.sweep.launch.LAUNCHERS`` (default: local, in this process)
    models       {name: model}, each one of
                   {"workdir": DIR}                                a trained run (``fg.load_model``)
                   {"train": CONFIG}                               a training ConfigDict (or "configs/x.py[:variant]")
                                                                   trained first, resumably, in SWEEP_DIR/models/name;
                                                                   optional "overrides": {"optim.lr": 3e-3, ...}
                   {"analytic": DATA, "path": NAME, "target": T}  the exact model of a 2-D mixture (e.g. "circle")
                 optional keys: "params" ("ema", "params", "ema_0.999"), "sample_path" (sample under another path:
                 the exact schedule transformation, ``flowgen.paths.transform``), "sample_target", and "t_start",
                 "t_end" (the grid's ends; default the path's interval); "solvers" (this model's own list instead
                 of the sweep's); for a "train" model, "teacher": the name of another model of the sweep, whose
                 pairs (``flowgen.reflow``) it trains on instead of its data set (reflow, distillation), with
                 "pairs": {"num_pairs", "solver", "num_steps", "seed", "params", "chunk", "grid"} (``PAIRS``)
    solvers      ("euler", "ddim:eta=1", ...): a name in ``fg.solvers.SOLVERS`` with options name:key=value, or
                 a method's own sampler ("meanflow", "shortcut", "one_step": ``Method.samplers``; the model's
                 method samples, with the most steps ``Method.sampler_steps`` fits in the budget)
    nfe          NFE budgets; each cell runs the most steps whose measured NFE fits the budget
    guidance     (None,) or weights w for classifier-free guidance (conditional models only; None = no guidance)
    seeds        one noise draw per seed (shared by every solver and budget: common random numbers)
    metrics      names in ``flowgen.sweep.metrics.METRICS`` (each must fit every model's data; for a model trained
                 on latents, image metrics fit the image dataset its decoded samples belong to, context metrics
                 such as ode_error its latents: ``metrics.scored_data``)
    num_samples  samples per cell and seed
    grid         "" (each solver's default) or a grid kind
    dtype        "float32" (default) or "float64" (the noise and the sampling; e.g. to resolve ODE errors below 1e-6)
    skip_unreachable   False: a budget below a solver's minimum NFE is an error; True: that cell is reported as
                 unreachable (e.g. Heun's 2 calls on a path that does not end at σ = 0 cannot fit NFE 1)
    plot_layout  "panels" (default: one panel per solver, a curve per model) or "single" (one panel, a curve per
                 model and solver: models that each have their own samplers)

Every mistake raises a ValueError naming the bad value and the valid choices.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re

import ml_collections

import flowgen as fg
from flowgen.sweep import budget
from flowgen.sweep.metrics import check_fits, scored_data

KEYS = ("models", "solvers", "nfe", "guidance", "seeds", "metrics", "num_samples", "grid", "skip_unreachable",
        "title", "dtype", "ablation", "launcher", "plot_layout")
PLOT_LAYOUTS = ("panels", "single")
ABLATION_KEYS = ("base", "overrides", "product", "zip", "options")
DTYPES = ("float32", "float64")
MODEL_KINDS = ("workdir", "train", "analytic")
MODEL_OPTIONS = ("params", "sample_path", "sample_target", "path", "target", "t_start", "t_end", "solvers",
                 "teacher", "pairs")
#: A teacher's pairs (``flowgen.reflow.generate_pairs``): the defaults of a model's "pairs" (params: the teacher's).
PAIRS = {"num_pairs": 10000, "solver": "rk4", "num_steps": 32, "seed": 0, "params": None, "chunk": 4096,
         "grid": "uniform"}


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    name: str
    options: tuple[tuple[str, object], ...]
    own: bool = False      # a method's own sampler (``Method.samplers``): the model's method samples

    @property
    def label(self) -> str:
        return self.name if not self.options else f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options)})"

    def build(self) -> fg.solvers.Solver:
        if self.own:
            raise ValueError(f"{self.name!r} is a method's own sampler, not a solver of fg.sample")
        return fg.solvers.get(self.name, **dict(self.options))


def method_samplers() -> dict[str, tuple[str, ...]]:
    """{sampler name: the methods that have it}: the methods' own samplers a sweep may name."""
    from flowgen.methods import METHODS

    out: dict[str, tuple[str, ...]] = {}
    for name, cls in METHODS.items():
        for sampler in cls.samplers:
            out[sampler] = out.get(sampler, ()) + (name,)
    return out


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
    knobs: tuple[tuple[str, object], ...] = ()     # the ablation's overrides that name this model
    method: object = None           # the training method (None for an analytic model)
    solvers: tuple | None = None    # this model's solvers (None: the sweep's)
    teacher: object = None          # the ModelSpec whose pairs it trains on (reflow, distillation), or None
    pairs: tuple[tuple[str, object], ...] = ()      # the pair generation settings (``PAIRS``)
    text: object = None             # flowgen.data.text.TextConditioning of a text-conditioned model, else None
    decoded_data: str | None = None  # a latent model's image dataset (provenance source.dataset), else None
    data_config: object = None      # the training config whose data it names (a latent model's decoder reads it)

    def metric_data(self, metric: str) -> str:
        """The data ``metric`` scores for this model (``metrics.scored_data``): a latent model's image metrics
        score its decoded images, its context metrics the latents."""
        return scored_data(metric, self.data_name, self.decoded_data)

    @property
    def transformed(self) -> bool:
        return self.sample_path is not self.path

    @property
    def depth(self) -> int:
        """0 for a model trained on its data; 1 + its teacher's depth for one trained on a teacher's pairs."""
        return 0 if self.teacher is None else 1 + self.teacher.depth


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
    launcher: tuple[tuple[str, object], ...] = (("name", "local"),)
    plot_layout: str = "panels"

    def solvers_of(self, model: ModelSpec) -> tuple[SolverSpec, ...]:
        return self.solvers if model.solvers is None else model.solvers

    @property
    def knob_keys(self) -> tuple[str, ...]:
        """The ablation's knobs over all models, in order (columns of the report)."""
        return tuple(dict.fromkeys(k for m in self.models for k, _ in m.knobs))


def parse_solver(text: str, allow_adaptive: bool = False) -> SolverSpec:
    """``"name[:option=value...]"`` (values as Python literals) -> SolverSpec, checked by building the solver; an
    adaptive solver is refused unless ``allow_adaptive`` (an NFE sweep needs fixed-step solvers)."""
    name, *opts = str(text).strip().split(":")
    name = name.strip()
    own = method_samplers()
    if name in own and name not in fg.solvers.SOLVERS:
        if opts:
            raise ValueError(f"sampler {name!r} (method {', '.join(own[name])}) takes no options; got {text!r}")
        return SolverSpec(name, (), own=True)
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
    spec = SolverSpec(name, tuple(options))
    try:
        solver = spec.build()                  # unknown names/options/values raise a ValueError naming the valid ones
    except ValueError as e:
        if name in fg.solvers.SOLVERS:
            raise
        raise ValueError(f"{e}; or a method's own sampler: {', '.join(own)}") from None
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


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, where: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each dotted ``key: value`` set; an unknown key or a value of the wrong type is a
    ValueError naming the key and the valid ones."""
    config = ml_collections.ConfigDict(config.to_dict()) if not isinstance(config, ml_collections.ConfigDict) \
        else config.copy_and_resolve_references()
    config.unlock()
    for key, value in overrides.items():
        node, parts = config, str(key).split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                section = ".".join(parts[:i]) or "the training config"
                raise ValueError(f"{where}: unknown training config key {key!r}; keys of {section}: "
                                 f"{', '.join(sorted(keys)) if keys else '(not a section)'}")
            if i < len(parts) - 1:
                node = node[part]
        try:
            setattr(node, parts[-1], value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {key}={value!r}: {str(e).splitlines()[0]}") from None
    return config


def flatten(tree, prefix: str = "") -> dict:
    """{"optim": {"lr": x}} -> {"optim.lr": x}: leaves are the values that are not mappings."""
    out = {}
    for key, value in (tree.items() if hasattr(tree, "items") else ()):
        full = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _safe(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"


def point_name(knobs) -> str:
    """A model's name from its overrides: ``key=value`` joined by ``,``, filesystem-safe and stable (the same
    overrides give the same name; values in their repr, e.g. 0.001)."""
    return ",".join(f"{k}={_safe(v)}" for k, v in knobs)


def expand_ablation(ablation) -> dict[str, dict]:
    """The models of an ablation, in order: {name: {"train": ConfigDict, "knobs": ((key, value), ...), ...}}.
    ``product`` keys vary fastest last (like nested loops in key order); ``zip`` lists advance together."""
    import itertools

    a = ablation.to_dict() if hasattr(ablation, "to_dict") else dict(ablation)
    unknown = sorted(set(a) - set(ABLATION_KEYS))
    if unknown:
        raise ValueError(f"unknown ablation keys {unknown}; valid keys: {', '.join(ABLATION_KEYS)}")
    if "base" not in a:
        raise ValueError("ablation needs 'base': a training config file 'configs/NAME.py[:variant]' or ConfigDict")
    base = load_training_config(ablation["base"])
    product, zipped = flatten(a.get("product") or {}), flatten(a.get("zip") or {})
    for section, values in (("product", product), ("zip", zipped)):
        for key, vs in values.items():
            if isinstance(vs, (str, bytes)) or not hasattr(vs, "__len__") or len(vs) == 0:
                raise ValueError(f"ablation.{section}[{key!r}] must be a non-empty list of values; got {vs!r}")
    both = sorted(set(product) & set(zipped))
    if both:
        raise ValueError(f"ablation keys {both} are in both 'product' and 'zip'; give each knob once")
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"ablation.zip lists must have the same length; got {lengths}")
    if not product and not zipped:
        raise ValueError("ablation needs 'product' or 'zip' (the knobs that vary); valid keys: "
                         f"{', '.join(ABLATION_KEYS)}")
    fixed = flatten(a.get("overrides") or {})
    options = dict(a.get("options") or {})
    bad = sorted(set(options) - {"params", "sample_path", "sample_target", "t_start", "t_end"})
    if bad:
        raise ValueError(f"ablation.options {bad} are not model options; valid: params, sample_path, "
                         "sample_target, t_start, t_end")
    zip_rows = list(zip(*zipped.values(), strict=True)) if zipped else [()]
    points = {}
    for combo in itertools.product(*product.values()):
        for row in zip_rows:
            knobs = tuple(zip(product, combo, strict=True)) + tuple(zip(zipped, row, strict=True))
            name = point_name(knobs)
            if name in points:
                raise ValueError(f"ablation points give the name {name!r} twice; make the values distinct")
            config = apply_overrides(base, {**fixed, **dict(knobs)}, f"ablation point {name!r}")
            points[name] = {"train": config, "knobs": knobs, **options}
    return points


def _model_spec(name: str, entry: dict) -> ModelSpec:
    from flowgen.train import config as config_lib

    knobs = tuple(entry.pop("knobs", ()))
    kinds = [k for k in MODEL_KINDS if k in entry]
    unknown = sorted(set(entry) - set(MODEL_KINDS) - set(MODEL_OPTIONS))
    if len(kinds) != 1 or unknown:
        raise ValueError(f"model {name!r} must have exactly one of {', '.join(MODEL_KINDS)} (plus optional "
                         f"{', '.join(MODEL_OPTIONS)}); got keys {sorted(entry)}")
    kind = kinds[0]
    params = entry.get("params") or "ema"
    solvers = None
    if entry.get("solvers") is not None:
        raw = entry["solvers"]
        if isinstance(raw, str) or not hasattr(raw, "__len__") or not raw:
            raise ValueError(f"model {name!r}: 'solvers' must be a non-empty list of solver names; got {raw!r}")
        solvers = tuple(parse_solver(text) for text in raw)
    teacher, pairs = entry.get("teacher"), ()
    if teacher is not None or entry.get("pairs"):
        if kind != "train":
            raise ValueError(f"model {name!r}: 'teacher' and 'pairs' apply to a training config ('train') only")
        if not isinstance(teacher, str) or not teacher:
            raise ValueError(f"model {name!r}: 'pairs' needs 'teacher' (the name of another model of the sweep); "
                             f"got teacher={teacher!r}")
        given = dict(entry.get("pairs") or {})
        bad = sorted(set(given) - set(PAIRS))
        if bad:
            raise ValueError(f"model {name!r}: unknown pairs settings {bad}; valid: {', '.join(PAIRS)}")
        pairs = tuple(sorted({**PAIRS, **given}.items()))
    method, data_config, decoded = None, None, None
    if kind == "analytic":
        from flowgen.data import toy

        data = entry["analytic"]
        if data not in toy.MIXTURE_DATASETS:
            raise ValueError(f"analytic model {name!r}: data {data!r} is not one of {', '.join(toy.MIXTURE_DATASETS)}")
        path = fg.paths.get(entry.get("path") or "linear")
        target = fg.paths.check_target(entry.get("target") or "velocity")
        source, shape, num_classes, text = data, (2,), None, None
    else:
        if "path" in entry or "target" in entry:
            raise ValueError(f"model {name!r}: 'path'/'target' are set by its training config; use 'sample_path' "
                             "to sample under another path")
        if kind == "train":
            data_config = source = load_training_config(entry["train"])
            if teacher:                          # trained on the teacher's pairs: the file is written before it trains
                source = config_lib.on_pairs(source, "")
            try:
                config_lib.validate(source, pairs_pending=bool(teacher))
            except ValueError as e:
                raise ValueError(f"model {name!r}: {e}") from None
            data_config = config_lib.upgrade(data_config)
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
            data_config = config_lib.saved_config(source)
        cfg = config_lib.upgrade(source) if kind == "train" else data_config
        data = config_lib.data_name_of(data_config)
        shape = config_lib.element_shape(data_config.data)
        num_classes = data_config.model.num_classes or None
        text = config_lib.text_conditioning(data_config.data)
        method = config_lib.build_method(cfg)
        decoded = decoded_data(data_config)
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
    if solvers and any(x.own for x in solvers) and sample_path is not path:
        raise ValueError(f"model {name!r}: sample_path applies to fg.sample's solvers, not to a method's own sampler")
    return ModelSpec(name, kind, source, params, data, shape, num_classes, path, target, sample_path,
                     sample_target, t_start, t_end, knobs, method, solvers, teacher, pairs, text, decoded,
                     data_config)


def decoded_data(config) -> str | None:
    """The image dataset a run on latents decodes to (its provenance's ``source.dataset``); None for other data
    and for mock latents (``flowgen.latents.decode.run_decoder`` gives no decoder either)."""
    from flowgen.train import config as config_lib

    if config.data.name != config_lib.LATENTS or config.data.get("mock", False):
        return None
    return config_lib.latents_header(config.data)["source"]["dataset"]


def _ints(values, key: str, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < minimum]
    if not values or bad:
        raise ValueError(f"{key} must be a non-empty list of integers >= {minimum}; bad: {bad or values!r}")
    return values


def resolve(config) -> dict:
    """The sweep config with every model explicit: ``models`` plus the ablation's points (each training config
    loaded, its ``overrides`` applied), without ``ablation`` and ``launcher``: what a task in another process reads."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    raw = config["models"] if c.get("models") else {}
    models = {}
    for name, entry in raw.items():
        entry = dict(entry)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+=,-]+", name):
            raise ValueError(f"model name {name!r} must be filesystem-safe (letters, digits, _ . + = , -)")
        overrides = entry.pop("overrides", None)
        if "train" in entry:
            entry["train"] = load_training_config(entry["train"])
            if overrides:
                entry["train"] = apply_overrides(entry["train"], flatten(overrides), f"model {name!r}")
        elif overrides:
            raise ValueError(f"model {name!r}: 'overrides' applies to a training config ('train') only")
        models[name] = entry
    if c.get("ablation"):
        for name, entry in expand_ablation(config["ablation"]).items():
            if name in models:
                raise ValueError(f"ablation point {name!r} has the name of a model in 'models'; rename that model")
            models[name] = entry
    out = {k: v for k, v in c.items() if k not in ("models", "ablation", "launcher")}
    out["models"] = models
    return out


def _launcher(section) -> tuple[tuple[str, object], ...]:
    """The ``launcher`` section, checked by its launcher class (``flowgen.sweep.launch.LAUNCHERS``)."""
    from flowgen.sweep import launch

    options = dict(section.to_dict() if hasattr(section, "to_dict") else (section or {}))
    launch.get(options)                         # unknown names and options raise a ValueError naming the valid ones
    return tuple(sorted(options.items()))


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
    missing = [k for k in ("solvers", "nfe", "metrics") if not c.get(k)]
    if not c.get("models") and not c.get("ablation"):
        missing.insert(0, "models (or ablation)")
    if missing:
        raise ValueError(f"the sweep config needs {', '.join(missing)}")
    launcher = _launcher(c.get("launcher"))
    raw_models = resolve(config)["models"]
    models = _with_teachers(tuple(_model_spec(name, dict(entry)) for name, entry in raw_models.items()))
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
            check_fits(metric, m.data_name, m.name, m.decoded_data)
        if m.num_classes is None and m.text is None and any(w is not None for w in guidance):
            raise ValueError(f"guidance {[w for w in guidance if w is not None]} given, but model {m.name!r} is "
                             "unconditional; use guidance=(None,)")
    dtype = c.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of: {', '.join(DTYPES)}")
    layout = c.get("plot_layout") or "panels"
    if layout not in PLOT_LAYOUTS:
        raise ValueError(f"plot_layout={layout!r} is not one of: {', '.join(PLOT_LAYOUTS)}")
    spec = SweepSpec(models, solvers, nfe, guidance, seeds, metrics, num_samples, grid,
                     bool(c.get("skip_unreachable", False)), c.get("title") or "NFE sweep", dtype, launcher, layout)
    for m in models:
        for s in spec.solvers_of(m):
            if s.own:
                _check_own_sampler(m, s, nfe, spec.skip_unreachable)
                continue
            if m.method is not None and s.name in m.method.samplers:
                raise ValueError(f"{s.name!r} names both a solver and model {m.name!r}'s own sampler")
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


def _check_own_sampler(m: ModelSpec, s: SolverSpec, nfe, skip_unreachable: bool) -> None:
    """A method's own sampler named for model ``m``: its method must have it, and (unless ``skip_unreachable``)
    every budget must fit at least one of its steps."""
    if m.method is None or s.name not in m.method.samplers:
        has = m.method.samplers if m.method is not None else ()
        raise ValueError(f"solver {s.name!r} is the own sampler of method(s) {', '.join(method_samplers()[s.name])}; "
                         f"model {m.name!r} ({m.method.name if m.method else m.kind}) has "
                         f"{'the own samplers ' + ', '.join(has) if has else 'none'}; give the model its own "
                         "'solvers' list")
    if m.transformed:
        raise ValueError(f"model {m.name!r}: sample_path applies to fg.sample's solvers, not to sampler {s.name!r}")
    below = [n for n in nfe if m.method.sampler_steps(s.name, n) is None]
    if below and not skip_unreachable:
        raise ValueError(f"nfe {below} fit no step count of sampler {s.name!r} on model {m.name!r}; set "
                         "skip_unreachable=True to report such cells as unreachable")


def _with_teachers(models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
    """The models with each ``teacher`` name replaced by that model's ModelSpec (checked: it exists, no cycle, the
    same data), and the pairs' ``params`` defaulting to the teacher's."""
    by_name = {m.name: m for m in models}
    done: dict[str, ModelSpec] = {}

    def resolve_one(m: ModelSpec, chain: tuple[str, ...]) -> ModelSpec:
        if m.name in done:
            return done[m.name]
        if m.teacher is not None:
            if m.teacher not in by_name:
                raise ValueError(f"model {m.name!r}: teacher {m.teacher!r} is not a model of the sweep; models: "
                                 f"{', '.join(by_name)}")
            if m.teacher in chain + (m.name,):
                raise ValueError(f"model {m.name!r}: its teachers form a cycle ({' -> '.join(chain + (m.name,))} "
                                 f"-> {m.teacher})")
            teacher = resolve_one(by_name[m.teacher], chain + (m.name,))
            if (teacher.data_name, teacher.element_shape) != (m.data_name, m.element_shape):
                raise ValueError(f"model {m.name!r} trains on the pairs of {teacher.name!r} (data "
                                 f"{teacher.data_name!r}, shape {teacher.element_shape}) but its config names data "
                                 f"{m.data_name!r} (shape {m.element_shape}); give both the same data")
            pairs = dict(m.pairs)
            pairs["params"] = pairs["params"] or teacher.params
            m = dataclasses.replace(m, teacher=teacher, pairs=tuple(sorted(pairs.items())))
        done[m.name] = m
        return m

    return tuple(resolve_one(m, ()) for m in models)
