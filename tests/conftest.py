"""Shared fixtures. Numerical property tests run in float64 (``x64`` fixture); everything else in float32."""

import gc

import jax
import pytest


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """After each test module, drop JAX's caches of traced and compiled programs: the whole suite runs in one
    process, and over ~1200 tests the executables of finished modules would otherwise stay in memory (a fresh-clone
    run crashed inside XLA's compiler at 80% of the suite without this)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def fast_compiles():
    """XLA's optimisation passes off while a test module runs (in it: ``pytestmark =
    pytest.mark.usefixtures("fast_compiles")``): the same computation, quicker compiles. A JAX without the flag
    compiles as usual."""
    flag = "jax_disable_most_optimizations"
    if flag not in jax.config.values:
        yield
        return
    previous = jax.config.values[flag]
    jax.config.update(flag, True)
    yield
    jax.config.update(flag, previous)


@pytest.fixture
def jaxpr_equations():
    """``walk(jaxpr)``: every equation of a jaxpr and, recursively, of the jaxprs in its equations' parameters
    (scan and while bodies, cond branches, pjit and custom_jvp calls, shard_map)."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        yield from walk(inner)

    return walk


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def run_processes():
    """``run(commands, env, timeout=240)``: start every command at once (e.g. the processes of one multi-host job on
    127.0.0.1) from the repository root and return ``(return codes, combined stdout+stderr)``; if one outlives
    ``timeout``, all are killed and the timeout is raised."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def run(commands, env, timeout=240):
        procs = [subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for cmd in commands]
        outs = []
        try:
            outs = [p.communicate(timeout=timeout)[0] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        return [p.returncode for p in procs], outs

    return run
