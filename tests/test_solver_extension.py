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
    # and swept by naming it in a sweep config's solvers (flowgen.sweep; e.g. experiments/analytic_sweep.py)

A solver that is not a Runge–Kutta tableau subclasses ``fg.solvers.Solver`` and implements ``step`` (and ``init``
for multistep state) or ``solve`` (adaptive); see ``flowgen/solvers/base.py``. Requirements on the path or target
go in ``check_grid``, and a result that must not be returned eagerly is refused in ``check_result``.

A variant of an existing solver under a new name (say an EDM sampler with S_churn = 40 by default) subclasses it
and inherits what it knows: its default grid, being adaptive, its checks.

The tests below run these examples: the new solver samples through ``fg.sample`` with measured NFE, converges at
its order, and is swept by ``flowgen.sweep`` (measured NFE, fitted order) without touching any other file.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.sweep import runner


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
    config = {"models": {"lin": {"analytic": "circle", "path": "linear", "target": "velocity"}},
              "solvers": ("ralston3",), "nfe": (24, 48, 96), "metrics": ("ode_error",), "num_samples": 64,
              "dtype": "float64"}
    result = runner.run(config, str(tmp_path), progress=False)
    assert [(r["solver"], r["steps"], r["nfe"], r["grid"]) for r in result["rows"]] == [
        ("ralston3", n, 3 * n, "uniform") for n in (8, 16, 32)]
    [order] = result["orders"]["ode_error"].values()
    assert 2.5 < order < 3.5, order


@dataclasses.dataclass(frozen=True)
class LooseDopri5(fg.solvers.Dopri5):
    """A variant under its own name: it inherits being adaptive (no num_steps; no NFE budget in a sweep)."""

    name: ClassVar[str] = "dopri5_loose"
    rtol: float = 1e-3
    atol: float = 1e-3


@dataclasses.dataclass(frozen=True)
class ChurnEDM(fg.solvers.EDMStochastic):
    """A variant under its own name: it inherits EDM's default grid and its need for α > 0 on the whole grid."""

    name: ClassVar[str] = "edm_churn"
    s_churn: float = 40.0


def test_variants_under_new_names_inherit_what_their_solver_knows(monkeypatch):
    monkeypatch.setitem(fg.solvers.SOLVERS, LooseDopri5.name, LooseDopri5)
    monkeypatch.setitem(fg.solvers.SOLVERS, ChurnEDM.name, ChurnEDM)
    path = fg.paths.get("linear")
    model = fg.analytic.GaussianMixture.circle().model(path, "data")
    z = jax.random.normal(jax.random.key(0), (16, 2))
    x, info = fg.sample(model, path, target="data", solver="dopri5_loose", noise=z)          # no num_steps
    same, _ = fg.sample(model, path, target="data", solver="dopri5", noise=z, solver_options=dict(rtol=1e-3,
                                                                                                   atol=1e-3))
    np.testing.assert_array_equal(x, same)
    _, churn = fg.sample(model, path, target="data", solver="edm_churn", num_steps=6, noise=z, key=jax.random.key(1))
    _, edm = fg.sample(model, path, target="data", solver="edm_stochastic", num_steps=6, noise=z)
    np.testing.assert_array_equal(churn["grid"], edm["grid"])                           # EDM's ρ = 7 grid
    with pytest.raises(ValueError, match=r"needs α\(t\) > 0"):
        fg.sample(model, path, target="data", solver="edm_churn", num_steps=6, grid="uniform", noise=z,
                  key=jax.random.key(1))
    assert fg.solvers.get("dopri5_loose").adaptive                           # an NFE sweep refuses it
