"""flowgen.train.checkpoint: exact round trips (sync, async, sharded over 8 devices), keep-N, and every failure path
(truncated files, silently flipped bytes, altered JSON, interrupted saves, re-saving a step) falls back to the newest
good step without deleting anything."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flowgen.train import checkpoint as checkpoint_lib
from flowgen.train.checkpoint import (
    CORRUPT_DIR,
    STATE,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointRestoreError,
    state_checksum,
)

# When one array read fails, orbax abandons the reads of the other arrays as coroutines that raise on garbage
# collection ("Exception ignored in: <coroutine _read_array_index_and_device_put>"), in whichever test runs then.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
REPO = Path(__file__).resolve().parents[1]
LOGGER = "flowgen.train.checkpoint"
METADATA = {
    "config": {"lr": 1e-3, "name": "toy", "layers": [1, 2, [3, {"x": None, "y": False}]], "big": 2**62},
    "data": {"next_index": 12345678901234},
    "floats": [math.pi, 5e-324, -0.0, 1.7976931348623157e308, 0.1],
    "text": "αβγ ✓ \"quoted\"\n",
}


def make_state(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(64, 48)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)},
        "step": jnp.int32(seed),
        "opt": {"mu": jnp.asarray(rng.normal(size=(64, 48)), jnp.float32), "count": np.int32(seed), "scale": 0.5},
    }


def abstract_of(state):
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), jax.eval_shape(lambda: state))


def assert_state_equal(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w, dtype=jax.dtypes.canonicalize_dtype(np.asarray(w).dtype))
        assert g.dtype == w.dtype and g.shape == w.shape, jax.tree_util.keystr(path)
        assert g.tobytes() == w.tobytes(), jax.tree_util.keystr(path)  # bit-exact


def assert_metadata_exact(got):
    assert got == METADATA
    assert json.dumps(got) == json.dumps(METADATA)  # also the sign of -0.0 and key order
    assert type(got["config"]["big"]) is int and math.copysign(1.0, got["floats"][2]) == -1.0


def save_steps(directory, steps, keep=3, async_save=False):
    with Checkpointer(directory, keep=keep, async_save=async_save) as ck:
        for s in steps:
            ck.save(s, make_state(s), METADATA)


def largest_state_file(step_dir: Path) -> Path:
    files = [f for f in (step_dir / STATE).rglob("*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


def raw_orbax_restore(directory, step, abstract):
    """What orbax alone does with the step (no checksum): the restored state, or the exception it raised."""
    mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True), item_names=(STATE,))
    try:
        return mgr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))[STATE]
    except Exception as e:  # noqa: BLE001
        return e
    finally:
        mgr.close()


def raw_orbax_restore_in_fresh_process(directory, step) -> dict:
    """``raw_orbax_restore`` of ``make_state(step)``'s structure in a new Python process — no TensorStore cache of
    this one can serve the bytes — as {leaf path: array} of its floating-point leaves."""
    out = Path(directory).parent / f"raw-{step}.npz"
    code = textwrap.dedent(f"""
        import sys
        import jax, numpy as np
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        from test_train_checkpoint import abstract_of, make_state, raw_orbax_restore
        raw = raw_orbax_restore({str(directory)!r}, {step}, abstract_of(make_state({step})))
        if isinstance(raw, Exception):
            raise raw
        leaves = {{jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(raw)
                   if not jax.dtypes.issubdtype(getattr(a, "dtype", np.float64), jax.dtypes.prng_key)}}
        np.savez({str(out)!r}, **{{k: v for k, v in leaves.items() if v.dtype.kind == "f"}})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def tree_snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_round_trip_is_bit_exact(tmp_path, async_save):
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=async_save)
    assert ck.latest_step() is None and ck.restore(abstract_of(make_state(0))) is None
    ck.save(1, make_state(1), METADATA)
    state2 = make_state(2)
    ck.save(2, state2, METADATA)
    for x in jax.tree.leaves(state2):  # the caller may donate/delete the arrays as soon as save returns
        if isinstance(x, jax.Array):
            x.delete()
    step, got, meta = ck.restore(abstract_of(make_state(2)))  # restore waits for the in-flight async save
    assert step == 2 and ck.latest_step() == 2
    assert_state_equal(got, make_state(2))
    assert_metadata_exact(meta)
    assert all(x.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]) for x in jax.tree.leaves(got))
    step, got, meta = ck.restore(abstract_of(make_state(1)), step=1)
    assert step == 1
    assert_state_equal(got, make_state(1))
    ck.close()
    # A fresh Checkpointer (a resumed process) sees the same.
    with Checkpointer(tmp_path / "ck") as again:
        step, got, meta = again.restore(abstract_of(make_state(2)))
        assert step == 2
        assert_state_equal(got, make_state(2))
        assert_metadata_exact(meta)
        with pytest.raises(FileNotFoundError, match="no checkpoint step 7"):
            again.restore(abstract_of(make_state(2)), step=7)


