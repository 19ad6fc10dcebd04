"""Every config in ``configs/`` works: its fast variant (``get_config("small")``) trains its few steps in-process with
finite losses, a verified checkpoint at the last step and a sample grid; its full variant validates and builds.

Configs are discovered with a glob, so a new config file is covered without touching this file; a file's ``VARIANTS``
(default ``("", "small")``) are all covered: those named "small" or "..._small" train, the others validate and build.
Data:
- toy sets need nothing;
- ``flowgen_digits`` is built offline by the loop itself on first use, into one data_dir shared by the module;
- TFDS catalogue datasets (cifar10, ...) cannot be downloaded here: their small variants switch on ``data.mock``
  themselves (TFDS's mock data: random records of the right features, served through ``tfds.data_source`` as grain
  reads them), so the README's smoke command runs offline as written; full variants are built under
  ``tfds.testing.mock_data``;
- pairs files (reflow, distillation) are made by a teacher: the tests write mock pairs of the shape of the config
  module's ``PAIRS_OF`` data set (random values, like TFDS's mock data) and point ``data.kwargs.file`` at them.
- a folder of precomputed text embeddings (``text_embeddings``, e.g. SD3's latents and captions) is mocked for full
  variants (``data.mock``: seeded random arrays of the declared shapes);
- a latent dataset (``latents``, e.g. ImageNet's sd-vae-ft-mse latents) is mocked the same way: small variants switch
  ``data.mock`` on themselves (seeded random latents of their declared ``data.kwargs.shape``), full variants get it
  here, with the shape and class count they declare for the real folder.

XLA's optimisation passes are switched off while these tests run (``jax_disable_most_optimizations``): compiling the
32×32 U-Net's init and train step dominates a smoke run and takes half as long without them. The computation is the
same (up to floating-point rounding); only its speed differs.
"""

import importlib.util
import json
import re
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from flowgen.data import digits, pipeline, toy
from flowgen.data.pairs import write_pairs
from flowgen.methods import METHODS
from flowgen.train import config as config_lib
from flowgen.train import loop
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.model import build_network
from flowgen.train.run import Run

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))
MOCK_EXAMPLES = 64  # records per split of a mocked catalogue dataset (>= any small variant's batch and sample count)
pytestmark = pytest.mark.usefixtures("fast_compiles")   # tests/conftest.py: XLA optimisations off


def load_config(path: Path, variant: str = ""):
    """``get_config(variant)`` of a config file, loaded by path as ml_collections' ``config_flags`` loads it."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(variant)


def variants(module) -> tuple[str, ...]:
    return tuple(getattr(module, "VARIANTS", ("", "small")))


def is_small(variant: str) -> bool:
    return variant == "small" or variant.endswith("_small")


def data_kind(config) -> str:
    name = config.data.name
    if name in toy.TOY_DATASETS:
        return "toy"
    if name == config_lib.PAIRS:
        return "pairs"
    if name == config_lib.TEXT_FOLDER:
        return "text_folder"
    if name == config_lib.LATENTS:
        return "latents"
    if pipeline.dataset_spec(name).tfds_name == digits.NAME:
        return "digits"
    return "catalogue"


def element_shape(module, config) -> tuple[int, ...]:
    kind = data_kind(config)
    if kind == "toy":
        return (2,)
    if kind in ("text_folder", "latents"):
        return config_lib.element_shape(config.data)
    return tuple(pipeline.dataset_spec(module.PAIRS_OF if kind == "pairs" else config.data.name).image_shape)


def mock_pairs(module, config, data_dir) -> None:
    """Point a pairs config at random pairs of its ``PAIRS_OF`` data set's shape (written once per module)."""
    n = max(MOCK_EXAMPLES, config.data.batch_size, config.sample.num_samples)
    file = Path(data_dir) / f"mock_pairs_{module.PAIRS_OF}_{n}.npz"
    if not file.exists():
        rng = np.random.default_rng(0)
        shape = (n, *element_shape(module, config))
        label = np.arange(n) % config.model.num_classes if config.model.num_classes else None
        write_pairs(str(file), rng.uniform(-1, 1, shape).astype(np.float32), rng.standard_normal(shape, np.float32),
                    label, teacher="mock", teacher_data=module.PAIRS_OF)
    config.data.kwargs = {**config.data.kwargs.to_dict(), "file": str(file)}


def with_data(module, config, fn, data_dir):
    """``fn()`` with the config's data reachable: a shared digits data_dir, TFDS mock data for the catalogue, mock
    pairs for a pairs file, mock arrays for a text_embeddings folder."""
    kind = data_kind(config)
    if kind in ("text_folder", "latents"):
        config.data.mock = True
        return fn()
    if kind == "pairs":
        mock_pairs(module, config, data_dir)
        return fn()
    if kind != "toy":
        config.data.data_dir = str(data_dir)
    if kind != "catalogue" or config.data.mock:
        return fn()
    n = max(MOCK_EXAMPLES, config.data.batch_size, config.sample.num_samples)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        return fn()


