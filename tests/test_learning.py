"""flowgen *learns*: short, seeded trainings through the real training code (``train_and_evaluate``, the same path as
``python -m flowgen.main``) reach quality thresholds that a broken objective, a wrong target conversion or a frozen
EMA cannot reach.

- 2-D: the exact W2 (scipy assignment) between 1000 samples and 1000 fresh data points, divided by the W2 between two
  independent data sets of that size (the floor: what a perfect model scores at this sample size), must be at most
  ``TOY_FACTOR``, for every training method of ``flowgen.methods``.
- A non-Gaussian source (moons → 8 Gaussians) and given pairs (the coupling ``given``) learn the same way.
- Digits: an MLP on the embedded 8×8 digits reaches a digits-FID threshold far below an untrained model's.

Each threshold was checked to fail under deliberate mutations of the code (the closing note of the redesign lists
them: a sign flip in the loss, a wrong velocity target, an EMA that never updates).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.data import toy
from flowgen.evals.sample_metrics import wasserstein2
from flowgen.methods import METHODS
from flowgen.train.config import base_config
from flowgen.train.loop import train_and_evaluate

#: Samples may be at most this many times farther (exact W2) from fresh data than fresh data are from each other.
TOY_FACTOR = 1.5
N = 1000


def toy_config(**overrides):
    c = base_config()
    c.model.kwargs = {"hidden": 128, "depth": 3}
    c.ema.decays = (0.99,)
    c.update_from_flattened_dict({
        "data.name": "8gaussians", "data.batch_size": 256, "optim.lr": 2e-3, "train.num_steps": 1500,
        "train.log_every": 500, "train.checkpoint_every": 1500, "train.sample_every": 0, "sample.solver": "heun",
        "sample.num_steps": 32})
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="module")
def exact_pairs(tmp_path_factory):
    """A pairs file of the exact 8-Gaussian flow (``flowgen.reflow`` with the analytic teacher, Heun 64 steps):
    the data of the methods that train on a teacher's pairs (``Method.trains_on_pairs``) and of the coupling
    ``given``."""
    from flowgen import reflow

    file = str(tmp_path_factory.mktemp("pairs") / "exact.npz")
    reflow.generate_pairs(reflow.analytic_teacher("8gaussians"), file, num_pairs=4096, solver="heun", num_steps=64,
                          seed=7)
    return file


def on_pairs_if_needed(config, method, pairs_file):
    """``config`` trained on ``pairs_file`` (data "pairs", coupling "given") if ``method`` trains on pairs only."""
    if not METHODS[method].trains_on_pairs:
        return config
    from flowgen.train.config import on_pairs

    return on_pairs(config, pairs_file)


def samples_of(workdir, n=N, seed=0):
    """n samples of the trained run (its EMA, its method's sampler, x₀ from its source) as numpy."""
    model = fg.load_model(workdir)
    run = model.run
    k_noise, k_sample = jax.random.split(jax.random.key(seed))
    noise = run.source.sample(k_noise, (n, *run.element_shape), jnp.float32)
    s = run.config.sample
    x, _ = run.method.sample(run.sample_apply, model.params, noise, key=k_sample, solver=s.solver,
                             num_steps=s.num_steps, grid=s.grid)
    return np.asarray(x, np.float64)


def w2_ratio(samples, data_name="8gaussians"):
    fresh = np.asarray(toy.toy_batch(data_name, 1001, 0, N), np.float64)
    other = np.asarray(toy.toy_batch(data_name, 1002, 0, N), np.float64)
    return wasserstein2(samples, fresh) / wasserstein2(other, fresh)


#: What a method needs besides the generic toy config. Consistency models (sCT) are TrigFlow's: the trig path, the
#: network a "v" prediction, the paper's proposal times, time features of 10·t (the loss differentiates the network
#: in time) and a warm-up within the run; they sample with their own sampler (2 steps here, 1 in the few-step test):
#: heun would read F_θ as a diffusion model's v-prediction, which a consistency function is not
#: (flowgen/methods/consistency.py).
METHOD_SETTINGS = {
    "consistency": {"path.name": "trig", "loss.target": "v", "loss.time_sampler": "edm",
                    "loss.time_sampler_options": {"p_mean": -1.0, "p_std": 1.4},
                    "model.kwargs": {"hidden": 128, "depth": 3, "time_scale": 10.0},
                    "method.kwargs": {"warmup_steps": 1000}, "sample.solver": "consistency", "sample.num_steps": 2},
    # a one-step student is trained at the start time only: its own one-step sampler, not heun
    "distill": {"sample.solver": "one_step", "sample.num_steps": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_learns_the_2d_mixture(method, tmp_path, exact_pairs):
    config = toy_config(**{"method.name": method, **METHOD_SETTINGS.get(method, {})})
    config = on_pairs_if_needed(config, method, exact_pairs)
    train_and_evaluate(config, str(tmp_path))
    ratio = w2_ratio(samples_of(tmp_path))
    print(f"{method}: W2 ratio {ratio:.3f}")
    assert ratio <= TOY_FACTOR, f"{method}: exact W2 {ratio:.2f}x the data-vs-data floor (limit {TOY_FACTOR})"


#: Methods with their own few-step sampler (``Method.samplers``), and what their 1-jump samples must reach after
#: FEW_STEP_TRAIN_STEPS steps of the generic toy config (about 20 s of training on 2 CPU cores each).
FEW_STEP = sorted(name for name, cls in METHODS.items() if cls.samplers)
FEW_STEP_TRAIN_STEPS = 3000
FEW_STEP_FACTOR = 1.5


@pytest.mark.slow
@pytest.mark.parametrize("method", FEW_STEP)
def test_few_step_methods_learn_one_step_generation(method, tmp_path, exact_pairs):
    """1 NFE with the method's own sampler (its default options and METHOD_SETTINGS; rectified flow at 1 Euler step
    scores ~7x). Time features of 10·t, not 1000·t: MeanFlow's and the consistency models' losses differentiate the
    network in time (flowgen/methods/meanflow.py)."""
    sampler = METHODS[method].samplers[0]
    config = toy_config(**{"method.name": method, **METHOD_SETTINGS.get(method, {}), "sample.solver": sampler,
                           "sample.num_steps": 1,
                           "model.kwargs": {"hidden": 128, "depth": 3, "time_scale": 10.0},
                           "train.num_steps": FEW_STEP_TRAIN_STEPS, "train.checkpoint_every": FEW_STEP_TRAIN_STEPS})
    train_and_evaluate(on_pairs_if_needed(config, method, exact_pairs), str(tmp_path))
    ratio = w2_ratio(samples_of(tmp_path))
    print(f"{method} at 1 NFE: W2 ratio {ratio:.3f}")
    assert ratio <= FEW_STEP_FACTOR, f"{method}: 1-NFE exact W2 {ratio:.2f}x the floor (limit {FEW_STEP_FACTOR})"


@pytest.mark.slow
def test_consistency_distillation_learns_one_step_generation_from_a_trained_teacher(tmp_path):
    """sCD: a flow-matching teacher on the trig path (a "v" prediction, converted to its velocity), loaded from its
    workdir by the student's loss, distilled into a 1-NFE consistency model."""
    train_and_evaluate(toy_config(**{"path.name": "trig", "loss.target": "v"}), str(tmp_path / "teacher"))
    settings = METHOD_SETTINGS["consistency"]
    config = toy_config(**{"method.name": "consistency", **settings, "sample.num_steps": 1,
                           "method.kwargs": {**settings["method.kwargs"], "mode": "scd",
                                             "teacher": str(tmp_path / "teacher")},
                           "train.num_steps": FEW_STEP_TRAIN_STEPS, "train.checkpoint_every": FEW_STEP_TRAIN_STEPS})
    train_and_evaluate(config, str(tmp_path / "student"))
    ratio = w2_ratio(samples_of(tmp_path / "student"))
    print(f"sCD at 1 NFE: W2 ratio {ratio:.3f}")
    assert ratio <= FEW_STEP_FACTOR, f"sCD: 1-NFE exact W2 {ratio:.2f}x the floor (limit {FEW_STEP_FACTOR})"


@pytest.mark.slow
def test_a_non_gaussian_source_is_carried_onto_the_data(tmp_path):
    """moons → 8 Gaussians (Tong et al. 2023's task): x₀ from the source in training and sampling."""
    config = toy_config(**{"source.name": "moons"})
    train_and_evaluate(config, str(tmp_path))
    ratio = w2_ratio(samples_of(tmp_path))
    print(f"moons -> 8gaussians: W2 ratio {ratio:.3f}")
    assert ratio <= TOY_FACTOR


@pytest.mark.slow
def test_given_pairs_train_end_to_end(tmp_path, exact_pairs):
    """The coupling ``given`` with a pairs file (x₀ and the exact flow's image of it, as reflow makes them)."""
    config = toy_config(**{"data.name": "pairs", "loss.coupling": "given"})
    config.data.kwargs = {"file": exact_pairs}
    train_and_evaluate(config, str(tmp_path / "run"))
    ratio = w2_ratio(samples_of(tmp_path / "run"))
    print(f"given pairs: W2 ratio {ratio:.3f}")
    assert ratio <= TOY_FACTOR


@pytest.mark.slow
def test_a_digits_model_reaches_a_digits_fid_threshold(tmp_path):
    """The main command's MLP recipe (rectified flow) trained briefly: digits-FID of 1000 samples at 16 Heun steps.
    An untrained network scores ~370 and real held-out digits ~23 (the floor)."""
    import importlib.util
    from pathlib import Path

    from flowgen.evals.digits_fid import digits_fid

    spec = importlib.util.spec_from_file_location(
        "digits_nfe", Path(__file__).resolve().parents[1] / "experiments" / "digits_nfe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.digits_model("linear", "velocity", num_steps=DIGITS_STEPS)
    config.data.data_dir = str(tmp_path / "data")
    train_and_evaluate(config, str(tmp_path / "run"))
    fid = digits_fid(samples_of(tmp_path / "run").astype(np.float32))
    print(f"digits-FID after {DIGITS_STEPS} steps: {fid:.1f}")
    assert fid <= DIGITS_FID_LIMIT


DIGITS_STEPS = 600
DIGITS_FID_LIMIT = 80.0
