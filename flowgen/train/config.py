"""The run configuration: defaults shared by every ``configs/*.py`` and the checks made before anything runs.

A config file defines ``get_config(variant="")`` returning ``base_config()`` with its own values; ``variant="small"``
is its fast smoke-test version. Modules never receive the whole ConfigDict; ``loop.py`` unpacks it.
"""

from __future__ import annotations

import difflib
import json
import math
import os

import ml_collections

from flowgen import couplings, losses, networks
from flowgen import paths as paths_lib
from flowgen import solvers as solvers_lib
from flowgen.paths.time_samplers import TIME_SAMPLERS
from flowgen.solvers.grids import GRIDS
from flowgen.train import optim
from flowgen.train.state import ema_name

DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "circle"           # a toy set (flowgen.data.toy.TOY_DATASETS) or an image dataset
    c.data.kwargs = ml_collections.ConfigDict()   # the toy set's parameters (e.g. radius for "circle")
    c.data.data_dir = ""             # image datasets: where the ArrayRecord files are ("" = the TFDS default)
    c.data.batch_size = 256          # global batch, over all devices and hosts
    c.data.random_flip = False
    c.data.dequantize = False
    c.data.mock = False              # image datasets: TFDS's mock data (random records, real shapes), for smoke runs
    # Text conditioning of a labelled dataset: "" (none) or a caption set of flowgen.data.text.CAPTION_SETS (e.g.
    # "digits": each class's caption, embedded); batches then carry caption embeddings instead of labels.
    c.data.captions = ""

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"hidden": 256, "depth": 3})
    c.model.num_classes = 0          # > 0: class-conditional, with null label num_classes for guidance
    c.model.dtype = "float32"        # compute dtype; parameters stay float32
    c.model.precond = "none"         # "edm": wrap the network in EDM's preconditioning (target must be "data")
    c.model.sigma_data = 0.5

    c.path = ml_collections.ConfigDict({"name": "linear", "kwargs": ml_collections.ConfigDict()})

    # The training method (flowgen.methods.METHODS); flow matching reads its options from c.loss, other methods
    # add their own in method.kwargs.
    c.method = ml_collections.ConfigDict({"name": "flow_matching", "kwargs": ml_collections.ConfigDict()})
    # Where x₀ (t = 0) comes from: "gaussian" (N(0, I)) or a 2-D toy set (flowgen.sources).
    c.source = ml_collections.ConfigDict({"name": "gaussian", "kwargs": ml_collections.ConfigDict()})

    c.loss = ml_collections.ConfigDict()
    c.loss.target = "velocity"
    c.loss.weighting = "uniform"
    c.loss.time_sampler = "uniform"
    c.loss.time_sampler_options = ml_collections.ConfigDict()
    c.loss.coupling = "independent"
    c.loss.coupling_options = ml_collections.ConfigDict()   # e.g. {"solver": "auction"} for coupling "ot"
    c.loss.label_dropout = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 100
    c.optim.schedule = "constant"
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip = 1.0

    c.ema = ml_collections.ConfigDict({"decays": (0.999,), "half_life_steps": 0})

    c.mesh = ml_collections.ConfigDict({"fsdp": 1})

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.sample_every = 1000      # sample grid (PNG) + quick quality metric; 0 disables
    c.train.steps_per_call = 0       # steps fused in one compiled call (0: automatic); never changes the results
    # A fresh run may start from another run's parameters (fine-tuning, e.g. Liu et al.'s k-RF from its teacher): the
    # training workdir init_from, its newest good checkpoint's init_params ("params", "ema" or "ema_<decay>") as the
    # parameters and every EMA; the optimiser starts afresh. "" starts from the network's initialisation.
    c.train.init_from = ""
    c.train.init_params = "params"

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "heun"
    # Options of an fg.sample solver (its constructor's keywords, e.g. {"eta": 1.0} for "ddim" = DDPM's ancestral
    # sampler, {"diffusion": "sigma"} for "euler_maruyama"); {} for its defaults. Method samplers take none.
    c.sample.solver_options = ml_collections.ConfigDict()
    c.sample.num_steps = 32
    c.sample.grid = "uniform"
    c.sample.num_samples = 1024
    # Classifier-free guidance weight w, as in fg.sample: uncond + w·(cond − uncond), so 1 is the plain conditional
    # model and 0 the unconditional one; None (default): no guidance (conditional models sample with their labels).
    c.sample.guidance = ml_collections.config_dict.placeholder(float)
    c.sample.ema = "ema"             # sample with: "params", "ema" (the slowest EMA) or a key like "ema_0.999"
    return c


