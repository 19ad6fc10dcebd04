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


def _scipy_total(c):
    import scipy.optimize

    c = np.asarray(c, np.float64)
    r, j = scipy.optimize.linear_sum_assignment(c)
    return c[r, j].sum()


def _check_perm(perm, b):
    assert sorted(np.asarray(perm).tolist()) == list(range(b))


@pytest.mark.parametrize("b", [8, 13, 64, 200, 512])
def test_auction_matches_scipy_on_integer_costs(b):
    """Exactly scipy's optimal total on the rounded integer costs, on random and on OT-shaped (squared) costs."""
    k1, k2, k3 = jax.random.split(jax.random.key(b), 3)
    solve = jax.jit(couplings.auction_assignment)
    if b <= 200:                                   # uniform random integer costs (no structure)
        c = jax.random.randint(k1, (b, b), 0, couplings.cost_levels(b))
        perm = solve(c)
        _check_perm(perm, b)
        assert int(np.asarray(c)[np.arange(b), np.asarray(perm)].sum()) == _scipy_total(c)
    x = jax.random.normal(k2, (b, 2)) * 2 + 1
    ci = couplings.integer_costs(couplings.squared_cost(x, jax.random.normal(k3, (b, 2))))
    perm = solve(ci)
    _check_perm(perm, b)
    assert int(np.asarray(ci)[np.arange(b), np.asarray(perm)].sum()) == _scipy_total(ci)


@pytest.mark.parametrize("b", [16, 128])
def test_auction_near_scipy_on_float_costs(b):
    """On the float costs: within the rounding bound B·span/levels of scipy's optimum (and at float round-off here)."""
    k1, k2 = jax.random.split(jax.random.key(100 + b))
    c = couplings.squared_cost(jax.random.normal(k1, (b, 3)) * 3, jax.random.normal(k2, (b, 3)))
    perm = np.asarray(jax.jit(couplings.ASSIGNMENT_SOLVERS["auction"])(c))
    _check_perm(perm, b)
    cn = np.asarray(c, np.float64)
    best = _scipy_total(cn)
    bound = b * (cn.max() - cn.min()) / couplings.cost_levels(b)
    assert best <= cn[np.arange(b), perm].sum() <= best + bound
    np.testing.assert_allclose(cn[np.arange(b), perm].sum(), best, rtol=1e-6)


def test_auction_ties_and_degenerate_costs():
    solve = jax.jit(couplings.auction_assignment)
    for b in (1, 2, 5, 64):
        perm = solve(jnp.zeros((b, b), jnp.int32))                 # all costs equal: any permutation
        _check_perm(perm, b)
    c = jnp.asarray([[0, 0, 1], [0, 0, 1], [1, 1, 0]], jnp.int32)  # tied optima
    perm = np.asarray(solve(c))
    _check_perm(perm, 3)
    assert np.asarray(c)[np.arange(3), perm].sum() == 0
    x = jnp.repeat(jax.random.normal(jax.random.key(0), (8, 2)), 8, axis=0)      # 64 points, 8 distinct
    z = jnp.concatenate([x[::8] + 0.1, jax.random.normal(jax.random.key(1), (56, 2))])
    ci = couplings.integer_costs(couplings.squared_cost(x, z))
    perm = np.asarray(solve(ci))
    _check_perm(perm, 64)
    assert np.asarray(ci)[np.arange(64), perm].sum() == _scipy_total(ci)
    eye = couplings.integer_costs(couplings.squared_cost(x[::8], x[::8]))      # identical sets: identity
    assert np.asarray(solve(eye)).tolist() == list(range(8))


def test_auction_under_vmap():
    cs = jax.random.randint(jax.random.key(3), (3, 24, 24), 0, couplings.cost_levels(24))
    perms = np.asarray(jax.jit(jax.vmap(couplings.auction_assignment))(cs))
    for c, perm in zip(np.asarray(cs), perms, strict=True):
        _check_perm(perm, 24)
        assert c[np.arange(24), perm].sum() == _scipy_total(c)


def test_ot_coupling_solvers_agree_and_check_the_option():
    x = jax.random.normal(jax.random.key(0), (32, 2)) * 2 + 3
    key = jax.random.key(1)
    outs = [jax.jit(lambda k, x, s=s: couplings.get_coupling("ot", solver=s)(k, x, {}))(key, x)
            for s in ("scipy", "auction", "emd")]
    np.testing.assert_allclose(mean_cost(*outs[1]), mean_cost(*outs[0]), rtol=1e-6)
    np.testing.assert_allclose(mean_cost(*outs[2]), mean_cost(*outs[0]), rtol=1e-6)
    assert couplings.get_coupling("ot").solver == "emd"
    with pytest.raises(ValueError, match="solver='hungarian' is not one of: emd, scipy, auction"):
        couplings.get_coupling("ot", solver="hungarian")


@pytest.mark.parametrize("b", [1, 2, 17, 256, 1024])
def test_emd_matches_scipy(b):
    """POT's network simplex gives a permutation with scipy's optimal total, on squared 2-D costs (continuous: the
    optimum is unique, so the same permutation) and on small integer costs full of ties (the same total)."""
    rng = np.random.default_rng(b)
    x, z = rng.normal(size=(b, 2)) * 3, rng.normal(size=(b, 2))
    c = np.asarray(couplings.squared_cost(jnp.asarray(x), jnp.asarray(z)), np.float64)
    perm = np.asarray(jax.jit(couplings.emd_assignment)(jnp.asarray(c)))
    _check_perm(perm, b)
    np.testing.assert_allclose(c[np.arange(b), perm].sum(), _scipy_total(c), rtol=1e-12)
    ties = rng.integers(0, 3, size=(b, b)).astype(np.float64)
    perm = np.asarray(couplings.emd_assignment(jnp.asarray(ties)))
    _check_perm(perm, b)
    assert ties[np.arange(b), perm].sum() == _scipy_total(ties)


def test_emd_under_vmap():
    cs = jax.random.uniform(jax.random.key(3), (3, 24, 24))
    perms = np.asarray(jax.jit(jax.vmap(couplings.emd_assignment))(cs))
    for c, perm in zip(np.asarray(cs, np.float64), perms, strict=True):
        np.testing.assert_allclose(c[np.arange(24), perm].sum(), _scipy_total(c), rtol=1e-6)
