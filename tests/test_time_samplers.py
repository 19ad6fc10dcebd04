"""Training-time samplers against their densities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import flowgen as fg
from flowgen.paths.time_samplers import get_time_sampler

pytestmark = pytest.mark.usefixtures("x64")

CASES = [
    ("uniform", "linear", {}),
    ("uniform", "vp_linear", {}),
    ("logit_normal", "linear", {}),
    ("logit_normal", "linear", dict(m=0.5, s=0.7)),
    ("logit_normal", "vp_linear", {}),
    ("edm", "linear", {}),
    ("edm", "vp_linear", {}),
    ("edm", "ve", dict(p_mean=0.0, p_std=2.0)),
]


@pytest.mark.parametrize("name,path_name,options", CASES)
def test_samples_follow_the_density(name, path_name, options):
    path = fg.paths.get(path_name)
    sampler = get_time_sampler(name, path, **options)
    grid = np.linspace(sampler.t_min, sampler.t_max, 20_001)[1:-1]
    density = np.exp(np.asarray(sampler.log_prob(jnp.asarray(grid))))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    np.testing.assert_allclose(cdf[-1], 1.0, atol=2e-3)           # the density integrates to one
    samples = np.asarray(sampler.sample(jax.random.key(0), (50_000,), jnp.float64))
    assert samples.min() >= sampler.t_min and samples.max() <= sampler.t_max
    ks = scipy.stats.kstest(samples, lambda s: np.interp(s, grid, cdf / cdf[-1]))
    assert ks.pvalue > 1e-3, ks


def test_edm_sampler_is_lognormal_in_sigma_over_alpha():
    path = fg.paths.get("linear")
    t = get_time_sampler("edm", path).sample(jax.random.key(1), (100_000,), jnp.float64)
    log_sigma = -np.asarray(path.log_snr(t))
    np.testing.assert_allclose([log_sigma.mean(), log_sigma.std()], [-1.2, 1.2], atol=0.02)


def test_bad_time_sampler_options():
    path = fg.paths.get("linear")
    with pytest.raises(ValueError, match="s must be > 0"):
        get_time_sampler("logit_normal", path, s=0.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        get_time_sampler("uniform", path, t_min=0.5, t_max=0.5)
