"""The NFE-sweep runner: config refusal, NFE budgets, write-once cells, resume after SIGKILL, device invariance."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import flowgen as fg
from flowgen.sweep import budget, runner, store

REPO = Path(__file__).resolve().parents[1]


def tiny(**overrides):
    c = {"models": {"lin": {"analytic": "circle", "path": "linear", "target": "velocity"},
                    "vp": {"analytic": "circle", "path": "vp_linear", "target": "noise"}},
         "solvers": ("euler", "dpmpp_2m"), "nfe": (2, 4), "seeds": (0,), "metrics": ("sliced_w2",),
         "num_samples": 64, "skip_unreachable": True}
    c.update(overrides)
    return c


@pytest.mark.parametrize("overrides, message", [
    ({"solvers": ("euler", "rk5")}, r"unknown solver 'rk5'; valid solvers: euler, midpoint"),
    ({"solvers": ("ddim:eta=-1",)}, r"eta"),
    ({"solvers": ("dopri5",)}, r"'dopri5' is adaptive"),
    ({"solvers": ("heun",), "nfe": (1, 2), "skip_unreachable": False},
     r"nfe \[1\] is below the minimum NFE 2 of solver 'heun' on model 'lin'.*valid: nfe >= 2"),
    ({"guidance": (None, 2.0)}, r"guidance \[2.0\] given, but model 'lin' is unconditional"),
    ({"metrics": ("pixel_fd",)}, r"metric 'pixel_fd' does not fit the data 'circle' of model 'lin'; metrics for "
                                 r"'circle': sliced_w2, w2, nll_gap, ode_error, straightness"),
    ({"solvers": ("meanflow",)}, r"solver 'meanflow' is the own sampler of method\(s\) meanflow; model 'lin' "
                                 r"\(analytic\) has none"),
    ({"solvers": ("meanflo",)}, r"unknown solver 'meanflo'.*or a method's own sampler: meanflow, shortcut"),
    ({"solvers": ("meanflow:steps=2",)}, r"sampler 'meanflow' \(method meanflow\) takes no options"),
    ({"models": {"m": {"analytic": "circle", "solvers": "euler"}}}, r"model 'm': 'solvers' must be a non-empty list"),
    ({"models": {"m": {"analytic": "circle", "teacher": "x"}}}, r"model 'm': 'teacher' and 'pairs' apply to a "
                                                                r"training config \('train'\) only"),
    ({"models": {"a": {"train": "configs/toy2d_rf.py:small", "teacher": "b"},
                 "b": {"train": "configs/toy2d_rf.py:small", "teacher": "a"}}}, r"its teachers form a cycle"),
    ({"models": {"a": {"train": "configs/toy2d_rf.py:small", "teacher": "nobody"}}},
     r"model 'a': teacher 'nobody' is not a model of the sweep; models: a"),
    ({"models": {"a": {"train": "configs/toy2d_rf.py:small", "teacher": "lin", "pairs": {"num_pair": 3}}}},
     r"unknown pairs settings \['num_pair'\]; valid: num_pairs, solver"),
    ({"models": {"a": {"train": "configs/toy2d_rf.py:small", "teacher": "g"}, "g": {"analytic": "8gaussians"}}},
     r"model 'a' trains on the pairs of 'g' \(data '8gaussians'.*names data 'circle'"),
    ({"metrics": ("fid",)}, r"unknown metric 'fid'; valid metrics: .*pixel_fd"),
    ({"nfe": (0, 4)}, r"nfe must be a non-empty list of integers >= 1"),
    ({"solvers": ("euler_maruyama",)}, r"solver 'euler_maruyama' cannot sample model 'lin': the diffusion w\(t\) "
                                       r"is not finite"),
    ({"grid": "cosine"}, r"grid='cosine' is not one of: uniform, logsnr, edm"),
    ({"seed": 3}, r"unknown sweep config keys \['seed'\]; valid keys: models, solvers"),
    ({"plot_layout": "grid"}, r"plot_layout='grid' is not one of: panels, single"),
    ({"models": {"m": {"analytic": "moons"}}}, r"data 'moons' is not one of"),
    ({"models": {"m": {"workdir": "/nonexistent/run"}}}, r"workdir '/nonexistent/run' does not exist"),
    ({"models": {"m": {"workdir": "/tmp"}}}, r"'/tmp' is not a flowgen training workdir \(no config.json\)"),
    ({"data": {}, "model": {}, "optim": {}}, r"--mode=sweep takes a sweep config .* this is a training config"),
])
def test_bad_configs_are_refused_before_anything_runs(tmp_path, overrides, message):
    config = overrides if "data" in overrides else tiny(**overrides)
    with pytest.raises(ValueError, match=message):
        runner.run(config, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_workdir_without_a_checkpoint_is_refused_before_anything_runs(tmp_path):
    """config.json but no checkpoint (a run that never saved): one message, and no cells/ folder."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no checkpoint yet; train it first"):
        runner.run(tiny(models={"m": {"workdir": str(run_dir)}}), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("solver, path, target", [("heun", "vp_linear", "noise"), ("rk4", "linear", "velocity")])
def test_steps_for_budget_is_the_most_steps_within_the_budget(solver, path, target):
    s, p = fg.solvers.get(solver), fg.paths.get(path)
    for b in (3, 6):
        n = budget.steps_for_budget(s, p, target, b)
        if n is None:
            assert budget.minimum_nfe(s, p, target) > b
            continue
        assert budget.measured_nfe(s, p, target, n, None, None, None) <= b < budget.measured_nfe(
            s, p, target, n + 1, None, None, None)


def test_cells_are_written_once(tmp_path):
    assert store.write_once(str(tmp_path), "c", {"a": 1.0})
    assert not store.write_once(str(tmp_path), "c", {"a": 2.0})
    assert store.read(str(tmp_path), "c") == {"a": 1.0}
    assert sorted(os.listdir(tmp_path)) == ["c.json"]


def test_sweep_writes_tables_and_a_rerun_computes_nothing(tmp_path, monkeypatch):
    out = runner.run(tiny(seeds=(0, 1)), str(tmp_path), progress=False)
    assert {Path(f).name for f in out["files"].values()} >= {"results.csv", "results.md", "nfe_vs_sliced_w2.png",
                                                            "samples_lin.png"}
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 2 * 2 * 2 * 2 and len(list((tmp_path / "cells").glob("*.npy"))) == 16
    for row in out["rows"]:
        assert row["nfe"] <= row["nfe_budget"] and row["forward_passes"] == row["nfe"]
    row = next(r for r in out["table"] if (r["model"], r["series"], r["nfe_budget"]) == ("vp", "euler", 4))
    values = [r["metrics"]["sliced_w2"] for r in out["rows"]
              if (r["model"], r["series"], r["nfe_budget"]) == ("vp", "euler", 4)]
    assert row["seeds"] == 2 and row["sliced_w2_mean"] == pytest.approx(np.mean(values))
    assert row["sliced_w2_std"] == pytest.approx(np.std(values, ddof=1))
    stamps = {p.name: p.stat().st_mtime_ns for p in cells}
    monkeypatch.setattr(runner, "run_cell", lambda *a: pytest.fail("a finished cell was recomputed"))
    again = runner.run(tiny(seeds=(0, 1)), str(tmp_path), progress=False)
    assert again["markdown"] == out["markdown"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*.json")} == stamps
    # A metric added later is computed from the saved samples, without resampling, into side files.
    more = runner.run(tiny(seeds=(0, 1), metrics=("sliced_w2", "nll_gap")), str(tmp_path), progress=False)
    assert all(np.isfinite(r["metrics"]["nll_gap"]) for r in more["rows"])
    assert len(list((tmp_path / "cells").glob("*.metric-nll_gap.json"))) == 16
    assert {p.name: p.stat().st_mtime_ns for p in cells} == stamps


CONFIG = """
def get_config():
    import ml_collections
    c = ml_collections.ConfigDict()
    c.models = {"lin": {"analytic": "circle", "path": "linear", "target": "velocity"}}
    c.solvers = ("euler", "heun", "ddim:eta=1.0")
    c.nfe = (2, 4, 6)
    c.seeds = (0,)
    c.metrics = ("sliced_w2",)
    c.num_samples = NUM
    c.skip_unreachable = True
    return c
"""


def _sweep(tmp_path, name, devices=1, num=60, wait=True):
    config = tmp_path / f"{name}.py"
    config.write_text(textwrap.dedent(CONFIG).replace("NUM", str(num)))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "flowgen.main", "--mode=sweep", f"--config={config}", f"--workdir={tmp_path / name}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _cells(workdir):
    return {p.name: json.loads(p.read_text()) for p in sorted((Path(workdir) / "cells").glob("*.json"))}


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_keeps_finished_cells(tmp_path):
    proc = _sweep(tmp_path, "s", wait=False)
    cells_dir = tmp_path / "s" / "cells"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(cells_dir.glob("*.json")) if cells_dir.exists() else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in cells_dir.glob("*.json")}
    assert 3 <= len(before) < 9, "kill the sweep mid-way"
    for p in cells_dir.iterdir():
        json.loads(p.read_text()) if p.suffix == ".json" else None          # every cell file is whole
    _sweep(tmp_path, "s")
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in cells_dir.glob("*.json")}
    assert len(after) == 9 and all(after[name] == value for name, value in before.items())
    assert not [p for p in cells_dir.iterdir() if p.suffix not in (".json", ".npy")]   # no stray temporary
    _sweep(tmp_path, "ref")                                                  # uninterrupted: the same results
    ref = _cells(tmp_path / "ref")
    for name, cell in _cells(tmp_path / "s").items():
        assert cell["metrics"] == ref[name]["metrics"] and cell["preview"] == ref[name]["preview"]


