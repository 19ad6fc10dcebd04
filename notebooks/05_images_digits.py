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
# # 5. Images: digits, sample grids and an NFE sweep
#
# The research workflow end to end on scikit-learn's 8×8 digits (embedded; nothing is downloaded): train a
# rectified-flow model with the real training entry point, load the trained run as a value, draw sample grids with
# different solvers, and sweep NFE against digits-FID with the sweep runner — the same code as the README's main
# command, at a size that runs in a couple of minutes on a laptop CPU.

# %%
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

import flowgen as fg
from flowgen.evals import digits_fid
from flowgen.sweep.runner import run as run_sweep
from flowgen.train.config import base_config
from flowgen.train.loop import train_and_evaluate

workdir = tempfile.mkdtemp(prefix="flowgen_digits_")

# %% [markdown]
# ## Train
# An MLP on the 64 pixels, linear path, velocity target: the main command's recipe with fewer steps. The workdir
# gets checkpoints, metrics and sample grids; running the cell again resumes (here: says it is done).

# %%
config = base_config()
config.data.name = "flowgen_digits"
config.data.batch_size = 128
config.model.kwargs = {"hidden": 512, "depth": 3}
config.path.name = "linear"
config.loss.target = "velocity"
config.optim.lr = 2e-3
config.ema.decays = (0.99,)
config.train.num_steps = 600
config.train.log_every = 200
config.train.checkpoint_every = 600
config.train.sample_every = 0
metrics = train_and_evaluate(config, os.path.join(workdir, "rf"))
print({k: round(float(v), 4) for k, v in metrics.items() if k in ("loss", "step")})

# %% [markdown]
# ## A trained run is a value
# `fg.load_model` reads the newest good checkpoint and the run's saved config, and writes nothing.

# %%
model = fg.load_model(os.path.join(workdir, "rf"))
print(model.path, model.target, model.element_shape, "step", model.step)


def grid_image(x, rows=8):
    x = np.clip(np.asarray(x).reshape(-1, 8, 8), -1, 1)
    cols = len(x) // rows
    return x[: rows * cols].reshape(rows, cols, 8, 8).transpose(0, 2, 1, 3).reshape(rows * 8, cols * 8)


z = jax.random.normal(jax.random.key(0), (64, *model.element_shape))
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (solver, steps) in zip(axes, [("euler", 2), ("euler", 16), ("heun", 8), ("dpmpp_2m", 16)]):
    x, info = fg.sample(model.apply, model.path, target=model.target, params=model.params, solver=solver,
                        num_steps=steps, noise=z)
    ax.imshow(grid_image(x), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(f"{solver}, {steps} steps, NFE {int(info['nfe'])}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Digits-FID
# The Fréchet distance between a small digit classifier's features of the samples and of the training digits. Its
# floor is the held-out test split's own value: samples as good as real unseen digits reach the floor, not 0.

# %%
x, _ = fg.sample(model.apply, model.path, target=model.target, params=model.params, solver="heun", num_steps=16,
                 key=jax.random.key(1), shape=(297, *model.element_shape))
print(f"digits-FID of 297 samples (Heun, 16 steps): {digits_fid.digits_fid(x):.1f}; "
      f"floor at 297 samples: {digits_fid.floor():.1f}")

# %% [markdown]
# ## An NFE sweep
# A sweep config names models, solvers, NFE budgets, seeds and metrics; each cell runs the most steps whose measured
# NFE fits its budget and is written once, so re-running the sweep recomputes nothing.

# %%
sweep = ml_collections.ConfigDict()
sweep.title = "notebook sweep"
sweep.models = {"rf": {"workdir": os.path.join(workdir, "rf")}}
sweep.solvers = ("euler", "heun", "dpmpp_2m")
sweep.nfe = (2, 4, 8, 16)
sweep.guidance = (None,)
sweep.seeds = (0,)
sweep.metrics = ("digits_fid",)
sweep.num_samples = 500
sweep.grid = ""
sweep.skip_unreachable = True
result = run_sweep(sweep, os.path.join(workdir, "sweep"), progress=False)
print(result["markdown"][:2500])

# %%
from IPython.display import Image, display  # noqa: E402

display(Image(result["files"]["plot_digits_fid"]))
