"""The exact flow map of a mixture's probability-flow ODE and the exact average velocity derived from it: the ground
truth of the few-step methods (flowgen.methods.meanflow, flowgen.methods.shortcut)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg

pytestmark = pytest.mark.usefixtures("x64")

CIRCLE = fg.analytic.GaussianMixture.circle()
PATHS = ("linear", "trig", "vp_linear")


def points(n=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 2)) * 3.0


@pytest.mark.parametrize("name", PATHS)
def test_the_rk4_flow_map_matches_the_closed_form(name):
    """Two identical components are one Gaussian, but take the RK4 branch: it must reproduce the closed form."""
    path = fg.paths.get(name)
    twin = fg.analytic.GaussianMixture([[1.0, -2.0], [1.0, -2.0]], 0.7)
    single = fg.analytic.GaussianMixture([[1.0, -2.0]], 0.7)
    x = points()
    t0 = jnp.linspace(path.t_min, 0.6, 16)
    t1 = jnp.linspace(path.t_max, 0.2, 16)          # forwards and backwards in one batch
    np.testing.assert_allclose(twin.flow_map(path, x, t0, t1), single.flow_map(path, x, t0, t1), atol=1e-8)


def test_the_flow_map_is_a_flow():
    """Φ_{s→t}∘Φ_{r→s} = Φ_{r→t}, Φ_{t→r}∘Φ_{r→t} = id, Φ_{t→t} = id; and a mixture really needs the ODE (its map
    differs from the Gaussian with the same mean and covariance)."""
    path = fg.paths.get("linear")
    x = points()
    one = CIRCLE.flow_map(path, CIRCLE.flow_map(path, x, 0.1, 0.5), 0.5, 0.95)
    np.testing.assert_allclose(one, CIRCLE.flow_map(path, x, 0.1, 0.95), atol=1e-7)
    np.testing.assert_allclose(CIRCLE.flow_map(path, CIRCLE.flow_map(path, x, 0.0, 1.0), 1.0, 0.0), x, atol=1e-6)
    np.testing.assert_array_equal(CIRCLE.flow_map(path, x, 0.4, 0.4), x)
    gauss = fg.analytic.GaussianMixture(CIRCLE.mean()[None], np.sqrt(CIRCLE.covariance()[0, 0]))
    assert np.abs(CIRCLE.flow_map(path, x, 0.0, 1.0) - gauss.flow_map(path, x, 0.0, 1.0)).max() > 0.5


def test_the_flow_map_carries_noise_onto_the_data():
    """Φ_{0→1} pushes N(0, I) onto the mixture: its samples are as close (exact W2) to data as data are to data."""
    from flowgen.evals.sample_metrics import wasserstein2

    path = fg.paths.get("linear")
    x = CIRCLE.flow_map(path, jax.random.normal(jax.random.key(1), (800, 2)), 0.0, 1.0)
    data, other = CIRCLE.sample(jax.random.key(2), 800, jnp.float64), CIRCLE.sample(jax.random.key(3), 800,
                                                                                      jnp.float64)
    assert wasserstein2(np.asarray(x), np.asarray(data)) <= 1.3 * wasserstein2(np.asarray(other), np.asarray(data))


@pytest.mark.parametrize("name", PATHS)
def test_the_average_velocity_jumps_onto_the_flow_and_is_v_at_r_equal_t(name):
    path = fg.paths.get(name)
    z = points()
    t = jnp.full((16,), 0.3)
    r = jnp.concatenate([jnp.full((8,), 0.3), jnp.linspace(0.35, path.t_max, 8)])
    u = CIRCLE.average_velocity(path, z, t, r)
    v = CIRCLE.model(path, "velocity")(z, t)
    np.testing.assert_array_equal(u[:8], v[:8])
    np.testing.assert_allclose(z + (r - t)[:, None] * u, CIRCLE.flow_map(path, z, t, r), atol=1e-9)
    near = CIRCLE.average_velocity(path, z, t, t + 1e-5)                     # continuous at r = t
    np.testing.assert_allclose(near, v, atol=1e-3 * float(jnp.abs(v).max()))


@pytest.mark.parametrize("name", PATHS)
def test_the_meanflow_identity_in_our_time_direction(name):
    """u(z_t, t, r) = v(z_t, t) + (r − t)·(d/dt) u(z_t, t, r), the total derivative along the flow (dz/dt = v,
    dr/dt = 0): MeanFlow's identity in flowgen's time (t = 0 noise), checked on the exact mixture by jax.jvp."""
    path = fg.paths.get(name)
    z = points(8)
    t = jnp.linspace(0.05, 0.6, 8)
    r = jnp.linspace(0.9, path.t_max, 8)
    v = CIRCLE.model(path, "velocity")(z, t)
    u, du_dt = jax.jvp(lambda z, t: CIRCLE.average_velocity(path, z, t, r), (z, t), (v, jnp.ones_like(t)))
    np.testing.assert_allclose(u, v + (r - t)[:, None] * du_dt, atol=1e-6)
    # The other sign (the identity as written for the opposite time direction, naively) is far off.
    assert np.abs(u - (v - (r - t)[:, None] * du_dt)).max() > 0.1