def load_config_module(config_file: str, name: str):
    """The config file ``name``.py next to ``config_file`` as a module, so that one config can build on another
    (config files are loaded by path, not as a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"flowgen_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _choice(value, valid, key):
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not one of: {', '.join(map(str, valid))}")


def _number(config, key: str, low=None, high=None, integer: bool = False, low_open: bool = False,
            high_open: bool = False) -> None:
    """``key``'s value must be a finite number (an int if ``integer``) in the interval [low, high] (open ends
    where asked); ValueError naming the key, the value and the interval otherwise."""
    value = config
    for part in key.split("."):
        value = value[part]
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    finite = ok_type and not isinstance(value, bool) and math.isfinite(value)
    inside = finite and (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high))
    if not inside:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        where = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{key}={value!r}: must be {kind} {where}")


#: ``data.name`` of a pairs file (``flowgen.data.pairs``; ``data.kwargs.file``), for the coupling "given".
PAIRS = "pairs"
#: The options of ``data.kwargs`` for a pairs file: the file, and the size up to which it is held on the devices
#: (``flowgen.train.input.pairs_input``).
PAIRS_OPTIONS = ("file", "device_max_mb")
#: ``data.name`` of a latent dataset (``python -m flowgen.latents``; ``data.kwargs.dir``). With ``data.mock`` its
#: shape is declared instead (``data.kwargs.shape`` (h, w, Z), ``data.kwargs.num_classes``): seeded random latents.
LATENTS = "latents"
LATENTS_OPTIONS = ("dir", "shape", "num_classes")
#: ``data.name`` of a folder of precomputed text embeddings (``flowgen.data.text``; ``data.data_dir``).
TEXT_FOLDER = "text_embeddings"
TEXT_FOLDER_KWARGS = ("shape", "context_len", "context_dim", "pooled_dim")


def check_pairs_options(data) -> None:
    """``data.kwargs`` of a pairs data set: only ``PAIRS_OPTIONS``, ``device_max_mb`` a number >= 0."""
    kwargs = _kwargs(data.kwargs)
    unknown = sorted(set(kwargs) - set(PAIRS_OPTIONS))
    if unknown:
        raise ValueError(f"data.kwargs.{unknown[0]}: not an option of data.name={PAIRS!r}; valid: "
                         f"{', '.join(PAIRS_OPTIONS)}")
    limit = kwargs.get("device_max_mb", 0)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
        raise ValueError(f"data.kwargs.device_max_mb={limit!r}: must be a number >= 0 (MiB of pairs held on the "
                         "devices; larger sets are fed from the host)")


def latents_header(data) -> dict:
    """What a run needs of a latent dataset, from its ``provenance.json`` (``latent_shape``, ``num_classes``,
    ``scaling_factor``, ``shift_factor``, ``autoencoder``) or, with ``data.mock``, from ``data.kwargs``; every
    option checked (ValueError naming it and the valid ones)."""
    kwargs = _kwargs(data.kwargs)
    unknown = sorted(set(kwargs) - set(LATENTS_OPTIONS))
    if unknown:
        raise ValueError(f"data.kwargs.{unknown[0]}: not an option of data.name={LATENTS!r}; valid: "
                         f"{', '.join(LATENTS_OPTIONS)}")
    if not data.get("mock", False):
        from flowgen.latents.store import read_header

        header = read_header(kwargs.get("dir", ""))
        found = {"shape": list(header["latent_shape"]), "num_classes": int(header["num_classes"] or 0)}
        for key in ("shape", "num_classes"):       # declared (for data.mock) and real must agree
            if key in kwargs and (list(kwargs[key]) if key == "shape" else kwargs[key]) != found[key]:
                raise ValueError(f"data.kwargs.{key}={kwargs[key]!r} but the latent dataset {kwargs['dir']!r} has "
                                 f"{key} {found[key]!r}")
        return header
    shape, classes = tuple(kwargs.get("shape", ())), kwargs.get("num_classes", 0)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape) or \
            isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise ValueError(f"data.name={LATENTS!r} with data.mock=True declares data.kwargs.shape (h, w, Z: 3 integers "
                         f">= 1) and data.kwargs.num_classes (an integer >= 0); got {kwargs}")
    return {"latent_shape": list(shape), "num_classes": classes, "scaling_factor": 1.0, "shift_factor": None,
            "mock": True}


def dataset_names() -> tuple[list[str], list[str]]:
    """(toy sets, image datasets) that ``data.name`` may be (besides ``"pairs"``, ``"latents"`` and
    ``"text_embeddings"``)."""
    from flowgen.data import pipeline, toy

    return sorted(toy.TOY_DATASETS), sorted(pipeline.IMAGE_DATASETS)


def check_dataset_name(name) -> None:
    toys, images = dataset_names()
    if name not in toys and name not in images and name not in (PAIRS, LATENTS, TEXT_FOLDER):
        hint = difflib.get_close_matches(str(name), toys + images + [PAIRS, LATENTS, TEXT_FOLDER], n=1)
        raise ValueError(f"data.name={name!r} is not a dataset{f' (did you mean {hint[0]!r}?)' if hint else ''}. "
                         f"Toy sets (sampled on the fly): {', '.join(toys)}; image datasets (TFDS): "
                         f"{', '.join(images)}; {PAIRS!r} (a file of (x_data, noise) pairs, data.kwargs.file); "
                         f"{LATENTS!r} (a latent dataset of python -m flowgen.latents, data.kwargs.dir); "
                         f"{TEXT_FOLDER!r} (images or latents with precomputed text embeddings, data.data_dir)")


def _text_folder_kwargs(data) -> dict:
    """``data.kwargs`` of a text_embeddings folder, checked: shape (H, W, C) and the three text widths."""
    kwargs = _kwargs(data.kwargs)
    missing = [k for k in TEXT_FOLDER_KWARGS if k not in kwargs]
    extra = sorted(set(kwargs) - set(TEXT_FOLDER_KWARGS))
    if missing or extra:
        raise ValueError(f"data.name={TEXT_FOLDER!r} declares its shapes in data.kwargs = {list(TEXT_FOLDER_KWARGS)}; "
                         f"missing {missing}, unknown {extra}")
    shape = tuple(kwargs["shape"])
    values = [*shape, *(kwargs[k] for k in TEXT_FOLDER_KWARGS[1:])]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"data.kwargs for {TEXT_FOLDER!r}: shape must be 3 integers >= 1 (H, W, C) and context_len, "
                         f"context_dim, pooled_dim integers >= 1; got {kwargs}")
    return {**kwargs, "shape": shape}


def text_conditioning(data):
    """The text conditioning of ``config.data`` (``flowgen.data.text.TextConditioning``), or None: a caption set
    on a labelled dataset (``data.captions``) or a text_embeddings folder. Reads no data."""
    from flowgen.data import text

    captions = data.get("captions", "")
    if data.name == TEXT_FOLDER:
        if captions:
            raise ValueError(f"data.captions={captions!r} captions a labelled dataset; data.name={TEXT_FOLDER!r} "
                             "brings its own caption embeddings: leave data.captions ''")
        kw = _text_folder_kwargs(data)
        return text.TextConditioning(kw["context_len"], kw["context_dim"], kw["pooled_dim"], folder=data.data_dir,
                                     mock=bool(data.get("mock", False)))
    if not captions:
        return None
    caption_set = text.get_caption_set(captions)
    return text.TextConditioning(caption_set.context_len, caption_set.context_dim, caption_set.pooled_dim,
                                 caption_set=caption_set)


def _kwargs(node) -> dict:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def dataset_num_classes(data) -> int:
    """Number of classes of ``data.name`` (0 if unlabelled), from the tables (a pairs file: its labels)."""
    from flowgen.data import pipeline, toy

    if data.name in toy.TOY_DATASETS:
        kwargs = _kwargs(data.kwargs)
        return toy.toy_mixture(data.name, **kwargs).num_components if data.name in toy.MIXTURE_DATASETS else 0
    if data.name == PAIRS:
        from flowgen.data.pairs import pairs_num_classes

        return pairs_num_classes(_kwargs(data.kwargs).get("file", ""))
    if data.name == TEXT_FOLDER:
        return 0
    if data.name == LATENTS:
        return int(latents_header(data)["num_classes"] or 0)
    return pipeline.dataset_spec(data.name).num_classes or 0


def element_shape(data) -> tuple[int, ...]:
    """Shape of one example of ``data.name``, without opening the data set (a pairs file: its header)."""
    from flowgen.data import toy

    if data.name in toy.TOY_DATASETS:
        return (2,)
    if data.name == PAIRS:
        from flowgen.data.pairs import pairs_element_shape

        return pairs_element_shape(_kwargs(data.kwargs).get("file", ""))
    if data.name == TEXT_FOLDER:
        return _text_folder_kwargs(data)["shape"]
    if data.name == LATENTS:
        return tuple(latents_header(data)["latent_shape"])
    from flowgen.data import pipeline

    return tuple(pipeline.dataset_spec(data.name).image_shape)


def on_pairs(config, file: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` that trains on the pairs file ``file`` (``flowgen.reflow``) instead of its data set:
    ``data.name = "pairs"``, ``data.kwargs.file``, the coupling ``given`` and the Gaussian source (the pairs bring
    their x₀). Everything else (network, method, optimiser, schedule) is kept."""
    c = ml_collections.ConfigDict(json.loads(config.to_json()))
    c.data.name = PAIRS
    c.data.kwargs = {"file": file}
    c.loss.coupling = "given"
    c.loss.coupling_options = {}
    c.source.name = "gaussian"
    c.source.kwargs = {}
    return c


