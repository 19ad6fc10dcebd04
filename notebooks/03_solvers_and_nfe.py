# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Solvers and NFE on an exact model
#
# The 8-Gaussian mixture has a closed-form posterior, so `GaussianMixture.model(path, target)` is the *exact*
# model of every path and target: whatever error we see below is the solver's alone. We measure each solver's
# error against a tight adaptive reference solution as a function of NFE — the number of model calls it actually
# made, counted by flowgen, not declared — compare curved and straight trajectories, and see what classifier-free
# guidance costs in forward passes. Runs in about a minute.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import flowgen as fg

jax.config.update("jax_enable_x64", True)
gmm = fg.analytic.GaussianMixture.circle()
z = jax.random.normal(jax.random.key(0), (500, 2), jnp.float64)


def reference(path, target):
    x, info = fg.sample(gmm.model(path, target), path, target=target, solver="dopri5", noise=z,
                        solver_options={"rtol": 1e-10, "atol": 1e-10})
    return x, int(info["nfe"])

# %% [markdown]
# ## Error against NFE
# On the VP path with noise prediction (score_sde's setting). The exponential integrators (DDIM, DPM-Solver++,
# UniPC) solve the linear part of the ODE exactly and step in log-SNR; Runge–Kutta solvers step in t.

# %%
path = fg.paths.get("vp_linear")
target = "noise"
x_ref, nfe_ref = reference(path, target)
print(f"reference: dopri5 at rtol 1e-10 used {nfe_ref} model calls")

from flowgen.sweep.budget import steps_for_budget  # NFE budget -> steps, from the solver's measured cost

solvers = ["euler", "heun", "rk4", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc"]
results = {}
for solver in solvers:
    rows = []
    for nfe_budget in [4, 8, 16, 32, 64]:
        steps = steps_for_budget(fg.solvers.get(solver), path, target, nfe_budget)
        x, info = fg.sample(gmm.model(path, target), path, target=target, solver=solver, num_steps=steps, noise=z)
        rows.append((int(info["nfe"]), float(jnp.sqrt(jnp.mean((x - x_ref) ** 2)))))
    results[solver] = np.array(rows)

markers = "os^vD<>"
for (solver, rows), m in zip(results.items(), markers):
    plt.loglog(rows[:, 0], rows[:, 1], marker=m, label=solver)
plt.xlabel("NFE (measured model calls)")
plt.ylabel("rms error vs reference")
plt.legend()
plt.show()
for solver, rows in results.items():
    slope = -np.polyfit(np.log(rows[-3:, 0]), np.log(rows[-3:, 1]), 1)[0]
    print(f"{solver:9s} error at NFE {int(rows[2, 0]):3d}: {rows[2, 1]:.2e}   fitted order at high NFE: {slope:.2f}")

# %% [markdown]
# The fitted slopes approach each solver's order (1 for Euler and DDIM, 2 for Heun and DPM-Solver++(2M), 3 for
# order-3 UniPC, 4 for RK4, which needs more NFE than shown to reach it on this path). DPM-Solver++(3M) as published
# (the update every reference code uses) is formally second order yet more accurate than its Taylor-exact variant
# (`solver_options={"taylor_exact_d2": True}`, order 3) at the step counts people use. Note that Heun's NFE is twice its step count: a "20-step Heun" is 40 network calls (39 on EDM's grid, where
# the last step into σ = 0 is a plain Euler step — flowgen counts what was done).

# %% [markdown]
# ## Curved and straight trajectories
# The same solver and the same NFE do better where trajectories are straight. On the linear path a *single*
# Gaussian has exactly straight trajectories (the exact flow map is affine in t); the 8-Gaussian mixture bends
# them where the marginal velocity averages over components.

# %%
linear = fg.paths.get("linear")


def euler_trajectory(model, path, noise, num_steps):
    """Every intermediate state of Euler on dx/dt = u(x, t), only to draw the curves (fg.sample returns the end)."""
    ts = jnp.linspace(path.t_min, path.t_max, num_steps + 1)

    def step(x, t01):
        t0, t1 = t01
        x = x + (t1 - t0) * model(x, jnp.full(x.shape[:1], t0))
        return x, x

    x0 = path.sigma(ts[0]) * noise
    _, xs = jax.jit(lambda x0: jax.lax.scan(step, x0, (ts[:-1], ts[1:])))(x0)
    return np.concatenate([np.asarray(x0)[None], np.asarray(xs)])


single = fg.analytic.GaussianMixture(means=np.array([[2.0, 1.0]]), std=0.5)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (title, mixture) in zip(axes, [("one Gaussian: straight", single), ("8 Gaussians: curved", gmm)]):
    model = mixture.model(linear, "velocity")
    traj = euler_trajectory(model, linear, z[:150], num_steps=40)
    ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.5, c="gray")
    ax.scatter(*traj[-1].T, s=4, c="C1")
    x1, info = fg.sample(model, linear, solver="euler", num_steps=1, noise=z)
    x_ref1, _ = fg.sample(model, linear, solver="dopri5", noise=z, solver_options={"rtol": 1e-10, "atol": 1e-10})
    ax.set_title(f"{title}\none Euler step: rms error {float(jnp.sqrt(jnp.mean((x1 - x_ref1) ** 2))):.1e}")
plt.show()

# %% [markdown]
# ## What guidance costs
# Classifier-free guidance mixes a conditional and an unconditional prediction at every call,
# $\text{uncond} + w\,(\text{cond} - \text{uncond})$, on every output channel. flowgen runs both as one batch, so a
# guided call is one model call but two network forward passes: `info` reports both.

# %%
labels = jnp.arange(500) % 8
cond_model = gmm.model(linear, "velocity", conditional=True)
for w in [None, 1.0, 3.0]:
    kwargs = {} if w is None else {"cond": labels, "guidance": w, "null_cond": 8}
    model = cond_model if w is not None else gmm.model(linear, "velocity")
    x, info = fg.sample(model, linear, solver="heun", num_steps=8, noise=z, **kwargs)
    print(f"guidance {w!s:4s}: NFE {int(info['nfe'])}, forward passes {int(info['forward_passes'])}")
