"""Text conditioning from precomputed embeddings (flowgen.data.text, flowgen.train.text_input): the shipped digits
caption set, the text_embeddings folder and its input (sharding, resume, mock), caption dropout in the loss, and
the config checks that tie text-conditioned data to a text-conditioned network."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flowgen import losses
from flowgen import paths as paths_lib
from flowgen.data import text
from flowgen.train import config as config_lib
from flowgen.train.text_input import CaptionedInput, TextFolderInput


def test_digit_captions_are_fixed_and_differ_in_their_class_word():
    captions = text.CAPTION_SETS["digits"]
    assert captions.captions[7] == "a handwritten seven" and len(captions.captions) == 10
    table = captions.table()
    assert table["context"].shape == (10, 4, 32) and table["pooled"].shape == (10, 32)
    # Shared words have one vector, the class word its own, the fourth token is padding (zeros).
    np.testing.assert_array_equal(table["context"][:, :2], np.broadcast_to(table["context"][:1, :2], (10, 2, 32)))
    np.testing.assert_array_equal(table["context"][:, 3], 0.0)
    assert len({tuple(np.round(row, 6)) for row in table["context"][:, 2]}) == 10
    assert len({tuple(np.round(row, 6)) for row in table["pooled"]}) == 10
    # Deterministic across processes and platforms (seeded by CRC-32 of the words): a pinned value.
    np.testing.assert_allclose(table["context"][7, 2, :3], [-0.12965105, 0.09866345, 0.00472227], atol=1e-7)
    np.testing.assert_array_equal(captions.embed([7, 7, 1])["pooled"][1], table["pooled"][7])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        captions.embed([10])
    with pytest.raises(ValueError, match="not a caption set"):
        text.get_caption_set("imagenet")


class _Labelled:
    """A stand-in labelled input (what ImageInput yields)."""

    element_shape, num_classes = (8, 8, 1), 10

    def __init__(self):
        self.calls = 0

    def next(self):
        self.calls += 1
        return {"x": np.full((4, 8, 8, 1), self.calls, np.float32), "label": np.array([3, 0, 9, 3], np.int32)}

    def get_state(self):
        return {"calls": self.calls}

    def set_state(self, state):
        self.calls = state["calls"]


def test_captioned_input_replaces_labels_by_their_captions():
    inner = _Labelled()
    data = CaptionedInput(inner, text.CAPTION_SETS["digits"])
    batch = data.next()
    assert set(batch) == {"x", "context", "pooled"}
    want = text.CAPTION_SETS["digits"].embed([3, 0, 9, 3])
    for k in text.COND_KEYS:
        np.testing.assert_array_equal(batch[k], want[k])
    assert data.get_state() == {"calls": 1} and data.num_classes == 0


def _folder_cfg(folder, batch_size=4, mock=False):
    return ml_collections.ConfigDict({
        "name": text.TEXT_FOLDER, "data_dir": str(folder), "batch_size": batch_size, "mock": mock, "captions": "",
        "kwargs": {"shape": (2, 2, 1), "context_len": 3, "context_dim": 5, "pooled_dim": 6}})


def test_text_folder_round_trip_epochs_and_resume(tmp_path):
    n = 10
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 2, 2, 1), np.float32)
    context = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((n, 3, 5), np.float32)
    pooled = np.arange(n, dtype=np.float32)[:, None] * np.ones((n, 6), np.float32)
    text.write_text_folder(tmp_path, x, context, pooled, provenance={"encoders": "test"})
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        text.write_text_folder(tmp_path, x, context, pooled)
    cfg = _folder_cfg(tmp_path)
    tc = config_lib.text_conditioning(cfg)
    assert config_lib.element_shape(cfg) == (2, 2, 1) and tc.shapes(7) == {"context": (7, 3, 5), "pooled": (7, 6)}
    data = TextFolderInput(cfg, seed=3, text=tc, element_shape=(2, 2, 1))
    seen = []
    for _ in range(4):   # 2 full batches per epoch (10 // 4), then a fresh permutation
        batch = data.next()
        ids = batch["x"][:, 0, 0, 0]
        np.testing.assert_array_equal(batch["context"][:, 0, 0], ids)    # rows stay together
        np.testing.assert_array_equal(batch["pooled"][:, 0], ids)
        seen.append(ids)
    assert len(set(np.concatenate(seen[:2]).tolist())) == 8            # one epoch: no example twice
    assert not np.array_equal(np.concatenate(seen[:2]), np.concatenate(seen[2:]))
    state = data.get_state()
    after = data.next()
    resumed = TextFolderInput(cfg, seed=3, text=tc, element_shape=(2, 2, 1))
    resumed.set_state(state)
    np.testing.assert_array_equal(resumed.next()["x"], after["x"])
    # Samples use the folder's first captions; declared shapes are checked against the files.
    np.testing.assert_array_equal(tc.sample_cond(12)["pooled"][:, 0], np.arange(12) % n)
    bad = _folder_cfg(tmp_path)
    bad.kwargs.context_dim = 4
    with pytest.raises(ValueError, match="per-example shapes"):
        TextFolderInput(bad, 3, config_lib.text_conditioning(bad), (2, 2, 1))
    with pytest.raises(FileNotFoundError, match="lacks"):
        text.open_text_folder(tmp_path / "missing")


def test_two_processes_read_disjoint_shards(tmp_path, monkeypatch):
    n = 12
    ids = np.arange(n, dtype=np.float32)
    text.write_text_folder(tmp_path, ids[:, None, None, None] * np.ones((n, 2, 2, 1), np.float32),
                           np.zeros((n, 3, 5), np.float32), np.zeros((n, 6), np.float32))
    cfg = _folder_cfg(tmp_path, batch_size=6)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda rank=rank: rank)
        data = TextFolderInput(cfg, 0, config_lib.text_conditioning(cfg), (2, 2, 1))
        shards.append(np.concatenate([data.next()["x"][:, 0, 0, 0] for _ in range(2)]))
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))


def test_mocked_folder_is_deterministic_and_lazy():
    cfg = _folder_cfg("", batch_size=8, mock=True)
    tc = config_lib.text_conditioning(cfg)
    a = TextFolderInput(cfg, 0, tc, (2, 2, 1)).next()
    b = TextFolderInput(cfg, 0, tc, (2, 2, 1)).next()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    big = text.mock_text_arrays((128, 128, 16), 333, 4096, 2048)
    assert big["x"].shape == (text.MOCK_EXAMPLES, 128, 128, 16)     # made only when read
    np.testing.assert_array_equal(tc.sample_cond(3)["pooled"], text.mock_text_arrays((1,), 3, 5, 6)["pooled"][:3])


def test_dropped_captions_are_zeros_in_the_loss():
    seen = []

    def model(params, x_t, t, cond, rng):
        seen.append(cond)
        return jnp.zeros_like(x_t) + params * jnp.sum(cond["pooled"], axis=-1)[:, None, None, None]

    path = paths_lib.get("linear")
    b = 64
    batch = {"x": jnp.zeros((b, 2, 2, 1)), "context": jnp.ones((b, 3, 5)), "pooled": jnp.ones((b, 6))}
    key = jax.random.key(0)
    for p, kept in ((0.0, b), (1.0, 0)):
        seen.clear()
        losses.make_loss(model, path, label_dropout=p, text_cond=True)(1.0, batch, key)
        cond = seen[0]
        assert int(jnp.sum(jnp.all(cond["context"] == 1.0, axis=(1, 2)))) == kept
        assert int(jnp.sum(jnp.all(cond["pooled"] == 0.0, axis=1))) == b - kept
    seen.clear()
    losses.make_loss(model, path, label_dropout=0.5, text_cond=True)(1.0, batch, key)
    dropped = jnp.all(seen[0]["pooled"] == 0.0, axis=1)
    np.testing.assert_array_equal(dropped, jnp.all(seen[0]["context"] == 0.0, axis=(1, 2)))   # a caption as one
    assert 16 < int(jnp.sum(dropped)) < 48
    with pytest.raises(ValueError, match="lacks"):
        losses.make_loss(model, path, text_cond=True)(1.0, {"x": batch["x"]}, key)


def _mmdit_config(**overrides):
    c = config_lib.base_config()
    c.data.name, c.data.captions, c.data.batch_size = "flowgen_digits", "digits", 8
    c.model.name = "mmdit"
    c.model.kwargs = {"hidden": 32, "depth": 1, "num_heads": 2, "patch_size": 2, "sample_size": 8,
                      "pos_embed_max_size": 4}
    c.loss.label_dropout = 0.1
    c.sample.guidance = 2.0
    c.update_from_flattened_dict(overrides)
    return c


def test_config_ties_text_data_to_a_text_network():
    config_lib.validate(_mmdit_config())
    cases = [
        ({"data.captions": ""}, "is conditioned on text"),
        ({"model.name": "dit", "model.kwargs": {"hidden": 32, "depth": 1, "num_heads": 2}}, "does not take"),
        ({"model.num_classes": 10}, "not labels"),
        ({"data.captions": "imagenet"}, "not a caption set"),
        ({"data.name": "moons"}, "has no labels"),
        ({"data.name": "circle"}, "has 10 captions but data.name='circle' has 8 classes"),
        ({"method.name": "meanflow"}, "does not take text conditioning"),
        ({"data.name": text.TEXT_FOLDER}, "brings its own caption embeddings"),
        ({"data.name": text.TEXT_FOLDER, "data.captions": "", "data.kwargs": {"shape": (8, 8, 1)}},
         r"declares its shapes .* missing \['context_len', 'context_dim', 'pooled_dim'\]"),
    ]
    for overrides, msg in cases:
        with pytest.raises(ValueError, match=msg):
            config_lib.validate(_mmdit_config(**overrides))
    folder = _mmdit_config(**{"data.name": text.TEXT_FOLDER, "data.captions": ""})
    folder.data.kwargs = {"shape": (8, 8, 4), "context_len": 7, "context_dim": 16, "pooled_dim": 8}
    config_lib.validate(folder)
    # A config saved before captions existed is upgraded with none.
    old = config_lib.base_config().to_dict()
    del old["data"]["captions"]
    assert config_lib.upgrade(old).data.captions == ""


def test_a_text_conditioned_run_samples_with_its_captions():
    from flowgen.train.run import Run

    run = Run.from_config(_mmdit_config())
    cond, null = run.sample_conditioning(12)
    want = text.CAPTION_SETS["digits"].embed(np.arange(12) % 10)
    for k in text.COND_KEYS:
        np.testing.assert_array_equal(cond[k], want[k])
    assert null == {"context": 0.0, "pooled": 0.0} and run.sample_groups == 10
    batch = run.abstract_batch(4)
    assert {k: v.shape for k, v in batch.items()} == {"x": (4, 8, 8, 1), "context": (4, 4, 32), "pooled": (4, 32)}
