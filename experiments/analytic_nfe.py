"""Sweep config: every fixed-step solver on the exact 2-D 8-Gaussian mixture (no training), NFE 2..256.

    python -m flowgen.main --mode=sweep --config=experiments/analytic_nfe.py --workdir=results/analytic_nfe

The model is the exact posterior of ``GaussianMixture.circle()`` (the toy set "circle") on a rectified-flow path
(velocity) and on the VP path (noise prediction), so every error is the solver's own. Metrics: sliced W2 to true
samples and the exact NLL gap, each with its Monte-Carlo floor. Both models start at t = 1e-3, where every solver
(the reverse-SDE ones included) can run. For the ODE error against a reference solve and
fitted convergence orders see ``experiments/analytic_sweep.py`` (the same models in float64).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.title = "NFE vs. quality on the exact 2-D 8-Gaussian mixture"
    # Every model starts at t = 1e-3: the reverse-SDE solvers need α(t) > 0 (their diffusion is infinite at α = 0).
    c.models = {"linear_velocity": {"analytic": "circle", "path": "linear", "target": "velocity", "t_start": 1e-3},
                "vp_noise": {"analytic": "circle", "path": "vp_linear", "target": "noise", "t_start": 1e-3}}
    c.solvers = ("euler", "midpoint", "heun", "rk4", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ddim:eta=1.0",
                 "euler_maruyama", "edm_stochastic:s_churn=10.0")
    c.nfe = (2, 4, 8, 16, 32, 64, 128, 256)
    c.guidance = (None,)
    c.seeds = (0, 1)
    c.metrics = ("sliced_w2", "nll_gap")
    c.num_samples = 2000
    c.grid = ""
    c.skip_unreachable = True
    return c
