"""flowgen: flow matching and diffusion models in JAX.

Convention (docs/conventions.md): t = 0 is noise, t = 1 is data, ``x_t = α(t)·x_data + σ(t)·noise``.

    import flowgen as fg
    path = fg.paths.get("linear")
    gmm = fg.analytic.GaussianMixture.circle()
    x, info = fg.sample(gmm.model(path, "noise"), path, target="noise", solver="dpmpp_2m", num_steps=10,
                        key=jax.random.key(0), shape=(1000, 2))
"""

from flowgen import _platform

_platform.quiet_missing_libtpu()  # before anything initialises JAX's backends; see flowgen/_platform.py

from flowgen import analytic, paths, solvers  # noqa: E402
from flowgen.sampling import sample  # noqa: E402


def load_model(workdir, params: str = "ema", step: int | None = None):
    """A trained model from a training workdir (see ``flowgen.trained.load_model``); imported lazily."""
    from flowgen.trained import load_model as _load

    return _load(workdir, params=params, step=step)

__version__ = "0.1.0"
__all__ = ["analytic", "load_model", "paths", "sample", "solvers"]