def data_name_of(config) -> str:
    """The data set a config's samples are of: ``data.name``, or for a pairs file the data of the teacher that
    made it (its provenance ``teacher_data``), so the same metrics apply."""
    if config.data.name != PAIRS:
        return config.data.name
    file = _kwargs(config.data.kwargs).get("file", "")
    if file and os.path.isfile(file):
        from flowgen.reflow import read_provenance

        return read_provenance(file).get("teacher_data", PAIRS)
    return PAIRS


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The run's ``config.json`` (written by the training loop) as a ConfigDict, upgraded to this version's keys.
    FileNotFoundError if the workdir has none. ``workdir`` may be a URI (gs://...): read with ``etils.epath``."""
    from etils import epath

    path = epath.Path(os.fspath(workdir)) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {os.fspath(workdir)!r} is not a flowgen training workdir") from None
    return upgrade(json.loads(text))


def upgrade(config) -> ml_collections.ConfigDict:
    """A config saved by an earlier flowgen (``config.json``) with the sections and keys added since (``method``,
    ``source``, ``data.captions``) filled in with the defaults that reproduce what that version did. Returns a new
    ConfigDict."""
    d = json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(json.dumps(config))
    defaults = json.loads(base_config().to_json())
    for key in ("method", "source"):
        d.setdefault(key, defaults[key])
    d.setdefault("data", {}).setdefault("captions", defaults["data"]["captions"])
    d.setdefault("sample", {}).setdefault("solver_options", defaults["sample"]["solver_options"])
    return ml_collections.ConfigDict(d)


def build_method(config):
    """The training method of ``config`` (``flowgen.methods``) on its path and source, every option checked."""
    from flowgen import methods, sources

    return methods.build(config.method.name, path=paths_lib.get(config.path.name, **_kwargs(config.path.kwargs)),
                         source=sources.get_source(config.source.name, **_kwargs(config.source.kwargs)),
                         num_classes=config.model.num_classes or None,
                         text_cond=text_conditioning(config.data) is not None, **_kwargs(config.loss),
                         **_kwargs(config.method.kwargs))


def check_network(config) -> None:
    """Build (not initialise) the network: its own checks name a bad ``model.kwargs`` value before anything runs."""
    from flowgen.train.model import build_network

    try:
        build_network(config.model, config.model.num_classes or None)
    except TypeError as e:   # an option the network does not take
        raise ValueError(f"model.kwargs for model.name={config.model.name!r}: {e}") from e
    except ValueError as e:
        raise ValueError(f"model.kwargs: {e}") from e


def _method_samplers(config) -> tuple[str, ...]:
    from flowgen import methods

    cls = methods.METHODS.get(config.method.name)
    return cls.samplers if cls is not None else ()


def validate(config, pairs_pending: bool = False) -> None:
    """Checks that need no data, no devices and no compilation; raise ValueError naming the key, the bad value and
    the valid values. ``pairs_pending``: the pairs file of ``data.name = "pairs"`` is written later (by a sweep's
    teacher), so the checks that read it are skipped."""
    check_dataset_name(config.data.name)
    if config.data.name == PAIRS:
        check_pairs_options(config.data)
    if config.data.name == LATENTS:
        latents_header(config.data)
    _choice(config.model.name, tuple(networks.NETWORKS), "model.name")
    _choice(config.model.dtype, DTYPES, "model.dtype")
    from flowgen.paths.precond import PRECONDITIONINGS

    _choice(config.model.precond, tuple(PRECONDITIONINGS), "model.precond")
    paths_lib.get(config.path.name, **config.path.kwargs.to_dict())
    paths_lib.check_target(config.loss.target)
    from flowgen import methods, sources

    _choice(config.method.name, tuple(methods.METHODS), "method.name")
    sources.get_source(config.source.name, **_kwargs(config.source.kwargs))
    _choice(config.loss.weighting, losses.WEIGHTINGS, "loss.weighting")
    _choice(config.loss.time_sampler, tuple(TIME_SAMPLERS), "loss.time_sampler")
    _choice(config.loss.coupling, tuple(couplings.COUPLINGS), "loss.coupling")
    _choice(config.optim.name, optim.OPTIMIZERS, "optim.name")
    _choice(config.optim.schedule, optim.SCHEDULES, "optim.schedule")
    _choice(config.sample.solver, (*solvers_lib.SOLVERS, *_method_samplers(config)), "sample.solver")
    _choice(config.sample.grid, GRIDS, "sample.grid")
    check_solver_options(config)
    precond = PRECONDITIONINGS[config.model.precond]
    if precond is not None and config.loss.target != precond.prediction:
        raise ValueError(f"model.precond={config.model.precond!r} predicts {precond.prediction!r}: set "
                         f"loss.target={precond.prediction!r} (got {config.loss.target!r})")
    for key in ("train.num_steps", "data.batch_size", "train.log_every", "train.keep_checkpoints", "mesh.fsdp",
                "sample.num_steps", "sample.num_samples"):
        _number(config, key, 1, integer=True)
    for key in ("train.checkpoint_every", "train.sample_every", "train.steps_per_call", "optim.warmup_steps",
                "model.num_classes"):
        _number(config, key, 0, integer=True)
    _number(config, "seed", 0, 2**32, integer=True, high_open=True)
    _number(config, "optim.lr", 0, low_open=True)
    _number(config, "optim.grad_clip", 0)  # 0 disables clipping
    _number(config, "optim.b1", 0, 1, high_open=True)
    _number(config, "optim.b2", 0, 1, high_open=True)
    _number(config, "optim.eps", 0, low_open=True)
    _number(config, "optim.weight_decay", 0)
    _number(config, "optim.min_lr_ratio", 0, 1)
    _number(config, "model.sigma_data", 0, low_open=True)
    _number(config, "loss.label_dropout", 0, 1, high_open=True)
    text = text_conditioning(config.data)
    _check_text(config, text)
    if config.sample.guidance is not None:
        _number(config, "sample.guidance", 0)
        if not config.model.num_classes and text is None:
            raise ValueError(f"sample.guidance={config.sample.guidance!r} needs a class-conditional model "
                             "(model.num_classes > 0) or a text-conditioned one (data.captions or data.name="
                             f"{TEXT_FOLDER!r}); leave it unset (None) for an unconditional one")
    num_classes = config.model.num_classes
    data_classes = 0 if pairs_pending and config.data.name == PAIRS else dataset_num_classes(config.data)
    if num_classes and data_classes and num_classes != data_classes:
        raise ValueError(f"model.num_classes={num_classes} but dataset {config.data.name!r} has {data_classes} "
                         f"classes: use {data_classes}, or 0 for an unconditional model")
    if config.loss.label_dropout > 0 and not num_classes and text is None:
        raise ValueError(f"loss.label_dropout={config.loss.label_dropout} needs a class-conditional model "
                         "(model.num_classes > 0) or a text-conditioned one (data.captions)")
    if couplings.COUPLINGS[config.loss.coupling].needs_pairs and config.data.name != PAIRS:
        raise ValueError(f"loss.coupling={config.loss.coupling!r} takes the pairs from the data set: set "
                         f"data.name={PAIRS!r} with data.kwargs.file (a .npz of x_data and noise); "
                         f"data.name={config.data.name!r} has no pairs")
    if config.data.name == PAIRS and config.source.name != "gaussian":
        raise ValueError(f"source.name={config.source.name!r}: a pairs data set brings its own x₀; leave the source "
                         "'gaussian'")
    method = build_method(config)    # the method checks its own options (with the path and the source) ...
    s = config.sample                # ... and the sample settings its own sampler takes, if one is named
    conditional = config.model.num_classes or text is not None
    method.check_sampler(s.solver, s.num_steps, s.grid, s.guidance if conditional else None)
    check_network(config)
    decays = optim.ema_decays(config.ema)
    valid = ["params"] + (["ema"] + [ema_name(d) for d in decays] if decays else [])
    _choice(config.sample.ema, valid, "sample.ema")
    check_init_from(config)


def solver_options(config) -> dict:
    """``config.sample.solver_options`` as a dict ({} when unset, e.g. in a config saved before it existed)."""
    return _kwargs(config.sample.get("solver_options", None) or {})


def check_solver_options(config) -> None:
    """``sample.solver_options`` must be keywords of the fg.sample solver ``sample.solver`` with valid values; a
    method's own sampler takes none (ValueError naming the option and the valid ones)."""
    opts = solver_options(config)
    if config.sample.solver in solvers_lib.SOLVERS:
        try:
            solvers_lib.get(config.sample.solver, **opts)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sample.solver_options={opts!r} for sample.solver={config.sample.solver!r}: "
                             f"{e}") from None
    elif opts:
        raise ValueError(f"sample.solver_options={opts!r}: sample.solver={config.sample.solver!r} is the method's "
                         "own sampler and takes no options; leave sample.solver_options empty")


