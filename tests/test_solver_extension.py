"""Adding a solver: one class and one registry entry, nothing else.

Worked example: Ralston's third-order Runge–Kutta method (Ralston 1962), whose Butcher tableau is

    c = (0, 1/2, 3/4),   a = ((1/2,), (0, 3/4)),   b = (2/9, 1/3, 4/9).

An explicit Runge–Kutta method is tableau data on ``fg.solvers.ExplicitRK``; everything the sampler and the sweep
need to know is on the class (name, order, calls per step from the tableau, ``default_grid``, ``adaptive``, ...):

    import dataclasses
    from typing import ClassVar

    import flowgen as fg


    @dataclasses.dataclass(frozen=True)
    class Ralston3(fg.solvers.ExplicitRK):
        name: ClassVar[str] = "ralston3"
        order: ClassVar[int] = 3
        a = ((1 / 2,), (0.0, 3 / 4))
        b = (2 / 9, 1 / 3, 4 / 9)
        c = (0.0, 1 / 2, 3 / 4)


    fg.solvers.SOLVERS[Ralston3.name] = Ralston3          # or pass solver=Ralston3() without registering

    x, info = fg.sample(model, "linear", solver="ralston3", num_steps=16, key=key, shape=(512, 2))
    # info["nfe"] == 48: three model calls per step, measured
    # python -m experiments.analytic_sweep --solvers ralston3,heun,rk4 --paths linear  (in the same process)

A solver that is not a Runge–Kutta tableau subclasses ``fg.solvers.Solver`` and implements ``step`` (and ``init``
for multistep state) or ``solve`` (adaptive); see ``flowgen/solvers/base.py``. Requirements on the path or target
go in ``check_grid``, and a result that must not be returned eagerly is refused in ``check_result``.

The tests below run this example: the new solver samples through ``fg.sample`` with measured NFE, converges at
its order, and is swept by ``experiments.analytic_sweep`` without touching any other file.
"""

import dataclasses
import json
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import analytic_sweep as sweep  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Ralston3(fg.solvers.ExplicitRK):
    name: ClassVar[str] = "ralston3"
    order: ClassVar[int] = 3
    a = ((1 / 2,), (0.0, 3 / 4))
    b = (2 / 9, 1 / 3, 4 / 9)
    c = (0.0, 1 / 2, 3 / 4)


@pytest.fixture
def registered(monkeypatch):
    """Register the new solver for one test (``monkeypatch`` restores the table afterwards)."""
    monkeypatch.setitem(fg.solvers.SOLVERS, Ralston3.name, Ralston3)


def test_new_solver_samples_at_its_order(registered, x64):
    """Single-Gaussian data, where the probability-flow ODE has a closed-form solution: error ∝ h³."""
    gmm = fg.analytic.GaussianMixture([[1.0, -2.0]], 0.5)
    path = fg.paths.get("linear")
    z = jax.random.normal(jax.random.key(0), (32, 2), jnp.float64)
    exact = gmm.exact_flow_map(path, path.sigma(0.0) * z, 0.0, 1.0)
    errors = []
    for n in (4, 8, 16):
        x, info = fg.sample(gmm.model(path, "velocity"), path, solver="ralston3", num_steps=n, noise=z)
        assert int(info["nfe"]) == 3 * n
        errors.append(float(np.max(np.abs(np.asarray(x) - exact))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(orders, 3.0, atol=0.25)


def test_new_solver_is_swept_without_touching_other_files(registered, tmp_path):
    out = sweep.main(["--paths", "linear", "--solvers", "ralston3", "--steps", "8,16,32", "--num-samples", "64",
                      "--no-plot", "--out", str(tmp_path)])
    info = json.loads((out / "results.json").read_text())
    rows = info["rows"]
    assert [(r["solver"], r["steps"], r["nfe"], r["grid"]) for r in rows] == [
        ("ralston3", n, 3 * n, "uniform") for n in (8, 16, 32)]
    [order] = info["convergence_orders"]
    assert 2.5 < order["order"] < 3.5, order


def test_default_step_counts_come_from_the_solver(registered):
    """Without --steps, the sweep picks step counts from ``calls_per_step`` (3 here) to span the NFE range."""
    configs = sweep.make_configs(sweep.parse_args(["--paths", "linear", "--solvers", "ralston3,dopri5",
                                                   "--max-nfe", "100", "--tolerances", "1e-3,1e-4"]))
    assert [c.steps for c in configs if c.spec.name == "ralston3"] == [1, 2, 4, 8, 16, 32]
    assert [(c.steps, c.solver().rtol) for c in configs if c.spec.name == "dopri5"] == [(None, 1e-3), (None, 1e-4)]
