"""ODE and SDE solvers, time grids and the scan driver.

``get(name, **kwargs)`` builds a solver by name from the explicit table ``SOLVERS``:

    euler, midpoint, heun, rk4          explicit Runge–Kutta on the probability-flow ODE   (ode.py)
    dopri5                              adaptive Dormand–Prince 5(4)                        (adaptive.py)
    ddim, dpmpp_2m, dpmpp_3m            exponential integrators on the data prediction     (diffusion.py)
    unipc                               UniPC-bh2 predictor–corrector multistep             (unipc.py)
    euler_maruyama, pc, edm_stochastic  reverse-SDE family, predictor–corrector, EDM        (sde.py)
"""

from __future__ import annotations

from flowgen import options
from flowgen.solvers import grids
from flowgen.solvers.adaptive import Dopri5
from flowgen.solvers.base import Context, Solver, integrate
from flowgen.solvers.diffusion import DDIM, DPMSolverPP2M, DPMSolverPP3M
from flowgen.solvers.ode import RK4, Euler, ExplicitRK, Heun, Midpoint
from flowgen.solvers.sde import DIFFUSIONS, EDMStochastic, EulerMaruyama, PredictorCorrector
from flowgen.solvers.unipc import UniPC

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls
    for cls in (Euler, Midpoint, Heun, RK4, Dopri5, DDIM, DPMSolverPP2M, DPMSolverPP3M, UniPC, EulerMaruyama,
                PredictorCorrector, EDMStochastic)
}


def get(name: str | Solver, **kwargs) -> Solver:
    """A solver by name with keyword hyper-parameters (validated); a Solver instance passes through (validated)."""
    if isinstance(name, Solver):
        if kwargs:
            raise ValueError(f"solver options {sorted(kwargs)} given with a Solver instance {name!r}")
        solver = name
    else:
        solver = options.build(SOLVERS, name, "solver", kwargs)
    solver.check()
    return solver


__all__ = [
    "DDIM", "DIFFUSIONS", "RK4", "SOLVERS", "Context", "DPMSolverPP2M", "DPMSolverPP3M", "Dopri5", "EDMStochastic",
    "Euler", "EulerMaruyama", "ExplicitRK", "Heun", "Midpoint", "PredictorCorrector", "Solver", "UniPC", "get", "grids",
    "integrate",
]