def _variant_params(small: bool):
    """One test per config file and variant; a smoke run on images of side >= 32 (a U-Net whose compilation takes
    ~15 s on two CPU cores) is marked slow. A config that fails to load gets no mark: its test then fails with the
    error."""
    params = []
    for path in CONFIGS:
        try:
            module, _ = load_config(path, "")
            names = [v for v in variants(module) if is_small(v) == small]
        except Exception:  # reported by the test itself
            module, names = None, ["small" if small else ""]
        for variant in names:
            slow = False
            try:
                if small:
                    _, config = load_config(path, variant)
                    slow = data_kind(config) != "toy" and min(element_shape(module, config)[:2]) >= 32
            except Exception:  # reported by the test itself
                pass
            ident = path.stem if variant in ("", "small") else f"{path.stem}:{variant}"
            params.append(pytest.param(path, variant, id=ident, marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_configs_are_discovered():
    assert {"toy2d_rf.py", "digits_rf.py", "cifar10_rf.py"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_small_variant_needs_no_download(path):
    """The README's smoke command (``--config=configs/<name>.py:small``) runs on a fresh machine: a small variant of
    a catalogue dataset reads TFDS's mock data, of a latent dataset seeded mock latents; the full variants read the
    real files. A pairs config names the command that makes its pairs (``python -m flowgen.reflow``), a latent
    config the one that encodes its data set (``python -m flowgen.latents``)."""
    module, _ = load_config(path, "")
    for variant in variants(module):
        _, config = load_config(path, variant)
        assert config.data.mock == (is_small(variant) and data_kind(config) in ("catalogue", "latents")), variant
        if data_kind(config) == "pairs":
            assert "python -m flowgen.reflow" in module.__doc__ and module.PAIRS_OF in pipeline.IMAGE_DATASETS
        if data_kind(config) == "latents":
            assert "python -m flowgen.latents" in module.__doc__


@pytest.mark.parametrize("path, variant", _variant_params(small=True))
def test_small_variant_trains(path, variant, tmp_path, data_dir):
    module, config = load_config(path, variant)
    workdir = tmp_path / "w"
    n = config.train.num_steps
    assert n <= 100, f"{path.name}: the small variant should be a smoke run, not {n} steps"

    start = time.time()
    with_data(module, config, lambda: loop.train_and_evaluate(config, str(workdir)), data_dir)
    print(f"{path.stem}:{variant}: {n} steps in {time.time() - start:.1f}s")

    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [(x["step"], x["loss"]) for x in lines if "loss" in x]
    assert losses and losses[-1][0] == n, losses
    assert all(np.isfinite(v) for _, v in losses), losses
    for line in lines:
        assert all(np.isfinite(v) for k, v in line.items() if k != "time"), line

    # The checkpoint at the last step restores and verifies (orbax checksum, tree structure, metadata).
    run = Run.from_config(config)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == n, checkpointer.all_steps()
        step, state, meta = run.restore(checkpointer, step=n)
    assert step == meta["step"] == n
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))

    if config.train.sample_every > 0:
        assert any("sample/nfe" in x for x in lines), lines
        png = workdir / "samples" / f"step_{n:07d}.png"
        assert png.exists(), sorted(p.name for p in workdir.rglob("*"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _stated_parameter_count(doc: str) -> float | None:
    """A count the docstring states, e.g. "55.7M parameters" or "35.7 M params" (None if it states none)."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*M\s+param", doc or "")
    return float(m.group(1)) * 1e6 if m else None


@pytest.mark.parametrize("path, variant", _variant_params(small=False))
def test_full_variant_validates_and_builds(path, variant, data_dir):
    module, config = load_config(path, variant)
    if data_kind(config) == "pairs":
        mock_pairs(module, config, data_dir)
    if data_kind(config) == "latents":
        config.data.mock = True      # the declared shape and classes stand in for the folder's provenance.json
    config.train.init_from = ""      # a recipe's teacher workdir (the warm start itself: tests/test_pairs_input.py)
    config_lib.validate(config)
    shape = element_shape(module, config)
    num_classes = config.model.num_classes or None
    text = config_lib.text_conditioning(config.data)               # caption embeddings instead of labels
    extra_times = METHODS[config.method.name].extra_times          # the method's further time inputs (MeanFlow's h)
    net = build_network(config.model, num_classes, extra_times)
    example = (np.zeros((1, *shape), np.float32), np.zeros((1,), np.float32),
               np.zeros((1,), np.int32) if num_classes else (text.zeros(1) if text is not None else None))
    times = {"times": {name: example[1] for name in extra_times}} if extra_times else {}
    params = jax.eval_shape(lambda key: net.init(key, *example, **times), jax.random.key(0))
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    print(f"{path.stem}:{variant}: {count / 1e6:.2f}M parameters")
    assert count > 0
    stated = _stated_parameter_count(module.__doc__)
    if stated is not None:
        assert count == pytest.approx(stated, rel=0.02), f"docstring states {stated / 1e6}M, the network has {count}"
    # The whole run's setup: data (mocked for catalogue datasets and pairs), loss, optimizer, sharded abstract state.
    run = Run.from_config(config)
    data = with_data(module, config, run.make_input, data_dir)
    assert data.element_shape == run.element_shape == tuple(shape)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(run.abstract_state.params)) == count
