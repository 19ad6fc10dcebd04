"""The Run value: built once from a config or a workdir (also one written before ``method``/``source`` existed),
the one EMA rule, and the loop's cadence."""

import json

import jax
import numpy as np
import pytest

import flowgen as fg
from flowgen.train import loop
from flowgen.train.config import base_config
from flowgen.train.run import Run


def small_config(steps=20):
    c = base_config()
    c.data.batch_size = 64
    c.model.kwargs = {"hidden": 32, "depth": 2}
    c.ema.decays = (0.9, 0.99)
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every, c.train.sample_every = steps, 10, 10, 0
    return c


def test_from_config_builds_without_data_and_knows_its_parameters():
    run = Run.from_config(small_config())
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(run.abstract_state.params))
    assert count == fg.networks.param_count(2, 32, 2)
    assert run.describe().splitlines()[-1] == f"parameters: {count}"
    assert all(a.sharding is not None for a in jax.tree.leaves(run.abstract_state))
    assert run.params_choices() == ["params", "ema", "ema_0.9", "ema_0.99"]


def test_sampling_params_follow_one_rule():
    run = Run.from_config(small_config())
    state = run.init_state()
    assert run.sampling_params(state, "ema")[0] == "ema_0.99"          # the slowest EMA: the largest decay
    assert run.sampling_params(state, "ema_0.9")[0] == "ema_0.9"
    assert run.sampling_params(state, "params")[1] is state.params
    with pytest.raises(ValueError, match="ema_0.5"):
        run.sampling_params(state, "ema_0.5")


def test_a_workdir_of_an_earlier_version_loads_and_resumes(tmp_path):
    """config.json written before ``method`` and ``source`` existed: load_model and resuming still work, as flow
    matching from a Gaussian (what those runs trained)."""
    loop.train_and_evaluate(small_config(10), str(tmp_path))
    file = tmp_path / "config.json"
    saved = json.loads(file.read_text())
    del saved["method"], saved["source"]
    file.write_text(json.dumps(saved))
    model = fg.load_model(tmp_path)
    assert model.step == 10 and model.run.method.name == "flow_matching" and model.run.source.gaussian
    loop.train_and_evaluate(small_config(20), str(tmp_path))          # resumes: no "different config" refusal
    assert fg.load_model(tmp_path).step == 20


def test_cadence_says_when_to_log_save_and_sample():
    c = loop.Cadence(num_steps=25, log_every=10, checkpoint_every=20, sample_every=0)
    assert [s for s in range(1, 26) if c.log(s)] == [10, 20, 25]
    assert [s for s in range(1, 26) if c.save(s)] == [20, 25]
    assert not any(c.sample(s) for s in range(1, 26))
    assert list(c.call_sizes(0, 8)) == [1, 8, 1, 8, 2, 5]