def check_init_from(config) -> None:
    """``train.init_from`` is "" or a training workdir, and ``train.init_params`` one of its parameter sets."""
    init_from = config.train.get("init_from", "")
    if not init_from:
        return
    try:
        source = saved_config(init_from)
    except FileNotFoundError:
        raise ValueError(f"train.init_from={init_from!r}: not a flowgen training workdir (no config.json); give a "
                         "workdir to start from, or '' for a fresh initialisation") from None
    decays = optim.ema_decays(source.ema)
    _choice(config.train.get("init_params", "params"),
            ["params"] + (["ema"] + [ema_name(d) for d in decays] if decays else []), "train.init_params")


def _check_text(config, text) -> None:
    """A text-conditioned network needs text-conditioned data and conversely; captions replace labels."""
    takes_text = getattr(networks.NETWORKS[config.model.name], "text_conditioned", False)
    if takes_text and text is None:
        raise ValueError(f"model.name={config.model.name!r} is conditioned on text: give the data captions "
                         f"(data.captions, one of {', '.join(_caption_sets())} for a labelled dataset) or use "
                         f"data.name={TEXT_FOLDER!r} (precomputed text embeddings)")
    if text is None:
        return
    if not takes_text:
        text_nets = [n for n, cls in networks.NETWORKS.items() if getattr(cls, "text_conditioned", False)]
        raise ValueError(f"data.captions={config.data.captions!r} / data.name={config.data.name!r} give text "
                         f"conditioning, which model.name={config.model.name!r} does not take; text-conditioned "
                         f"networks: {', '.join(text_nets)}")
    if config.model.num_classes:
        raise ValueError(f"model.num_classes={config.model.num_classes}: a text-conditioned model is conditioned on "
                         "captions, not labels; set model.num_classes=0")
    if config.data.get("captions") and not dataset_num_classes(config.data):
        raise ValueError(f"data.captions={config.data.captions!r} captions the classes of a labelled dataset; "
                         f"data.name={config.data.name!r} has no labels")
    if text.caption_set is not None and dataset_num_classes(config.data) != len(text.caption_set.captions):
        raise ValueError(f"data.captions={config.data.captions!r} has {len(text.caption_set.captions)} captions but "
                         f"data.name={config.data.name!r} has {dataset_num_classes(config.data)} classes")


