"""Shared fixtures. Numerical property tests run in float64 (``x64`` fixture); everything else in float32."""

import jax
import pytest


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
