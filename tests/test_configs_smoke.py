"""Every config in ``configs/`` works: its fast variant (``get_config("small")``) trains its few steps in-process with
finite losses, a verified checkpoint at the last step and a sample grid; its full variant validates and builds.

Configs are discovered with a glob, so a new config file is covered without touching this file. Data:
- toy sets need nothing;
- ``flowgen_digits`` is built offline by the loop itself on first use, into one data_dir shared by the module;
- TFDS catalogue datasets (cifar10, ...) cannot be downloaded here: their small variants switch on ``data.mock``
  themselves (TFDS's mock data: random records of the right features, served through ``tfds.data_source`` as grain
  reads them), so the README's smoke command runs offline as written; full variants are built under
  ``tfds.testing.mock_data``.

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
from flowgen.methods import METHODS
from flowgen.train import config as config_lib
from flowgen.train import loop
from flowgen.train.checkpoint import Checkpointer
from flowgen.train.model import build_network
from flowgen.train.run import Run

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))
MOCK_EXAMPLES = 64  # records per split of a mocked catalogue dataset (>= any small variant's batch and sample count)


def load_config(path: Path, variant: str = ""):
    """``get_config(variant)`` of a config file, loaded by path as ml_collections' ``config_flags`` loads it."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(variant)


def data_kind(config) -> str:
    name = config.data.name
    if name in toy.TOY_DATASETS:
        return "toy"
    if pipeline.dataset_spec(name).tfds_name == digits.NAME:
        return "digits"
    return "catalogue"


def with_data(config, fn, data_dir):
    """``fn()`` with the config's data reachable: a shared digits data_dir, or TFDS mock data for the catalogue."""
    kind = data_kind(config)
    if kind != "toy":
        config.data.data_dir = str(data_dir)
    if kind != "catalogue" or config.data.mock:
        return fn()
    n = max(MOCK_EXAMPLES, config.data.batch_size, config.sample.num_samples)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        return fn()


def _small_variant_params():
    """One test per config file; a smoke run on images of side >= 32 (a U-Net whose compilation takes ~15 s on two CPU
    cores) is marked slow. A config that fails to load gets no mark: its test then fails with the error."""
    params = []
    for path in CONFIGS:
        try:
            _, config = load_config(path, "small")
            slow = data_kind(config) != "toy" and min(pipeline.dataset_spec(config.data.name).image_shape[:2]) >= 32
        except Exception:  # reported by the test itself
            slow = False
        params.append(pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    flag = "jax_disable_most_optimizations"
    if flag not in jax.config.values:  # a JAX without the flag: compile as usual
        yield
        return
    previous = jax.config.values[flag]
    jax.config.update(flag, True)
    yield
    jax.config.update(flag, previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_configs_are_discovered():
    assert {"toy2d_rf.py", "digits_rf.py", "cifar10_rf.py"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_small_variant_needs_no_download(path):
    """The README's smoke command (``--config=configs/<name>.py:small``) runs on a fresh machine: a small variant of
    a catalogue dataset reads TFDS's mock data; the full variant reads the real files."""
    _, small = load_config(path, "small")
    _, full = load_config(path, "")
    assert small.data.mock == (data_kind(small) == "catalogue")
    assert not full.data.mock


@pytest.mark.parametrize("path", _small_variant_params())
def test_small_variant_trains(path, tmp_path, data_dir):
    _, config = load_config(path, "small")
    workdir = tmp_path / "w"
    n = config.train.num_steps
    assert n <= 100, f"{path.name}: the small variant should be a smoke run, not {n} steps"

    start = time.time()
    with_data(config, lambda: loop.train_and_evaluate(config, str(workdir)), data_dir)
    print(f"{path.stem}: {n} steps in {time.time() - start:.1f}s")

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


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_full_variant_validates_and_builds(path, data_dir):
    module, config = load_config(path, "")
    config_lib.validate(config)
    kind = data_kind(config)
    shape = (2,) if kind == "toy" else pipeline.dataset_spec(config.data.name).image_shape
    num_classes = config.model.num_classes or None
    extra_times = METHODS[config.method.name].extra_times          # the method's further time inputs (MeanFlow's h)
    net = build_network(config.model, num_classes, extra_times)
    example = (np.zeros((1, *shape), np.float32), np.zeros((1,), np.float32),
               np.zeros((1,), np.int32) if num_classes else None)
    times = {"times": {name: example[1] for name in extra_times}} if extra_times else {}
    params = jax.eval_shape(lambda key: net.init(key, *example, **times), jax.random.key(0))
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    print(f"{path.stem}: {count / 1e6:.2f}M parameters")
    assert count > 0
    stated = _stated_parameter_count(module.__doc__)
    if stated is not None:
        assert count == pytest.approx(stated, rel=0.02), f"docstring states {stated / 1e6}M, the network has {count}"
    # The whole run's setup: data (mocked for catalogue datasets), loss, optimizer, sharded abstract state.
    run = Run.from_config(config)
    data = with_data(config, run.make_input, data_dir)
    assert data.element_shape == run.element_shape == tuple(shape)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(run.abstract_state.params)) == count
