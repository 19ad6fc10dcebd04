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
# # 2. Paths and prediction targets
#
# A flowgen path is nothing but a pair of schedules $(\alpha(t), \sigma(t))$ with
# $x_t = \alpha(t)\,x_\text{data} + \sigma(t)\,\text{noise}$, $t = 0$ noise and $t = 1$ data. This notebook puts every
# built-in path side by side, shows the same data under each, checks that the prediction targets convert into each
# other exactly, and shows why every affine path's probability-flow ODE is *one* ODE in EDM's variables
# $(x/\alpha,\ \sigma/\alpha)$. No training; runs in seconds.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import flowgen as fg

jax.config.update("jax_enable_x64", True)   # exactness checks below are at float64 round-off
names = ["linear", "trig", "vp_linear", "vp_cosine", "sub_vp", "ve"]
paths = {name: fg.paths.get(name) for name in names}

# %% [markdown]
# ## α and σ side by side
# Each path has a default interval $[t_\min, t_\max]$ where all its coefficients are finite (VP paths stop at
# $1 - 10^{-3}$, as score_sde does). VE keeps $\alpha = 1$ and lets $\sigma$ grow to 50; its panel uses a log scale.

# %%
fig, axes = plt.subplots(1, len(names), figsize=(18, 3))
for ax, (name, path) in zip(axes, paths.items()):
    t = jnp.linspace(path.t_min, path.t_max, 200)
    ax.plot(t, path.alpha(t), label="α")
    ax.plot(t, path.sigma(t), label="σ", ls="--")
    if name == "ve":
        ax.set_yscale("log")
    ax.set_title(name)
    ax.set_xlabel("t")
axes[0].legend()
plt.show()

# %% [markdown]
# ## The half log-SNR λ(t) = log(α/σ)
# Every path is a monotone re-parametrisation of the same family of Gaussian blurs: λ increases from noise to
# data. Solvers that step uniformly in λ (`grid="logsnr"`) therefore see the same grid on every path.

# %%
for name, path in paths.items():
    t = jnp.linspace(path.t_min, path.t_max, 200)
    plt.plot(t, path.log_snr(t), label=name)
plt.xlabel("t")
plt.ylabel("λ(t)")
plt.legend()
plt.show()

# %% [markdown]
# ## The same data under each path
# The 8-Gaussian circle at $t = 0.5$ on each path: the same point cloud, scaled by α and blurred by σ by different
# amounts.

# %%
gmm = fg.analytic.GaussianMixture.circle()
x_data = gmm.sample(jax.random.key(0), 2000)
noise = jax.random.normal(jax.random.key(1), x_data.shape, x_data.dtype)
fig, axes = plt.subplots(1, len(names), figsize=(18, 3))
for ax, (name, path) in zip(axes, paths.items()):
    x_t = path.sample(x_data, noise, jnp.full((2000,), 0.5))
    ax.scatter(*np.asarray(x_t).T, s=1)
    ax.set_title(f"{name}: α={float(path.alpha(0.5)):.2f}, σ={float(path.sigma(0.5)):.2f}")
plt.show()

# %% [markdown]
# ## Prediction targets and exact conversions
# A network may predict the velocity $u = \dot\alpha x_\text{data} + \dot\sigma\,\text{noise}$, the noise, the
# data, $v = \alpha\,\text{noise} - \sigma x_\text{data}$ or the score $-\text{noise}/\sigma$. Given $x_t$, any one
# determines the posterior means $(\hat x, \hat\varepsilon)$ by a 2×2 solve, hence every other. The analytic
# mixture gives exact models for each target: converting one into another reproduces it to round-off.

# %%
targets = fg.paths.TARGETS
t = 0.4
worst = 0.0
for name, path in paths.items():
    x_t = path.sample(x_data, noise, jnp.full((2000,), t))
    tt = jnp.full((2000,), t)
    for source in targets:
        pred = gmm.model(path, source)(x_t, tt)
        for dest in targets:
            converted = fg.paths.convert(pred, source, dest, path, x_t, tt)
            exact = gmm.model(path, dest)(x_t, tt)
            worst = max(worst, float(jnp.max(jnp.abs(converted - exact)) / (1 + jnp.max(jnp.abs(exact)))))
print(f"{len(paths)} paths × {len(targets)}² target pairs: worst relative error {worst:.1e}")
assert worst < 1e-10

# %% [markdown]
# ## One ODE in EDM's variables
# With $\tilde x = x/\alpha$ and $\tilde\sigma = \sigma/\alpha$, every affine path has the same probability-flow ODE
# $d\tilde x/d\tilde\sigma = (\tilde x - \hat x(\tilde x, \tilde\sigma))/\tilde\sigma$ (Karras et al. 2022):
# paths differ only in how time is spent along it. So sampling the *same* noise on three different paths, started
# at the same $\tilde\sigma = 40$ and stopped at $\tilde\sigma = 0.05$, gives the same point after dividing by α.

# %%
z = jax.random.normal(jax.random.key(3), (500, 2), jnp.float64)
ends = {}
for name in ["linear", "vp_linear", "ve"]:
    path = paths[name]
    t_start, t_end = (float(path.t_from_sigma_edm(s)) for s in (40.0, 0.05))
    x, info = fg.sample(gmm.model(path, "data"), path, target="data", solver="rk4", num_steps=200,
                        t_start=t_start, t_end=t_end, noise=z)   # starts at x = σ(t_start)·z, i.e. x/α = 40·z
    ends[name] = np.asarray(x) / float(path.alpha(t_end))
for name in ["vp_linear", "ve"]:
    print(f"max |linear − {name}| after dividing by α: {np.max(np.abs(ends['linear'] - ends[name])):.1e}")