def test_keep_two_keeps_the_last_two_steps(tmp_path):
    save_steps(tmp_path, [10, 20, 30, 40], keep=2, async_save=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["30", "40"]
    with Checkpointer(tmp_path, keep=2) as ck:
        assert ck.latest_step() == 40
        step, got, _ = ck.restore(abstract_of(make_state(40)))
        assert step == 40
        assert_state_equal(got, make_state(40))


SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from flowgen.train.checkpoint import Checkpointer

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    w = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    state = {"w": jax.device_put(w, rows), "b": jax.device_put(jnp.arange(6, dtype=jnp.bfloat16), rep),
             "step": jax.device_put(jnp.int32(5), rep)}
    with Checkpointer(sys.argv[1], async_save=True) as ck:
        ck.save(5, state, {"mesh": [8]})
    with Checkpointer(sys.argv[1]) as ck:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        step, got, meta = ck.restore(abstract)
        assert step == 5 and meta == {"mesh": [8]}, (step, meta)
        for k in state:
            assert got[k].sharding == state[k].sharding, (k, got[k].sharding)
            assert np.array_equal(np.asarray(got[k]), np.asarray(state[k])), k
        shards = sorted(got["w"].addressable_shards, key=lambda s: s.index[0].start)
        assert [s.data.shape for s in shards] == [(8, 6)] * 8
        assert all(np.array_equal(np.asarray(s.data), w[8 * i:8 * i + 8]) for i, s in enumerate(shards))
        # The checksum is over global values, so restoring onto another layout verifies too.
        mesh2 = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
        cols = NamedSharding(mesh2, P("b", "a"))
        abstract2 = dict(abstract, w=jax.ShapeDtypeStruct((64, 6), jnp.float32, sharding=cols))
        step, got2, _ = ck.restore(abstract2)
        assert step == 5 and got2["w"].sharding == cols and np.array_equal(np.asarray(got2["w"]), w)
    print("SHARDED-OK")
""")


def test_sharded_state_restores_onto_its_sharding(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "ck")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "SHARDED-OK" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert not (tmp_path / "ck" / CORRUPT_DIR).exists()


def _quarantined(directory: Path) -> list[Path]:
    return sorted((directory / CORRUPT_DIR).iterdir()) if (directory / CORRUPT_DIR).exists() else []


def test_truncated_file_is_quarantined_and_the_previous_step_restored(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    target = largest_state_file(tmp_path / "2")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    rel = target.relative_to(tmp_path / "2")
    # orbax alone: restore raises (a bare Exception from TensorStore's chunk read).
    assert isinstance(raw_orbax_restore(tmp_path, 2, abstract_of(make_state(2))), Exception)

    with caplog.at_level(logging.WARNING, logger=LOGGER), Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 2  # not validated: only restore finds out
        step, got, meta = ck.restore(abstract_of(make_state(2)))
        assert step == 1 and ck.latest_step() == 1
        assert_state_equal(got, make_state(1))
        assert_metadata_exact(meta)
        # The quarantined step may be saved again (it no longer exists), and is then the newest good one.
        ck.save(2, make_state(2), METADATA)
        assert ck.restore(abstract_of(make_state(2)))[0] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1 and "step 2" in warnings[0] and "restore raised" in warnings[0], warnings
    (moved,) = _quarantined(tmp_path)
    assert moved.name.startswith("2-") and "2-" in warnings[0] and str(moved) in warnings[0]
    assert (moved / rel).read_bytes() == data[: len(data) // 2]  # moved as it was, not deleted or repaired
    assert "restore raised" in (moved / "QUARANTINED.txt").read_text()


def test_flipped_bytes_restore_silently_but_the_checksum_catches_them(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    target = largest_state_file(tmp_path / "2")
    data = bytearray(target.read_bytes())
    # The largest file is zstd-compressed OCDBT data; random float32 weights do not compress, so zstd stores them
    # as raw literals and bytes flipped in the middle of the file decode fine, to different numbers.
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    # Read back in a fresh process: within this one, a cache of the just-written bytes could serve the restore.
    raw = raw_orbax_restore_in_fresh_process(tmp_path, 2)
    expected = {jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(make_state(2))
                if not jax.dtypes.issubdtype(getattr(a, "dtype", np.float64), jax.dtypes.prng_key)
                and np.asarray(a).dtype.kind == "f"}
    assert sorted(raw) == sorted(expected)
    differs = [k for k in expected if not np.array_equal(raw[k], expected[k])]
    assert len(differs) == 1, differs  # silently wrong values in exactly one leaf

    with caplog.at_level(logging.WARNING, logger=LOGGER), Checkpointer(tmp_path) as ck:
        step, got, meta = ck.restore(abstract_of(make_state(2)))
    assert step == 1
    assert_state_equal(got, make_state(1))
    assert_metadata_exact(meta)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert "step 2" in warning and "checksum mismatch in 1 of 6 leaves" in warning and differs[0] in warning
    (moved,) = _quarantined(tmp_path)
    assert moved.name.startswith("2-") and (moved / target.relative_to(tmp_path / "2")).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", CORRUPT_DIR]


def test_altered_json_metadata_is_caught(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    meta_file = tmp_path / "2" / "metadata" / "metadata"
    text = meta_file.read_text()
    assert "12345678901234" in text
    meta_file.write_text(text.replace("12345678901234", "12345678901235"))  # still valid JSON, wrong data state
    with caplog.at_level(logging.WARNING, logger=LOGGER), Checkpointer(tmp_path) as ck:
        step, _, meta = ck.restore(abstract_of(make_state(2)))
    assert step == 1 and meta["data"]["next_index"] == 12345678901234
    assert any("JSON altered" in r.getMessage() for r in caplog.records)
    assert [p.name[:2] for p in _quarantined(tmp_path)] == ["2-"]


def test_all_corrupt_returns_none_and_keeps_everything(tmp_path):
    save_steps(tmp_path, [1, 2])
    for s in ("1", "2"):
        f = largest_state_file(tmp_path / s)
        f.write_bytes(f.read_bytes()[:10])
    before = tree_snapshot(tmp_path)
    with Checkpointer(tmp_path) as ck:
        assert ck.restore(abstract_of(make_state(2))) is None
        assert ck.latest_step() is None
    moved = _quarantined(tmp_path)
    assert sorted(p.name.split("-")[0] for p in moved) == ["1", "2"]
    after = {re.sub(r"^corrupt/(\d+)-[^/]*", r"\1", k): v for k, v in tree_snapshot(tmp_path).items()
             if not k.endswith("QUARANTINED.txt")}
    assert after == before  # every file still there, byte for byte, just moved


def test_interrupted_save_is_ignored(tmp_path):
    """A real interrupted save: the process dies inside orbax's finalize (after writing everything, before the
    rename that commits the step), leaving ``2.orbax-checkpoint-tmp``."""
    script = textwrap.dedent("""
        import os, sys
        from orbax.checkpoint._src.path import atomicity
        from flowgen.train.checkpoint import Checkpointer
        sys.path.insert(0, sys.argv[2])
        from test_train_checkpoint import METADATA, make_state

        ck = Checkpointer(sys.argv[1], async_save=True)
        ck.save(1, make_state(1), METADATA)
        ck.wait()
        async def die(self):
            os._exit(17)
        atomicity.AtomicRenameTemporaryPath.finalize = die
        ck.save(2, make_state(2), METADATA)
        ck.wait()
        print("NOT KILLED")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(REPO / "tests")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 17, res.stdout[-2000:] + res.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["1", "2.orbax-checkpoint-tmp"], names
    # orbax wrote the arrays (into per-item tmp dirs) and died finalizing the first item.
    assert any((tmp_path / "2.orbax-checkpoint-tmp" / f"{STATE}.orbax-checkpoint-tmp" / "ocdbt.process_0").iterdir())
    snapshot = tree_snapshot(tmp_path)
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 1
        step, got, meta = ck.restore(abstract_of(make_state(2)))
        assert step == 1
        assert_state_equal(got, make_state(1))
        assert tree_snapshot(tmp_path) == snapshot  # restore neither moved nor deleted the partial save
        # Saving the step again is allowed; orbax replaces its own stale tmp directory of that step.
        ck.save(2, make_state(2), METADATA)
        assert ck.restore(abstract_of(make_state(2)))[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_existing_or_older_step_is_never_overwritten(tmp_path):
    ck = Checkpointer(tmp_path, async_save=True)
    ck.save(5, make_state(5), METADATA)
    with pytest.raises(FileExistsError, match="step 5 already exists"):  # also while the first save is in flight
        ck.save(5, make_state(6), METADATA)
    ck.wait()
    snapshot = tree_snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="step 5 already exists"):
        ck.save(5, make_state(6), METADATA)
    with pytest.raises(ValueError, match="newer step 5"):
        ck.save(4, make_state(4), METADATA)
    ck.wait()
    assert tree_snapshot(tmp_path) == snapshot
    step, got, _ = ck.restore(abstract_of(make_state(5)))
    assert step == 5
    assert_state_equal(got, make_state(5))
    ck.close()


