"""Sweep config: the error of every solver on the exact 2-D 8-Gaussian mixture, in float64, with fitted orders.

    python -m flowgen.main --mode=sweep --config=experiments/analytic_sweep.py --workdir=results/analytic_sweep
    python -m flowgen.main --mode=sweep --config=experiments/analytic_sweep.py:quick --workdir=/tmp/quick

The models are the exact posterior of ``GaussianMixture.circle()`` (the toy set "circle") on the rectified-flow path
(velocity) and the VP path (noise prediction), so every error measured is the solver's own. Metrics:

  ode_error   RMS distance to the same probability-flow ODE solved from the same noise over the same interval by
              dopri5 at rtol = atol = 1e-10 (deterministic solvers; the report fits each solver's convergence order)
  sliced_w2   sliced W2 to true samples (every solver, the stochastic ones included), with its Monte-Carlo floor
  nll_gap     mean NLL of the samples minus that of true samples, under the exact density

Both models start at t = 1e-3, where every solver (the reverse-SDE ones included) can run. NFE is measured; each
cell runs the most steps whose measured NFE fits the budget. A new solver registered in ``fg.solvers.SOLVERS`` is
swept by naming it in ``solvers`` (tests/test_solver_extension.py). The whole sweep takes a few minutes on 2 CPU
cores (compilation dominates: one per solver and step count); ``:quick`` is the seconds-long variant the tests run.
"""

import ml_collections

SOLVERS = ("euler", "midpoint", "heun", "rk4", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ddim:eta=1.0",
           "euler_maruyama", "edm_stochastic:s_churn=10.0")


def get_config(variant: str = ""):
    c = ml_collections.ConfigDict()
    c.title = "Solver error against NFE on the exact 2-D 8-Gaussian mixture (float64)"
    c.models = {"linear_velocity": {"analytic": "circle", "path": "linear", "target": "velocity", "t_start": 1e-3},
                "vp_noise": {"analytic": "circle", "path": "vp_linear", "target": "noise", "t_start": 1e-3}}
    c.solvers = SOLVERS
    c.nfe = (2, 4, 8, 16, 32, 64, 128, 256)
    c.guidance = (None,)
    c.seeds = (0,)
    c.metrics = ("ode_error", "sliced_w2", "nll_gap")
    c.num_samples = 2000
    c.grid = ""
    c.skip_unreachable = True
    c.dtype = "float64"
    if variant == "quick":
        c.models = {"linear_velocity": c.models["linear_velocity"].to_dict()}
        c.solvers = ("euler", "heun", "rk4", "dpmpp_2m", "euler_maruyama")
        c.nfe = (32, 64, 128)
        c.num_samples = 256
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of analytic_sweep; valid: '' or 'quick'")
    return c