@pytest.mark.slow
def test_eight_devices_give_the_same_samples_as_one(tmp_path):
    """60 samples over 8 devices (padded to 64) vs. 1 device: equal to float32 rounding (atol 1e-5)."""
    _sweep(tmp_path, "one", devices=1)
    _sweep(tmp_path, "eight", devices=8)
    one, eight = _cells(tmp_path / "one"), _cells(tmp_path / "eight")
    assert one.keys() == eight.keys() and len(one) == 9
    for name in one:
        assert (one[name]["devices"], eight[name]["devices"]) == (1, 8)
        assert one[name]["nfe"] == eight[name]["nfe"]
        if one[name]["status"] == "done":
            np.testing.assert_allclose(eight[name]["preview"], one[name]["preview"], atol=1e-5)
            assert eight[name]["metrics"]["sliced_w2"] == pytest.approx(one[name]["metrics"]["sliced_w2"], abs=1e-5)


def test_the_shipped_sweep_configs_pass_their_checks():
    from experiments import analytic_nfe, digits_nfe
    from experiments.reproductions import rf_vs_ddim
    from flowgen.sweep import spec

    main = spec.parse(digits_nfe.get_config())
    assert [m.name for m in main.models] == ["rf", "vp"] and main.nfe == (1, 2, 4, 8, 16, 32, 64)
    assert [s.name for s in main.solvers] == ["euler", "heun", "ddim", "dpmpp_2m", "unipc"]
    assert spec.parse(analytic_nfe.get_config()).metrics == ("sliced_w2", "nll_gap")
    assert spec.parse(rf_vs_ddim.get_config()).nfe[4] == rf_vs_ddim.REFERENCE_NFE