@pytest.mark.parametrize("bad", [{"t": (1, 2)}, {"x": np.float32(1.5)}, {1: "a"}, {"a": [{"b": np.int64(3)}]},
                                 {"s": {1, 2}}])
def test_metadata_that_would_not_round_trip_is_refused(tmp_path, bad):
    with Checkpointer(tmp_path, async_save=False) as ck:
        with pytest.raises(TypeError, match="metadata"):
            ck.save(1, make_state(1), bad)
        assert ck.latest_step() is None


def test_restoring_a_different_tree_raises_and_moves_nothing(tmp_path):
    save_steps(tmp_path, [1, 2])
    snapshot = tree_snapshot(tmp_path)
    other = make_state(2)
    other["params"]["w"] = jnp.zeros((64, 47), jnp.float32)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointMismatchError, match=r"\['params'\]\['w'\].*\(64, 48\).*\(64, 47\)"):
            ck.restore(abstract_of(other))
    assert tree_snapshot(tmp_path) == snapshot and not (tmp_path / CORRUPT_DIR).exists()


def test_relative_directory_works(tmp_path, monkeypatch):
    """orbax refuses relative paths ("Checkpoint path should be absolute"); that once made every good step look
    corrupt and get quarantined."""
    monkeypatch.chdir(tmp_path)
    save_steps("ck", [1, 2])
    with Checkpointer("ck") as ck:
        assert ck.directory == tmp_path / "ck"
        step, got, _ = ck.restore(abstract_of(make_state(2)))
    assert step == 2
    assert_state_equal(got, make_state(2))
    assert not (tmp_path / "ck" / CORRUPT_DIR).exists()


