"""The training entry point, run for real in subprocesses: resume is exact, corruption and preemption are survived,
non-finite losses stop the run, multi-device equals single-device, bad input is refused and nothing is lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--config.model.kwargs.hidden=32", "--config.model.kwargs.depth=2", "--config.data.batch_size=64",
    "--config.train.sample_every=0", "--config.train.log_every=5",
]


def run_main(workdir, *overrides, devices=1, timeout=240, config="configs/toy2d_rf.py:small", wait=True):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "flowgen.main", f"--config={config}", f"--workdir={workdir}", *FAST, *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(workdir):
    """(step, parameters of the newest good checkpoint as numpy arrays keyed by tree path)."""
    import jax
    import ml_collections

    from flowgen.train.checkpoint import Checkpointer

    config = ml_collections.ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))
    config.mesh.fsdp = 1  # restored onto this process's device(s), whatever the training mesh was (and verified)
    from flowgen.train.run import Run

    ck = Checkpointer(Path(workdir) / "checkpoints")
    step, state, _ = Run.from_config(config).restore(ck)
    ck.close()
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def test_train_samples_metrics_and_checkpoints(tmp_path):
    res = run_main(tmp_path / "w", "--config.train.sample_every=50")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x][-1] == 50
    assert all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    assert {"grad_norm", "lr", "steps_per_sec", "examples_per_sec", "eta_sec"} <= set(lines[0])
    assert any("sample/sliced_w2" in x for x in lines)
    assert (tmp_path / "w" / "samples" / "step_0000050.png").exists()
    assert list((tmp_path / "w" / "tensorboard").iterdir())
    assert (tmp_path / "w" / "config.json").exists()


def test_kill_and_resume_is_bit_exact(tmp_path):
    steps = ["--config.train.num_steps=60", "--config.train.checkpoint_every=7"]
    ref = run_main(tmp_path / "ref", *steps)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    proc = run_main(tmp_path / "killed", *steps, wait=False)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline:
        done = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_main(tmp_path / "killed", *steps)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step" in resumed.stdout + resumed.stderr

    step_a, a = final_params(tmp_path / "ref")
    step_b, b = final_params(tmp_path / "killed")
    assert step_a == step_b == 60
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The logged losses too: steps logged again after the resume carry the same values, one row per step.
    from flowgen.train.metrics import read_metrics

    logged = [{k: r[k] for k in ("step", "loss", "grad_norm", "lr")} for r in read_metrics(tmp_path / "ref")]
    assert [{k: r[k] for k in logged[0]} for r in read_metrics(tmp_path / "killed")] == logged
    assert [r["step"] for r in logged] == list(range(5, 61, 5))


def test_sigterm_saves_and_exits_with_143_then_resumes(tmp_path):
    """SIGTERM: the checkpoint is saved and the command exits with EXIT_PREEMPTED (143), never 0 (a scheduler's
    afterok must not fire on an unfinished model); the same workdir then resumes from that checkpoint."""
    from flowgen.main import EXIT_PREEMPTED

    args = ["--config.train.num_steps=100000", "--config.train.checkpoint_every=100000"]
    proc = run_main(tmp_path / "w", *args, wait=False)
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)          # stderr is merged into stdout for Popen runs
    assert proc.returncode == EXIT_PREEMPTED == 143, out
    assert "preempted: stopped by SIGTERM at step" in out, out[-2000:]
    steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").glob("*") if p.name.isdigit()]
    assert len(steps) == 1 and 10 <= steps[0] < 100000, out
    resumed = run_main(tmp_path / "w", f"--config.train.num_steps={steps[0] + 10}",
                       "--config.train.checkpoint_every=100000")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {steps[0]}" in resumed.stdout + resumed.stderr
    assert final_params(tmp_path / "w")[0] == steps[0] + 10


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    good = run_main(tmp_path / "w", "--config.train.num_steps=20", "--config.train.checkpoint_every=10")
    assert good.returncode == 0, good.stderr
    before = sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir())
    bad = run_main(tmp_path / "w", "--config.train.num_steps=40", "--config.train.checkpoint_every=10",
                   "--config.optim.lr=1e30")
    assert bad.returncode != 0
    text = bad.stdout + bad.stderr
    assert "NonFiniteLossError" in text and "non-finite loss" in text and "at step" in text, text[-3000:]
    step, _ = final_params(tmp_path / "w")
    assert step == 20
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == before


def _corrupt_newest(workdir, how):
    ckpt = Path(workdir) / "checkpoints"
    newest = max((p for p in ckpt.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    files = sorted((f for f in newest.rglob("*") if f.is_file() and "state" in str(f)), key=lambda f: f.stat().st_size)
    target = files[-1]
    data = bytearray(target.read_bytes())
    if how == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        target.write_bytes(bytes(data))
    return int(newest.name)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    args = ["--config.train.num_steps=30", "--config.train.checkpoint_every=10"]
    first = run_main(tmp_path / "w", *args)
    assert first.returncode == 0, first.stderr
    bad_step = _corrupt_newest(tmp_path / "w", how)
    assert bad_step == 30
    again = run_main(tmp_path / "w", "--config.train.num_steps=40", "--config.train.checkpoint_every=10")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from step 20" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
    quarantined = list((tmp_path / "w" / "checkpoints" / "corrupt").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("30")
    step, _ = final_params(tmp_path / "w")
    assert step == 40


def test_eight_devices_match_one_device(tmp_path):
    """Same global batch, same steps: 8 forced CPU devices vs 1. Only the order of floating-point reductions differs;
    after 20 Adam steps parameters agree to 1e-5 (relative to their scale)."""
    args = ["--config.train.num_steps=20", "--config.train.checkpoint_every=20"]
    one = run_main(tmp_path / "one", *args, devices=1)
    eight = run_main(tmp_path / "eight", *args, devices=8)
    assert one.returncode == 0 and eight.returncode == 0, one.stderr + eight.stderr
    _, a = final_params(tmp_path / "one")
    _, b = final_params(tmp_path / "eight")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5 * float(np.abs(a[k]).max()), err_msg=k)


def saved_partition_specs(workdir, step):
    """{leaf path: (mesh shape, partition spec)} of the arrays as training saved them (orbax's ``_sharding`` record,
    keyed by the base64 of the dotted leaf path)."""
    import base64

    record = json.loads((Path(workdir) / "checkpoints" / str(step) / "state" / "_sharding").read_text())
    out = {}
    for key, value in record.items():
        sharding = json.loads(value)
        out[base64.b64decode(key).decode()] = (sharding["shape"], sharding["partition_spec"])
    return out


def test_fsdp_sharded_training_equals_unsharded(tmp_path):
    """8 devices as a (2 data × 4 fsdp) mesh vs (8 data × 1): the same global batch and steps. The MLP is 128 wide so
    its 128×128 kernel (16,384 ≥ the 2¹⁴-element threshold) and its Adam moments and EMA are split 4 ways; the
    checkpoint records that they were. Only the order of floating-point reductions differs, so after 20 Adam steps the
    parameters agree to 1e-5 relative to each leaf's scale (as 8 devices vs 1 do)."""
    args = ["--config.train.num_steps=20", "--config.train.checkpoint_every=20", "--config.model.kwargs.hidden=128"]
    dp = run_main(tmp_path / "dp", *args, devices=8)
    fsdp = run_main(tmp_path / "fsdp", *args, "--config.mesh.fsdp=4", devices=8)
    assert dp.returncode == 0 and fsdp.returncode == 0, dp.stdout[-2000:] + fsdp.stdout[-2000:] + fsdp.stderr[-2000:]

    specs = saved_partition_specs(tmp_path / "fsdp", 20)
    sharded = sorted(k for k, (mesh, spec) in specs.items() if "fsdp" in json.dumps(spec))
    assert all(specs[k][0] == [2, 4] for k in specs), specs
    big = [k for k in specs if k.endswith("hidden_0.dense.kernel")]  # params, EMA, Adam mu and nu
    assert len(big) == 4 and set(big) <= set(sharded), (big, sharded)
    assert any(k.startswith("params.") for k in sharded) and any(k.startswith("ema.") for k in sharded)
    assert any(k.startswith("opt_state.") for k in sharded), sharded
    assert not any("fsdp" in json.dumps(spec) for _, spec in saved_partition_specs(tmp_path / "dp", 20).values())

    step_a, a = final_params(tmp_path / "dp")
    step_b, b = final_params(tmp_path / "fsdp")
    assert step_a == step_b == 20 and a.keys() == b.keys()
    for k in a:
        scale = float(np.abs(a[k]).max())
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5 * scale, err_msg=k)


