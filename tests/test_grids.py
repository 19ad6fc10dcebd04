"""Time grids: spacing laws, exact ends, EDM's σ = 0 end, validation."""

import math

import numpy as np
import pytest

import flowgen as fg
from flowgen.paths.schedules import host_eval
from flowgen.solvers import grids

NAMED = [n for n in fg.paths.PATHS if n != "custom"]


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("kind", grids.GRIDS)
def test_grids_are_increasing_and_span_the_interval(name, kind):
    path = fg.paths.get(name)
    ts = grids.make_grid(kind, path, 10)
    assert np.all(np.diff(ts) > 0)
    assert ts[-1] == path.t_max
    if math.isfinite(float(path.log_snr(path.t_min))) or kind == "uniform":
        assert ts[0] == path.t_min
    assert len(ts) == 11


def test_logsnr_grid_is_uniform_in_log_snr():
    path = fg.paths.get("vp_linear")
    ts = grids.make_grid("logsnr", path, 8)
    lam = host_eval(path.log_snr, ts)
    np.testing.assert_allclose(np.diff(lam), np.full(8, (lam[-1] - lam[0]) / 8), rtol=1e-9)


def test_edm_grid_follows_karras_rho_schedule():
    path = fg.paths.get("ve", sigma_min=0.002, sigma_max=80.0)
    ts = grids.make_grid("edm", path, 18)
    sig = host_eval(path.sigma_edm, ts)
    i = np.arange(19)
    expected = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig, expected, rtol=1e-9)


def test_edm_grid_into_sigma_zero_appends_the_exact_end():
    """On the linear path σ(1) = 0: N − 1 steps ρ-spaced from σ/α = 80 to 0.002, then the step to t = 1."""
    path = fg.paths.get("linear")
    ts = grids.make_grid("edm", path, 10)
    assert len(ts) == 11 and ts[-1] == 1.0
    sig = host_eval(path.sigma_edm, ts[:-1])
    np.testing.assert_allclose([sig[0], sig[-1]], [80.0, 0.002], rtol=1e-6)
    one = grids.make_grid("edm", path, 1)
    assert len(one) == 2 and one[-1] == 1.0


def test_grid_validation():
    path = fg.paths.get("linear")
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        grids.make_grid("uniform", path, 0)
    with pytest.raises(ValueError, match="t_start < t_end"):
        grids.make_grid("uniform", path, 4, t_start=0.7, t_end=0.2)
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        grids.make_grid("karras", path, 4)
    with pytest.raises(ValueError, match="non-finite"):
        grids.check_grid([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="rho must be positive"):
        grids.make_grid("edm", path, 4, rho=0.0)