@pytest.mark.parametrize("error", [ValueError("Checkpoint path should be absolute. Got ck"),
                                   PermissionError(13, "Permission denied"), MemoryError("host OOM")],
                         ids=["ValueError", "PermissionError", "MemoryError"])
def test_a_failure_that_is_not_damage_raises_and_moves_nothing(tmp_path, error):
    save_steps(tmp_path, [1, 2])
    before = tree_snapshot(tmp_path)
    with Checkpointer(tmp_path) as ck:
        def failing_restore(*args, **kwargs):
            raise error

        ck._manager.restore = failing_restore
        with pytest.raises(CheckpointRestoreError, match=f"step 2 of {tmp_path}.*{type(error).__name__}") as info:
            ck.restore(abstract_of(make_state(2)))
    assert "nothing was moved" in str(info.value) and info.value.__cause__ is error
    assert tree_snapshot(tmp_path) == before and not (tmp_path / CORRUPT_DIR).exists()


def test_missing_item_folder_is_damage(tmp_path):
    save_steps(tmp_path, [1, 2])
    shutil.rmtree(tmp_path / "2" / STATE)
    with Checkpointer(tmp_path) as ck:
        assert ck.restore(abstract_of(make_state(2)))[0] == 1
        assert [s for s, _ in ck.quarantined()] == [2]


