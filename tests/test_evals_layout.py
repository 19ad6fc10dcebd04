"""Evaluation depends only on the images: FID Inception and digits-classifier features, their statistics and a sweep
cell's metrics are the same bits on 1 device or 8, with any batch size and a ragged last batch, and in 2 processes
× 4 devices (jax.distributed on 127.0.0.1) as in 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowgen.evals import digits_fid, fid, inception, sharded

REPO = Path(__file__).resolve().parents[1]


def _env(devices):
    """Subprocess environment: ``devices`` forced CPU devices, this checkout's flowgen first on the path."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": path}


@pytest.fixture(scope="module")
def weights():
    from flowgen.evals import inception_weights

    try:
        return str(inception_weights.fetch())
    except inception_weights.WeightsUnavailable as e:
        pytest.skip(f"FID Inception weights unavailable (no network?): {str(e).splitlines()[0]}")


# ------------------------------------------------------------------------------------------------ in this process
def test_statistics_do_not_depend_on_how_the_rows_were_batched():
    """StreamingStats reduces fixed blocks of rows: any split of the same rows gives the same bits."""
    rows = np.random.default_rng(0).normal(size=(230, 5)) * 3 + 1
    results = []
    for splits in ([230], [1] * 230, [7] * 32 + [6], [100, 3, 127], [64, 64, 64, 38]):
        stats = fid.StreamingStats(block=16)
        for part in np.split(rows, np.cumsum(splits)[:-1]):
            stats.update(part)
        results.append((stats.count, stats.mean, stats.covariance))
    for count, mean, cov in results:
        assert count == 230
        np.testing.assert_array_equal(mean, results[0][1])
        np.testing.assert_array_equal(cov, results[0][2])
    np.testing.assert_allclose(results[0][1], rows.mean(0), rtol=1e-14)
    np.testing.assert_allclose(results[0][2], np.cov(rows, rowvar=False), rtol=1e-12)


def test_bad_batch_settings_are_refused_before_compiling():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    for kwargs, bad in (({"batch_size": 0}, "batch_size=0"), ({"micro_batch": 0}, "micro_batch=0"),
                        ({"micro_batch": 2.0}, "micro_batch=2.0"), ({"batch_size": True}, "batch_size=True")):
        with pytest.raises(ValueError, match=f"{bad}; choose an integer >= 1"):
            inception.features({}, images, **kwargs)            # {} is no network: it would fail in tracing
    with pytest.raises(ValueError, match="block=1; choose an integer >= 2"):
        fid.StreamingStats(block=1)
    with pytest.raises(ValueError, match="need N >= 1"):
        sharded.features(lambda p, x: x, {}, np.zeros((0, 3)), batch_size=4, micro_batch=1)


# ------------------------------------------------------------------------------------------------ 1 vs 8 devices
LAYOUT_SCRIPT = """
import json, sys
import jax, numpy as np
from flowgen.evals import digits_fid, fid, inception

out, weights, configs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
params = inception.load_params(weights)
images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
res = {"devices": np.int64(jax.device_count())}
for batch_size, micro_batch in configs:
    stats, feats = fid.StreamingStats(), []
    for batch in inception.feature_batches(params, images, batch_size=batch_size, micro_batch=micro_batch):
        stats.update(batch)
        feats.append(batch)
    tag = f"{batch_size}_{micro_batch}"
    res |= {f"feat_{tag}": np.concatenate(feats), f"mu_{tag}": stats.mean, f"sigma_{tag}": stats.covariance,
            f"count_{tag}": np.int64(stats.count)}
test = digits_fid.split_images("test")[0]
res |= {"digits_feat": digits_fid.features(digits_fid.load_classifier(), test),
        "digits_fid": digits_fid.digits_fid(test), "digits_kid": np.array(digits_fid.kid(test, blocks=5)),
        "digits_pr": np.array(digits_fid.precision_recall(test))}
np.savez(out, **res)
"""