def test_the_shipped_few_step_sweeps_pass_their_checks():
    """Each model keeps to its samplers; the students' teachers resolve (no training, nothing written)."""
    from experiments import digits_fewstep, toy2d_reflow
    from flowgen.sweep import spec

    few = spec.parse(digits_fewstep.get_config())
    samplers = {m.name: [s.name for s in few.solvers_of(m)] for m in few.models}
    assert samplers == {"rf": ["euler", "heun", "dpmpp_2m"], "vp": ["ddim", "dpmpp_2m"], "meanflow": ["meanflow"],
                        "shortcut": ["shortcut"], "sct": ["consistency"], "2-rf": ["euler"],
                        "2-rf-distill": ["one_step"]}
    teachers = {m.name: m.teacher.name for m in few.models if m.teacher is not None}
    assert teachers == {"2-rf": "rf", "2-rf-distill": "2-rf"}
    from experiments import digits_reflow

    digits = spec.parse(digits_reflow.get_config())
    assert {m.name: m.depth for m in digits.models} == {"1-rf": 0, "2-rf": 1, "3-rf": 2, "2-rf-distill": 2,
                                                        "3-rf-distill": 3}
    assert few.plot_layout == "single" and digits.plot_layout == "panels"
    reflow = spec.parse(toy2d_reflow.get_config())
    assert {m.name: m.depth for m in reflow.models} == {"1-rf": 0, "2-rf": 1, "3-rf": 2, "2-rf-distill": 2}
    assert reflow.metrics == ("w2", "straightness")


