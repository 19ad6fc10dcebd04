"""On a machine without libtpu, flowgen's logs do not carry JAX's "Unable to initialize backend 'tpu'" INFO line;
a run that asks for a TPU still fails loudly, with JAX's message.

Each case runs a fresh interpreter with JAX_PLATFORMS removed from its environment (the test suite's other
subprocesses set it to cpu, which hides the line by skipping the TPU backend altogether).
"""

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINE = "Unable to initialize backend 'tpu'"

no_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is not None or "TPU_LIBRARY_PATH" in os.environ,
    reason="libtpu is installed here: JAX's TPU backend does not fail for want of it")


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


# What flowgen.main does before anything else: log INFO records to stdout; then import flowgen and use JAX.
INFO_LOGGING_RUN = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s', stream=sys.stdout)\n"
    "import jax\n"
    "import flowgen\n"
    "print('devices', jax.devices())\n"
)


@no_libtpu
def test_importing_flowgen_keeps_the_libtpu_line_out_of_info_logs(tmp_path):
    res = subprocess.run([sys.executable, "-c", INFO_LOGGING_RUN], cwd=tmp_path, env=environment(),
                         capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "devices [CpuDevice" in res.stdout, out  # the backends were initialised, on the CPU
    assert LINE not in out and "libtpu" not in out, out


@no_libtpu
def test_a_requested_tpu_still_fails_loudly(tmp_path):
    res = subprocess.run([sys.executable, "-c", INFO_LOGGING_RUN], cwd=tmp_path,
                         env=environment(JAX_PLATFORMS="tpu"), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0, res.stdout + res.stderr
    assert LINE in res.stderr and "libtpu" in res.stderr, res.stderr


@no_libtpu
@pytest.mark.slow
def test_a_training_command_on_the_cpu_prints_no_libtpu_line(tmp_path):
    cmd = [sys.executable, "-m", "flowgen.main", "--config=configs/toy2d_rf.py:small", f"--workdir={tmp_path / 'w'}",
           "--config.train.num_steps=2", "--config.train.sample_every=0", "--config.model.kwargs.hidden=32"]
    res = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "finished at step 2/2" in out, out
    assert LINE not in out and "libtpu" not in out, out


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("jax._src.xla_bridge", level, __file__, 0, message, None, None)


MISSING = ("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot open shared "
           "object file: No such file or directory")
KEPT = [
    record(MISSING, logging.WARNING),                                             # not the INFO record
    record(MISSING.replace("'tpu'", "'cuda'")),                                   # another backend
    record("Unable to initialize backend 'tpu': INTERNAL: Failed to open /opt/libtpu/libtpu.so: libstdc++.so.6: "
           "cannot open shared object file: No such file or directory"),         # libtpu exists, fails to load
    record("Unable to initialize backend 'tpu': ABORTED: The TPU is already in use by process with pid 12."),
    record("A Google TPU may be present on this machine, but either a TPU-enabled jaxlib or libtpu is not "
           "installed. Falling back to cpu.", logging.WARNING),
]


def test_the_filter_drops_only_the_missing_libtpu_record():
    from flowgen._platform import MissingLibtpuFilter

    keep = MissingLibtpuFilter()
    assert not keep.filter(record(MISSING))
    for r in KEPT:
        assert keep.filter(r), r.getMessage()


def test_the_filter_sits_once_on_jaxs_backend_logger():
    import flowgen  # noqa: F401 - importing the package installs it
    from flowgen import _platform

    _platform.quiet_missing_libtpu()
    filters = [f for f in logging.getLogger("jax._src.xla_bridge").filters
               if isinstance(f, _platform.MissingLibtpuFilter)]
    assert len(filters) == 1
