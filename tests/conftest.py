"""Shared fixtures. Numerical property tests run in float64 (``x64`` fixture); everything else in float32."""

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