@pytest.mark.slow
def test_models_given_as_training_configs_are_trained_in_the_sweep_workdir(tmp_path):
    from experiments.digits_nfe import digits_model

    models = {}
    for name, path, target in (("rf", "linear", "velocity"), ("vp", "vp_linear", "noise")):
        c = digits_model(path, target, num_steps=6)
        c.model.kwargs = {"hidden": 32, "depth": 1}
        c.data.batch_size = 16
        c.train.checkpoint_every, c.train.log_every, c.optim.warmup_steps = 3, 3, 2
        models[name] = {"train": c}
    config = tiny(models=models, metrics=("pixel_fd",), solvers=("euler", "ddim"), nfe=(1, 3))
    out = runner.run(config, str(tmp_path), progress=False)
    for name in ("rf", "vp"):
        assert fg.load_model(tmp_path / "models" / name).step == 6
    assert len(out["rows"]) == 8 and all(r["status"] == "done" for r in out["rows"])
    assert all(np.isfinite(r["metrics"]["pixel_fd"]) for r in out["rows"])
    assert (tmp_path / "samples_vp.png").exists() and "pixel_fd" in out["markdown"]


def test_a_model_sampled_under_another_path_uses_the_matching_interval(tmp_path):
    from flowgen.paths.transform import matching_interval

    models = {"vp_as_rf": {"analytic": "circle", "path": "vp_linear", "target": "noise", "sample_path": "linear",
                           "sample_target": "velocity"}}
    out = runner.run(tiny(models=models, solvers=("euler",), nfe=(8,)), str(tmp_path), progress=False)
    (row,) = out["rows"]
    r0, r1 = matching_interval(fg.paths.get("vp_linear"), fg.paths.get("linear"))
    assert row["path"] == repr(fg.paths.get("linear")) and row["target"] == "velocity"
    assert (row["t_start"], row["t_end"]) == pytest.approx((r0, r1), abs=1e-6)
    assert row["metrics"]["sliced_w2"] < 1.5


@pytest.mark.slow
def test_guidance_on_a_conditional_trained_model_counts_two_forward_passes_per_call(tmp_path):
    from tests.test_trained import _train

    _train(tmp_path / "run", num_classes=8, steps=3)
    config = tiny(models={"cond": {"workdir": str(tmp_path / "run")}}, solvers=("euler",), nfe=(4,),
                  guidance=(None, 2.0))
    out = runner.run(config, str(tmp_path / "sweep"), progress=False)
    passes = {r["guidance"]: (r["nfe"], r["forward_passes"]) for r in out["rows"]}
    assert passes == {None: (4, 4), 2.0: (4, 8)}


def test_the_digits_metrics_put_real_held_out_digits_at_their_floor():
    """Each digits metric's floor is what real test digits score: a Fréchet distance's at the cells' own sample count
    (its bias falls as 1/N), the unbiased KID's and the legible fraction's directly."""
    from flowgen.evals import digits_fid
    from flowgen.sweep.metrics import METRICS

    test = digits_fid.split_images("test")[0]
    fid_1000, fid_297 = METRICS["digits_fid"]("flowgen_digits", 1000), METRICS["digits_fid"]("flowgen_digits", 297)
    assert fid_1000.floor < fid_297.floor == pytest.approx(digits_fid.floor(), rel=0.05)
    assert fid_1000.floor_samples == 1000
    legible = METRICS["legible"]("flowgen_digits", 1000)
    assert legible(test) == legible.floor > 0.9
    noise = np.random.default_rng(0).uniform(-1, 1, (297, 8, 8, 1)).astype(np.float32)
    assert legible(noise) < 0.5 * legible.floor
    kid = METRICS["digits_kid"]("flowgen_digits", 297)
    assert kid(test) == kid.floor < kid(noise)
    precision, recall = METRICS["digits_precision"]("flowgen_digits", 297), METRICS["digits_recall"]("flowgen_digits",
                                                                                                    297)
    assert precision(noise) < precision.floor and recall(noise) < recall.floor
