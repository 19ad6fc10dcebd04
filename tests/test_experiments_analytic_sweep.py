"""experiments/analytic_sweep.py: the quick sweep writes its files, one row per configuration, measured NFE that
matches what each solver does, converging ODE errors, and never overwrites earlier results."""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# experiments/ is a top-level directory of the repository, not part of the installed flowgen package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import analytic_sweep as sweep  # noqa: E402
from experiments import report  # noqa: E402

# NFE each solver really spends for n steps on the quick sweep's grids (all of which end where the solver says).
NFE = {"euler": lambda n: n, "heun": lambda n: 2 * n, "rk4": lambda n: 4 * n, "dpmpp_2m": lambda n: n,
       "euler_maruyama": lambda n: n}


def read_rows(directory):
    with open(directory / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    written = sweep.main(["--quick", "--out", str(out)])
    return out, written


def test_quick_sweep_writes_every_file(quick):
    out, written = quick
    assert written == out
    for name in report.RESULT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "nfe_vs_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "results.json").read_text())
    env = info["environment"]
    assert env["dtype"] == "float64" and env["num_samples"] == sweep.QUICK["num_samples"] and env["seed"] == 0
    assert env["jax"] and env["backend"] and env["devices"]
    assert 0 < info["noise_floor"]["sw2"] < 1 and info["noise_floor"]["nll_gap"] >= 0


def test_one_row_per_configuration(quick):
    out, _ = quick
    configs = sweep.make_configs(sweep.parse_args(["--quick"]))
    rows = read_rows(out)
    assert len(rows) == len(configs) == 15
    assert [(r["path"], r["target"], r["solver"], r["steps"]) for r in rows] == [
        (c.path, c.target, c.spec.name, str(c.steps)) for c in configs
    ]
    md = (out / "results.md").read_text()
    header = "| " + " | ".join(report.COLUMNS) + " |"
    assert header in md
    table = md.split(header)[1].split("\n\n")[0].strip().splitlines()[1:]       # below the |---| line
    assert len(table) == len(configs)
    assert {(r["path"], r["target"]) for r in rows} == {("linear", "velocity")}


def test_nfe_is_what_each_solver_does(quick):
    rows = read_rows(quick[0])
    for r in rows:
        assert int(r["nfe"]) == NFE[r["solver"]](int(r["steps"])), r
        assert int(r["forward_passes"]) == int(r["nfe"])


def test_metrics_are_finite_and_ode_errors_converge_at_each_solvers_order(quick):
    """On 8, 16, 32 steps: Euler's error is ∝ 1/NFE (halves exactly as NFE doubles), and the fitted orders in
    results.json are the solvers' orders (measured: euler 0.99, heun 1.76, rk4 3.66; local orders of the last
    doubling 0.99, 1.83, 3.81: pre-asymptotic from below, as expected)."""
    out, _ = quick
    rows = read_rows(out)
    for r in rows:
        assert r["finite"] == "True" and math.isfinite(float(r["sw2"])) and math.isfinite(float(r["nll_gap"]))
        if r["solver"] == "euler_maruyama":
            assert r["ode_rmse"] == "" and r["stochastic"] == "True"
    errors = {s: [float(r["ode_rmse"]) for r in sorted((r for r in rows if r["solver"] == s),
                                                        key=lambda r: int(r["steps"]))]
              for s in ("euler", "heun", "rk4", "dpmpp_2m")}
    local = {s: np.log2(np.array(e[:-1]) / np.array(e[1:])) for s, e in errors.items()}   # per doubling of NFE
    np.testing.assert_allclose(local["euler"], 1.0, atol=0.03)               # error · NFE constant to 2 %
    assert np.all((local["heun"] > 1.6) & (local["heun"] < 2.2)) and local["heun"][-1] > local["heun"][0]
    assert np.all((local["rk4"] > 3.4) & (local["rk4"] < 4.3)) and local["rk4"][-1] > local["rk4"][0]
    assert local["dpmpp_2m"][-1] > 1.8                                       # 16 → 32 steps: second order
    orders = {o["series"]: o["order"] for o in json.loads((out / "results.json").read_text())["convergence_orders"]}
    assert abs(orders["euler"] - 1) < 0.05 and 1.6 < orders["heun"] < 2.2 and 3.4 < orders["rk4"] < 4.3, orders


def test_late_start_only_where_the_sampler_refuses_the_default_interval(quick):
    for r in read_rows(quick[0]):
        late = r["solver"] == "euler_maruyama" and r["path"] == "linear"   # g² is infinite where α = 0
        assert (r["late_start"] == "True") == late, r
        # DPM-Solver's log-SNR grid cannot start where α = 0: it starts at EDM's σ/α = 80, i.e. t = 1/81.
        assert float(r["t_start"]) == pytest.approx(1e-3 if late else 1 / 81 if r["solver"] == "dpmpp_2m" else 0.0)
        assert float(r["t_end"]) == 1.0


def test_second_run_does_not_destroy_the_first(quick):
    out, _ = quick
    before = {name: (out / name).read_bytes() for name in report.RESULT_FILES}
    small = ["--quick", "--paths", "vp_linear", "--solvers", "euler", "--steps", "2", "--num-samples", "64",
             "--no-plot", "--out", str(out)]
    second = sweep.main(small)
    assert second != out and second.parent == out
    assert {name: (out / name).read_bytes() for name in report.RESULT_FILES} == before
    [row] = read_rows(second)
    assert (row["path"], row["target"], row["nfe"], float(row["t_end"])) == ("vp_linear", "noise", "2", 0.999)
    third = sweep.main(small)                                # a third run gets yet another directory
    assert third not in (out, second) and len(read_rows(second)) == 1
    overwritten = sweep.main([*small, "--overwrite"])
    assert overwritten == out and len(read_rows(out)) == 1


def test_sliced_w2_of_a_shift():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 2))
    dirs = rng.standard_normal((16, 2))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    shift = np.array([0.3, -1.2])
    assert sweep.sliced_w2(x, x[::-1], dirs) == 0.0
    assert sweep.sliced_w2(x, x + shift, dirs) == pytest.approx(np.sqrt(np.mean((dirs @ shift) ** 2)))


@pytest.mark.parametrize("bad", [["--solvers", "nope"], ["--solvers", "ddim:eta=7"], ["--paths", "linear:bogus"],
                                 ["--steps", "0"]])
def test_bad_arguments_are_refused(bad, tmp_path):
    with pytest.raises(SystemExit) as e:
        sweep.main([*bad, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert not any(tmp_path.iterdir())