BAD = [
    (["--config.train.num_stepz=3"], "num_stepz"),
    (["--config.train.num_steps=abc"], "num_steps"),
    (["--config.loss.target=eps"], "unknown prediction target 'eps'"),
    (["--config.data.batch_size=12"], "not divisible by the number of devices (8)"),
    (["--config.mesh.fsdp=3"], "mesh.fsdp=3"),
    (["--config.model.num_classes=5"], "model.num_classes=5 but dataset 'circle' has 8"),
    (["--config.sample.ema=ema_0.5"], "sample.ema='ema_0.5' is not one of"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_refused(tmp_path, args, message):
    res = run_main(tmp_path / "w", *args, devices=8)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())


def test_workdir_of_another_config_is_refused_and_left_intact(tmp_path):
    first = run_main(tmp_path / "w", "--config.train.num_steps=10", "--config.train.checkpoint_every=10")
    assert first.returncode == 0, first.stderr
    snapshot = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "tensorboard" not in str(p)}
    other = run_main(tmp_path / "w", "--config.train.num_steps=10", "--config.model.kwargs.hidden=64")
    assert other.returncode != 0
    assert "different config" in other.stdout + other.stderr and "model.kwargs.hidden" in other.stdout + other.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file() and "tensorboard" not in str(p)}
    assert set(snapshot) <= set(after)
    for p, data in snapshot.items():
        if p.name != "metrics.jsonl":
            assert after[p] == data, p


def test_two_processes_match_one_process_with_the_same_devices(tmp_path, run_processes):
    """Multi-host on one machine: 2 processes × 4 CPU devices (jax.distributed on 127.0.0.1) train the same model as
    1 process × 8 devices, each process feeding its half of the global batch; parameters agree to 1e-5."""
    import portpicker

    args = ["--config.train.num_steps=20", "--config.train.checkpoint_every=20"]
    port = portpicker.pick_unused_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    codes, outs = run_processes(
        [[sys.executable, "-m", "flowgen.main", "--config=configs/toy2d_rf.py:small", f"--workdir={tmp_path / 'mh'}",
          *FAST, *args, f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"] for i in range(2)],
        env)
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outs)
    single = run_main(tmp_path / "one", *args, devices=8)
    assert single.returncode == 0, single.stderr
    step_a, a = final_params(tmp_path / "one")
    step_b, b = final_params(tmp_path / "mh")
    assert step_a == step_b == 20
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5 * float(np.abs(a[k]).max()), err_msg=k)
