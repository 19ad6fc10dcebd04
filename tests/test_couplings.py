"""Couplings: minibatch OT is optimal (brute force), lowers the transport cost; Sinkhorn approaches it."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgen import couplings


def mean_cost(x, z):
    return float(jnp.mean(jnp.sum((x - z) ** 2, axis=-1)))


@pytest.mark.parametrize("seed", range(5))
def test_exact_ot_matches_brute_force(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (6, 2)) * 3
    ot = couplings.get_coupling("ot")
    x_out, z = jax.jit(lambda k, x: ot(k, x, {}))(k2, x)
    noise = jax.random.normal(k2, x.shape)                       # the noise the coupling drew
    best = min(mean_cost(x, noise[np.array(p)]) for p in itertools.permutations(range(6)))
    np.testing.assert_allclose(mean_cost(x_out, z), best, rtol=1e-5)
    assert sorted(map(tuple, np.asarray(z).round(6))) == sorted(map(tuple, np.asarray(noise).round(6)))


def test_ot_and_sinkhorn_lower_the_transport_cost():
    """Data N((3, 3), 4·I) vs noise N(0, I) in 2-D: the independent coupling costs E‖x − z‖² = 18 + 8 + 2 = 28, the
    optimal one W₂² = 18 + 2·(2 − 1)² = 20; a minibatch of 512 gets close to it."""
    x = jax.random.normal(jax.random.key(0), (512, 2)) * 2 + 3
    key = jax.random.key(1)
    indep = mean_cost(*couplings.get_coupling("independent")(key, x, {}))
    exact = mean_cost(*couplings.get_coupling("ot")(key, x, {}))
    sink = mean_cost(*couplings.get_coupling("sinkhorn", epsilon=0.01)(key, x, {}))
    assert abs(indep - 28) < 2.5 and abs(exact - 20) < 1.5, (indep, exact)
    assert exact <= sink < exact + 0.5 * (indep - exact), (exact, sink, indep)


def test_coupling_errors():
    with pytest.raises(ValueError, match="unknown coupling 'rot'"):
        couplings.get_coupling("rot")
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        couplings.get_coupling("sinkhorn", epsilon=0.0)
    with pytest.raises(ValueError, match="shape"):
        couplings.get_coupling("given")(None, jnp.ones((2, 2)), {"noise": jnp.ones((3, 2))})