def _caption_sets() -> list[str]:
    from flowgen.data import text

    return [repr(n) for n in text.CAPTION_SETS]


def check_devices(config) -> None:
    """Checks against the devices and processes of this run (call after ``jax.distributed.initialize``)."""
    import jax

    from flowgen.train import sharding

    mesh = sharding.make_mesh(config.mesh.fsdp)
    sharding.check_batch_size(config.data.batch_size, mesh)
    if config.data.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={config.data.batch_size} is not divisible by the number of processes "
                         f"({jax.process_count()})")


# Keys that may change when a run is resumed (everything else must match the checkpoint's config): the schedule of
# the run and hyper-parameters that do not change the state's structure (e.g. a lower learning rate after a
# divergence). Changes are logged as warnings.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                  "train.keep_checkpoints", "sample", "optim.lr", "optim.warmup_steps", "optim.schedule",
                  "optim.min_lr_ratio", "optim.b1", "optim.b2", "optim.eps", "optim.weight_decay",
                  "train.steps_per_call", "train.init_from", "train.init_params")   # the last two: step 0 only


def comparable(config) -> dict:
    d = json.loads(config.to_json())
    for key in RESUMABLE_KEYS:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def config_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two comparable configs."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "<missing>"), current.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r} vs now {b!r}")
    return out