@pytest.mark.slow
def test_fid_depends_only_on_the_images_not_on_devices_batch_or_padding(tmp_path, weights):
    """6 images: 1 device with batches of 4 (4 + 2 padded to 4), 8 devices with a global batch of 8 (6 padded to 8).
    Features, their statistics and digits-FID are bit-identical. The network runs on a fixed micro-batch on each
    device (here 1 image); without it, 8 devices × 1 image would round differently on CPU than 1 device × 4 images
    (XLA's batch-1 convolution: up to 3.6e-6 on features of size ~4, measured), and a padding row kept, or a
    reduction that follows the batches, would change the statistics."""
    runs = {1: [[4, 1]], 8: [[8, 1]]}
    procs = {d: subprocess.Popen([sys.executable, "-c", LAYOUT_SCRIPT, str(tmp_path / f"{d}.npz"), weights,
                                  json.dumps(c)], cwd=REPO, env=_env(d), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for d, c in runs.items()}
    for p in procs.values():
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out[-3000:]
    one, eight = (np.load(tmp_path / f"{d}.npz") for d in runs)
    assert (int(one["devices"]), int(eight["devices"])) == (1, 8)
    assert one["feat_4_1"].shape == eight["feat_8_1"].shape == (6, 2048)
    assert int(one["count_4_1"]) == int(eight["count_8_1"]) == 6
    for key in ("feat", "mu", "sigma"):
        np.testing.assert_array_equal(one[f"{key}_4_1"], eight[f"{key}_8_1"], err_msg=key)
    # Digits-FID: 297 test digits in steps of 1024 (1 device: one step of 384 rows, 87 padded; 8 devices: 1024, 727).
    for key in ("digits_feat", "digits_fid", "digits_kid", "digits_pr"):
        np.testing.assert_array_equal(one[key], eight[key], err_msg=key)
    assert float(one["digits_fid"]) == digits_fid.floor()                  # and this process's value


# ------------------------------------------------------------------------------------------------ 2 processes
PROCESS_SCRIPT = """
import json, sys
import jax, numpy as np
out, weights, workdir = sys.argv[1:4]
port, num_processes, process_id = map(int, sys.argv[4:7])
if num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
import ml_collections
from flowgen.evals import digits_fid, fid, inception
from flowgen.sweep import runner

images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
stats = fid.inception_stats(images, inception.load_params(weights), batch_size=8, micro_batch=1)
test = digits_fid.split_images("test")[0]
c = ml_collections.ConfigDict()
c.models = {"lin": {"analytic": "circle", "path": "linear", "target": "velocity"}}
c.solvers = ("heun", "ddim:eta=1.0")
c.nfe = (6,)
c.seeds = (0,)
c.metrics = ("sliced_w2", "ode_error")
c.num_samples = 60
rows = sorted(runner.run(c, workdir, progress=False)["rows"], key=lambda r: r["id"])
np.savez(out, processes=jax.process_count(), devices=jax.device_count(), mu=stats.mu, sigma=stats.sigma,
         count=stats.count, digits_feat=digits_fid.features(digits_fid.load_classifier(), test),
         digits_fid=digits_fid.digits_fid(test), digits_kid=digits_fid.kid(test, blocks=5),
         digits_pr=digits_fid.precision_recall(test),
         rows=json.dumps([{k: r[k] for k in ("id", "nfe", "metrics", "preview")} for r in rows]))
"""


@pytest.mark.slow
def test_two_processes_evaluate_exactly_as_one(tmp_path, weights, run_processes):
    """2 processes × 4 CPU devices (jax.distributed on 127.0.0.1) vs 1 process × 8: Inception statistics of 6
    images, digits features, digits-FID, KID, precision/recall, and a sweep's cells (an analytic model, Heun and
    stochastic DDIM, 60 samples padded to 64: noise drawn sharded, samples gathered, sliced W2 and the dopri5
    ode_error scored on every process, cells written by process 0) are bit-identical on both processes and equal
    the single process's."""
    import portpicker

    def command(name, processes, index, port=0):
        return [sys.executable, "-c", PROCESS_SCRIPT, str(tmp_path / f"{name}{index}.npz"), weights,
                str(tmp_path / name), str(port), str(processes), str(index)]

    single = subprocess.Popen(command("one", 1, 0), cwd=REPO, env=_env(8), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    port = portpicker.pick_unused_port()
    codes, outs = run_processes([command("two", 2, i, port) for i in range(2)], _env(4))
    single_out = single.communicate(timeout=300)[0]
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert single.returncode == 0, single_out[-3000:]
    one, *two = (np.load(tmp_path / f) for f in ("one0.npz", "two0.npz", "two1.npz"))
    assert [(int(r["processes"]), int(r["devices"])) for r in (one, *two)] == [(1, 8), (2, 8), (2, 8)]
    for other in two:
        for key in ("mu", "sigma", "count", "digits_feat", "digits_fid", "digits_kid", "digits_pr"):
            np.testing.assert_array_equal(other[key], one[key], err_msg=key)
        rows, want = json.loads(str(other["rows"])), json.loads(str(one["rows"]))
        assert len(rows) == len(want) == 2 and rows == want         # ids, NFE, every metric and the samples
    assert int(one["count"]) == 6 and np.isfinite([r["metrics"]["ode_error"] for r in want if "heun" in r["id"]]).all()
    cells = {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "cells").glob("*.json"))}
    assert len(cells) == 2 and all(c["devices"] == 8 for c in cells.values())    # one writer: whole files
    assert (tmp_path / "two" / "results.md").exists()
