"""Sweeps of few-step models: a method's own sampler as a sweep solver (honest NFE per budget), models trained on a
teacher's pairs (reflow, distillation) in waves, and the reflow experiment's claims (straighter with k)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from flowgen.reflow import read_provenance
from flowgen.sweep import launch, runner, spec

REPO = Path(__file__).resolve().parents[1]


def rows_by(result, *keys):
    return {tuple(r[k] for k in keys): r for r in result["rows"]}


@pytest.mark.slow
def test_a_methods_own_sampler_is_a_sweep_solver_with_measured_nfe(tmp_path):
    """MeanFlow's jumps at every budget, shortcut's at the largest power of two that fits, and fg.sample's Euler on
    the same networks at extra time 0; the per-model ``solvers`` list keeps each sampler to its model."""
    config = {"models": {"mf": {"train": "configs/toy2d_meanflow.py:small", "solvers": ("meanflow", "euler")},
                         "sc": {"train": "configs/toy2d_shortcut.py:small", "solvers": ("shortcut",)}},
              "solvers": ("euler",), "nfe": (1, 3), "seeds": (0,), "metrics": ("sliced_w2", "straightness"),
              "num_samples": 64}
    result = runner.run(config, str(tmp_path), progress=False)
    assert not result["failed"]
    rows = rows_by(result, "model", "solver", "nfe_budget")
    assert set(rows) == {(m, s, b) for m, s in (("mf", "meanflow"), ("mf", "euler"), ("sc", "shortcut"))
                         for b in (1, 3)}
    assert [rows[("mf", "meanflow", b)]["nfe"] for b in (1, 3)] == [1, 3]
    assert [rows[("sc", "shortcut", b)]["nfe"] for b in (1, 3)] == [1, 2]          # 3 fits 2 jumps of 1/2
    assert [rows[("mf", "euler", b)]["nfe"] for b in (1, 3)] == [1, 3]
    assert rows[("mf", "meanflow", 1)]["grid"] == "uniform"
    # straightness is a property of the model's ODE: NaN for the jumps, a number for Euler
    jumps = rows[("mf", "meanflow", 1)]["metrics"]["straightness"]
    assert jumps is None or math.isnan(jumps)                      # NaN is written as null in the cell's JSON
    assert rows[("mf", "euler", 1)]["metrics"]["straightness"] >= 0


def test_models_run_in_waves_after_their_teachers_and_not_after_a_failed_one(tmp_path):
    """A fake launcher records the waves: teachers first; a model whose teacher failed is reported, not run."""
    config = {"models": {"exact": {"analytic": "circle"},
                         "a": {"train": "configs/toy2d_rf.py:small", "teacher": "exact"},
                         "b": {"train": "configs/toy2d_rf.py:small", "teacher": "a"},
                         "c": {"train": "configs/toy2d_rf.py:small"}},
              "solvers": ("euler",), "nfe": (1,), "metrics": ("sliced_w2",), "num_samples": 8}
    parsed = spec.parse(config)
    assert [m.depth for m in parsed.models] == [0, 1, 2, 0]
    assert parsed.models[2].teacher.teacher.name == "exact"

    class Fake:
        waves = []

        def run(self, tasks):
            self.waves.append([t.model for t in tasks])
            return [launch.Failure(t, t.log, "boom") for t in tasks if t.model == "a"]

    fake = Fake()
    failures = runner._run_in_waves(fake, parsed, ["a", "b", "c"], str(tmp_path))
    assert fake.waves == [["c"], ["a"]]
    assert {f.task.model: f.message for f in failures} == {"a": "boom", "b": "its teacher 'a' failed"}


@pytest.mark.slow
def test_the_reflow_experiment_straightens_its_flows(tmp_path):
    """``experiments/toy2d_reflow.py:quick`` end to end, plus a 2-RF of the *exact* flow: rectifying makes the ODE
    measurably straighter (Liu et al.'s S), from a trained 1-RF and from the exact one; the distilled model samples
    in one call; each pair set records its teacher."""
    module = importlib.util.spec_from_file_location("toy2d_reflow", REPO / "experiments" / "toy2d_reflow.py")
    experiment = importlib.util.module_from_spec(module)
    module.loader.exec_module(experiment)
    config = experiment.get_config("quick")
    config.models["exact"] = {"analytic": "8gaussians"}
    config.models["2-rf-of-exact"] = {"train": experiment._rf(300), "teacher": "exact",
                                      "pairs": {"num_pairs": 2048, "num_steps": 32}}
    result = runner.run(config, str(tmp_path), progress=False)
    assert not result["failed"]
    rows = rows_by(result, "model", "solver", "nfe_budget")
    models = ("exact", "1-rf", "2-rf", "3-rf", "2-rf-of-exact")
    s = {m: rows[(m, "euler", 1)]["metrics"]["straightness"] for m in models}
    print(json.dumps(s))
    assert s["2-rf"] < 0.5 * s["1-rf"] and s["3-rf"] < 0.5 * s["1-rf"]
    assert s["2-rf-of-exact"] < 0.5 * s["exact"]
    distilled = rows[("2-rf-distill", "one_step", 1)]
    assert distilled["nfe"] == 1 and distilled["status"] == "done"
    pair_files = sorted((tmp_path / "pairs").glob("*/pairs.npz"))
    teachers = sorted(read_provenance(str(f))["teacher"].rsplit("/", 1)[-1] for f in pair_files)
    assert teachers == ["1-rf", "2-rf", "analytic:8gaussians"]


def test_the_reflow_reproduction_reports_paired_verdicts():
    """``experiments/reproductions/liu_reflow.py``'s verdicts on synthetic cells: paired over seeds, 2 s.e."""
    module = importlib.util.spec_from_file_location("liu_reflow", REPO / "experiments" / "reproductions" /
                                                    "liu_reflow.py")
    liu = importlib.util.module_from_spec(module)
    module.loader.exec_module(liu)
    assert liu._verdict({0: 1.0, 1: 2.0, 2: 3.0}, {0: 5.0, 1: 6.1, 2: 6.9}) == "holds"
    assert liu._verdict({0: 5.0, 1: 6.1, 2: 6.9}, {0: 1.0, 1: 2.0, 2: 3.0}) == "does not hold"
    assert liu._verdict({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 1.0, 2: 3.0}) == "undecided"
    assert liu._verdict({0: 1.0}, {0: 2.0}) == "undecided (one seed)"

    def cell(model, series, nfe, seed, **metrics):
        return {"model": model, "series": series, "nfe_budget": nfe, "seed": seed, "status": "done",
                "metrics": metrics}

    rows = []
    for seed in (0, 1, 2):
        for k, (one, four, s) in {"1-rf": (300, 50, 1.0), "2-rf": (60, 55, 0.1), "3-rf": (58, 56, 0.05)}.items():
            rows += [cell(k, "euler", 1, seed, w2=one + seed, straightness=s + 0.01 * seed),
                     cell(k, "euler", 4, seed, w2=four + seed, straightness=s + 0.01 * seed)]
        rows.append(cell("2-rf-distill", "one_step", 1, seed, w2=70 + seed))
    for r in rows:
        r.update(data="8gaussians", num_samples=1000)
    text = liu.report({"toy": (rows, "w2", "3 seeds")}, 60.0)
    assert "| 2-rf | 12.21 | 61 ± 1 | 56 ± 1 | 0.11 ± 0.01 |" in text
    assert "| toy | 2-RF beats 1-RF at 1 step | holds |" in text
    assert "| toy | 2-RF + distill beats 2-RF at 1 step | does not hold |" in text
