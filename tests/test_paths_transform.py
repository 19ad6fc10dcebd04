"""The schedule transformation: a model of one path, transformed, is the exact model of another path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.paths.transform import matching_interval, schedule_transformed

PAIRS = [("vp_linear", "noise", "linear", "velocity"), ("linear", "velocity", "vp_cosine", "noise"),
         ("vp_cosine", "data", "trig", "v")]


@pytest.mark.parametrize("src, src_target, dst, dst_target", PAIRS)
def test_transformed_exact_model_is_the_exact_model_of_the_other_path(src, src_target, dst, dst_target):
    with jax.enable_x64(True):
        gmm = fg.analytic.GaussianMixture.circle()
        source, dest = fg.paths.get(src), fg.paths.get(dst)
        model = schedule_transformed(gmm.model(source, src_target), source, src_target, dest, dst_target)
        r0, r1 = matching_interval(source, dest)
        key_r, key_x = jax.random.split(jax.random.key(0))
        r = jax.random.uniform(key_r, (64,), jnp.float64, r0 + 1e-3, r1 - 1e-3)
        x = 3.0 * jax.random.normal(key_x, (64, 2), jnp.float64)
        np.testing.assert_allclose(model(x, r), gmm.model(dest, dst_target)(x, r), rtol=1e-7, atol=1e-7)


def test_sampling_under_another_path_solves_the_same_ode():
    """x'_r = x_{t(r)}/s(r): RK4 under the linear path with the transformed VP model ends where RK4 under VP ends."""
    with jax.enable_x64(True):
        gmm = fg.analytic.GaussianMixture.circle()
        vp, linear = fg.paths.get("vp_linear"), fg.paths.get("linear")
        noise = jax.random.normal(jax.random.key(1), (256, 2), jnp.float64)
        x_vp, _ = fg.sample(gmm.model(vp, "noise"), vp, target="noise", solver="rk4", num_steps=400,
                            grid="logsnr", noise=noise)
        r0, r1 = matching_interval(vp, linear)
        moved = schedule_transformed(gmm.model(vp, "noise"), vp, "noise", linear, "velocity")
        x_lin, _ = fg.sample(moved, linear, target="velocity", solver="rk4", num_steps=400, grid="logsnr",
                             t_start=r0, t_end=r1, noise=noise)
        scale = float(linear.alpha(r1) / vp.alpha(vp.t_max))          # x'_r1 = (α'(r1)/α(t1))·x_t1
        np.testing.assert_allclose(x_lin, scale * x_vp, atol=1e-6)