def test_digest_sees_every_changed_word_and_ignores_layout():
    """The digest is a sum over positions: it must change when any one word changes (always, as fmix32 is a bijection),
    when two elements swap, and for -0.0 vs 0.0; and not depend on how the array is split into shards."""
    rng = np.random.default_rng(0)
    base = {"w": rng.normal(size=(37, 5)).astype(np.float32), "b": jnp.asarray(rng.normal(size=(11,)), jnp.bfloat16),
            "n": np.arange(6, dtype=np.int32), "z": np.zeros((3,), np.float32)}
    ref = state_checksum(base)
    assert ref == state_checksum({k: jnp.asarray(v) for k, v in base.items()})  # host or device values alike
    variants = []
    for i in range(0, 37 * 5, 7):
        w = base["w"].copy().reshape(-1)
        w.view(np.uint32)[i] ^= np.uint32(1 << (i % 32))  # one bit of one word
        variants.append(dict(base, w=w.reshape(37, 5)))
    swapped = base["n"].copy()
    swapped[[1, 4]] = swapped[[4, 1]]
    variants += [dict(base, n=swapped), dict(base, z=np.array([0.0, -0.0, 0.0], np.float32))]
    for v in variants:
        got = state_checksum(v)
        assert got["digest"] != ref["digest"]
        assert sum(a != b for a, b in zip(got["leaves"], ref["leaves"], strict=True)) == 1


def test_digest_is_pinned_and_compiles_once_per_leaf_kind():
    """The digest of a fixed state is a constant (checkpoints written by earlier versions must keep verifying), and
    ``compile_checksums`` compiles everything ``state_checksum`` needs ahead of it: one program per leaf shape,
    dtype and sharding, shared by the leaves alike (a train state holds four copies of its network)."""
    from flowgen.train import checkpoint

    state = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7, "b": jnp.arange(5, dtype=jnp.bfloat16),
             "n": np.int64(7), "s": jnp.int32(2), "u": jnp.arange(6, dtype=jnp.uint8).reshape(1, 2, 3)}
    assert state_checksum(state)["digest"] == "834aa520bdc51632116a15c5d864b9ff40bedb610546f04c9544cf4d75032200"
    twins = {"params": {"a": jnp.ones((7, 3)), "b": jnp.zeros((7, 3))}, "ema": {"a": jnp.ones((7, 3)) * 2}}
    checkpoint.compile_checksums(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                              twins), background=False)
    compiled = dict(checkpoint._PROGRAMS)
    state_checksum(twins)
    assert checkpoint._PROGRAMS == compiled                 # nothing compiled at save time
    assert sum(k[0] == (7, 3) for k in compiled) == 1       # one program for the three (7, 3) float32 leaves
    thread = checkpoint.compile_checksums({"c": jax.ShapeDtypeStruct((2, 9), jnp.float32,
                                                                     sharding=twins["ema"]["a"].sharding)})
    thread.join()
    assert any(k[0] == (2, 9) for k in checkpoint._PROGRAMS)


def test_records_of_the_earlier_sha256_format_still_verify(tmp_path, monkeypatch):
    """Checkpoints written before the device-side digest (record format 1) restore and verify, and a flipped value
    in them is still caught."""
    def format_1(state):  # what save recorded then
        c = checkpoint_lib._host_sha256_checksum(state)
        return {"sha256": c["digest"], "leaves": c["leaves"]}

    monkeypatch.setattr(checkpoint_lib, "_FORMAT", 1)
    monkeypatch.setattr(checkpoint_lib, "state_checksum", format_1)
    save_steps(tmp_path, [1, 2])
    monkeypatch.undo()
    assert json.loads((tmp_path / "2" / "metadata" / "metadata").read_text())["format"] == 1
    with Checkpointer(tmp_path) as ck:
        step, got, _ = ck.restore(abstract_of(make_state(2)))
        assert step == 2
        assert_state_equal(got, make_state(2))
        target = largest_state_file(tmp_path / "2")
        data = bytearray(target.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        target.write_bytes(bytes(data))
        assert ck.restore(abstract_of(make_state(2)))[0] == 1


MULTIHOST_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", 2, int(sys.argv[3]))
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from flowgen.train import checkpoint as checkpoint_lib
    from flowgen.train.checkpoint import Checkpointer

    gathered = []
    allgather = multihost_utils.process_allgather
    def guarded(x, *args, **kwargs):  # a scalar decision may be shared; an array of the state must not be gathered
        gathered.append(int(np.size(x)))
        assert np.size(x) <= 1, f"gathered an array of {np.size(x)} elements"
        return allgather(x, *args, **kwargs)
    multihost_utils.process_allgather = guarded

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    rows, rep = NamedSharding(mesh, P("fsdp")), NamedSharding(mesh, P())
    n = int(sys.argv[4])
    full = np.random.default_rng(0).normal(size=(n, 256)).astype(np.float32)
    make = lambda sharding, value: jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])
    state = {"w": make(rows, full), "b": make(rep, np.arange(8, dtype=np.float32))}
    checkpoint_lib.state_checksum(state)  # compile once
    t0 = time.perf_counter()
    digest = checkpoint_lib.state_checksum(state)
    seconds = time.perf_counter() - t0
    with Checkpointer(sys.argv[1], async_save=False) as ck:
        ck.save(1, state, {"n": n})
    with Checkpointer(sys.argv[1]) as ck:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        step, got, meta = ck.restore(abstract)
        assert step == 1 and meta == {"n": n}
        for k in state:
            for a, b in zip(got[k].addressable_shards, state[k].addressable_shards):
                assert a.index == b.index and np.array_equal(np.asarray(a.data), np.asarray(b.data)), k
    print(f"MULTIHOST-OK digest={digest['digest']} seconds={seconds:.4f} gathered={sorted(set(gathered))}")
""")


@pytest.mark.slow
def test_two_processes_checksum_their_own_shards_without_gathering(tmp_path, run_processes):
    """2 processes x 4 CPU devices, an FSDP-sharded state: save and verified restore work while any all-gather of
    more than one element fails; both processes compute the same digest, equal to one process's over the same
    global values."""
    import portpicker

    rows = 4096  # 4 MiB of float32 per process-pair
    port = portpicker.pick_unused_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    codes, outs = run_processes([[sys.executable, "-c", MULTIHOST_SCRIPT, str(tmp_path / "ck"), str(port), str(i),
                                  str(rows)] for i in range(2)], env)
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
    digests = {re.search(r"digest=(\w+)", o).group(1) for o in outs}
    assert len(digests) == 1
    full = np.random.default_rng(0).normal(size=(rows, 256)).astype(np.float32)
    single = state_checksum({"w": full, "b": np.arange(8, dtype=np.float32)})
    assert digests == {single["digest"]}
    print([re.search(r"MULTIHOST-OK.*", o).group(0) for o in outs])


def test_an_intact_record_of_an_unknown_format_raises_and_moves_nothing(tmp_path):
    """A checkpoint written by another version is not damaged: it must not be quarantined."""
    save_steps(tmp_path, [1])
    meta_file = tmp_path / "1" / "metadata" / "metadata"
    record = json.loads(meta_file.read_text())
    record["format"] = 99
    record["record_sha256"] = checkpoint_lib._json_sha256({k: v for k, v in record.items() if k != "record_sha256"})
    meta_file.write_text(json.dumps(record))
    before = tree_snapshot(tmp_path)
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointRestoreError, match="format 99"):
        ck.restore(abstract_of(make_state(1)))
    assert tree_snapshot(tmp_path) == before
