"""flowgen.networks.mmdit: diffusers' parameter counts and outputs, adaLN-Zero at init, joint attention, guidance
with the null caption, bad input, and a tiny text-conditioned model that learns.

The reference numbers come from diffusers' ``SD3Transformer2DModel`` (tests/data/make_mmdit_reference.py, run with
torch and diffusers in their own environment): parameter counts of the released configurations, and for two tiny
configurations of the same architecture (with and without QK-norm) the state dict, inputs and outputs.
"""

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_networks_common import FAST_COMPILE, KEY, random_params

import flowgen as fg
from flowgen.networks import MMDIT_PRESETS, MMDiT, mmdit_param_count
from flowgen.networks.mmdit import JointBlock, cropped_pos_embed, params_from_diffusers

REF = np.load(Path(__file__).parent / "data" / "mmdit_reference.npz")
SD3_TEXT = {"context_len": 333, "context_dim": 4096, "pooled_dim": 2048}   # CLIP 77 + T5 256 tokens


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _config(name) -> dict:
    return json.loads(str(REF[f"config_{name}" if f"config_{name}" in REF.files else f"{name}/config"]))


def _from_diffusers_config(cfg) -> MMDiT:
    return MMDiT(hidden=cfg["num_attention_heads"] * cfg["attention_head_dim"], depth=cfg["num_layers"],
                 num_heads=cfg["num_attention_heads"], patch_size=cfg["patch_size"], sample_size=cfg["sample_size"],
                 pos_embed_max_size=cfg["pos_embed_max_size"], qk_norm=cfg.get("qk_norm"))


def _abstract_cond(batch, tokens, context_dim, pooled_dim):
    return {"context": jax.ShapeDtypeStruct((batch, tokens, context_dim), jnp.float32),
            "pooled": jax.ShapeDtypeStruct((batch, pooled_dim), jnp.float32)}


@pytest.mark.parametrize("name", ["sd3-medium", "sd3.5-large"])
def test_parameter_count_equals_diffusers(name):
    cfg = _config(name)
    net = MMDiT(**MMDIT_PRESETS[name])
    assert net == _from_diffusers_config(cfg)                          # the preset is diffusers' configuration
    assert cfg["caption_projection_dim"] == net.hidden and cfg["out_channels"] == cfg["in_channels"]
    shape = (cfg["sample_size"], cfg["sample_size"], cfg["in_channels"])
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    cond = _abstract_cond(1, SD3_TEXT["context_len"], cfg["joint_attention_dim"], cfg["pooled_projection_dim"])
    n = _count(jax.eval_shape(net.init, KEY, x, t, cond))             # abstract: nothing is allocated
    print(f"\n{name}: {n:,} parameters (diffusers: {int(REF[f'count_{name}']):,})")
    assert n == int(REF[f"count_{name}"])
    assert n == mmdit_param_count(net.hidden, net.depth, net.patch_size, cfg["in_channels"],
                                  cfg["joint_attention_dim"], cfg["pooled_projection_dim"], net.num_heads,
                                  qk_norm=net.qk_norm)
    if name == "sd3-medium":
        assert n == 2_028_328_000


def _tiny(name):
    cfg = _config(name)
    state = {k[len(name) + 3:]: REF[k] for k in REF.files if k.startswith(f"{name}/w/")}
    cond = {"context": jnp.asarray(REF[f"{name}/context"]), "pooled": jnp.asarray(REF[f"{name}/pooled"])}
    return cfg, _from_diffusers_config(cfg), state, jnp.asarray(REF[f"{name}/x"]), jnp.asarray(REF[f"{name}/t"]), cond


def _relative(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", ["tiny", "tiny_qk"])
def test_outputs_equal_diffusers_on_converted_weights(name, monkeypatch):
    cfg, net, state, x, t, cond = _tiny(name)
    params = params_from_diffusers(state, net.depth, net.qk_norm)
    abstract = jax.eval_shape(net.init, KEY, x, t, cond)["params"]
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    assert [a.shape for a in jax.tree.leaves(abstract)] == [p.shape for p in jax.tree.leaves(params)]
    assert _count(params) == int(REF[f"{name}/count"]) == mmdit_param_count(
        net.hidden, net.depth, net.patch_size, x.shape[-1], cond["context"].shape[-1], cond["pooled"].shape[-1],
        net.num_heads, qk_norm=net.qk_norm)

    # The positional table is diffusers' buffer, centre-cropped (here off-centre: 4x6 tokens of a 7x7 table).
    m, d, p = net.pos_embed_max_size, net.hidden, net.patch_size
    h, w = x.shape[1] // p, x.shape[2] // p
    top, left = (m - h) // 2, (m - w) // 2
    buffer = state["pos_embed.pos_embed"].reshape(m, m, d)[top:top + h, left:left + w].reshape(h * w, d)
    np.testing.assert_allclose(cropped_pos_embed(d, h, w, m, net.sample_size // p), buffer, atol=1e-6)

    want = REF[f"{name}/out"]
    apply = jax.jit(net.apply, compiler_options=FAST_COMPILE)
    error = _relative(apply({"params": params}, x, t, cond), want)
    print(f"\n{name}: max |ours − diffusers| / max |diffusers| = {error:.2e}")
    # Time features of 1000·t (up to 910 here) are rounded differently in float32 (we multiply t by 1000·ω, diffusers
    # 1000·t by ω): up to an ulp of the argument, 6e-5 ...
    features = REF[f"{name}/t_features"]
    assert np.abs(np.asarray(fg.networks.sinusoidal_embedding(t, 256)) - features).max() < 1e-4
    assert error < 2e-5
    # ... and with diffusers' own features the rest of the network agrees to float32 rounding.
    monkeypatch.setattr(fg.networks.embeddings, "sinusoidal_embedding", lambda *a, **k: jnp.asarray(features))
    traced_anew = lambda *args: net.apply(*args)  # noqa: E731  (a new function: jit's cache has not seen it)
    exact = jax.jit(traced_anew, compiler_options=FAST_COMPILE)({"params": params}, x, t, cond)
    assert _relative(exact, want) < 2e-6


TINY = dict(hidden=32, depth=2, num_heads=2, patch_size=2, sample_size=8, pos_embed_max_size=6)


def _normal(*shape, seed=0):
    """Host-made standard normals (no PRNG kernel to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _inputs(batch=3, tokens=5, context_dim=12, pooled_dim=10):
    x = _normal(batch, 8, 8, 3, seed=1)
    t = jnp.linspace(0.05, 0.95, batch)
    cond = {"context": _normal(batch, tokens, context_dim, seed=2), "pooled": _normal(batch, pooled_dim, seed=3)}
    return x, t, cond


@functools.cache
def _block(num_heads, context_pre_only=False):
    return jax.jit(JointBlock(num_heads, context_pre_only=context_pre_only).apply, compiler_options=FAST_COMPILE)


@functools.cache
def _apply(**kwargs):
    net = MMDiT(**{**TINY, **kwargs})
    return net, jax.jit(net.apply, compiler_options=FAST_COMPILE)


def test_adaln_zero_initialisation():
    net, apply = _apply()
    x, t, cond = _inputs()
    v = jax.jit(net.init, compiler_options=FAST_COMPILE)(KEY, x, t, cond)
    params = v["params"]
    # The output is exactly zero for any input (the final layer's modulation and linear map are zero) ...
    np.testing.assert_array_equal(apply(v, x, t, cond), 0.0)
    np.testing.assert_array_equal(apply(v, -x, 1 - t, jax.tree.map(jnp.zeros_like, cond)), 0.0)
    for leaf in jax.tree.leaves(params["final_layer"]):
        np.testing.assert_array_equal(leaf, 0.0)
    # ... and every block passes both streams through unchanged (its gates are zero), the last one's text stream
    # being pre-only (not returned).
    tokens, text, y = _normal(3, 16, net.hidden, seed=4), _normal(3, 5, net.hidden, seed=5), _normal(3, net.hidden)
    for i in range(net.depth):
        last = i == net.depth - 1
        out_x, out_c = _block(net.num_heads, last)({"params": params[f"block_{i}"]}, tokens, text, y)
        np.testing.assert_array_equal(out_x, tokens)
        if last:
            assert out_c is None and "c_attn_out" not in params[f"block_{i}"]
        else:
            np.testing.assert_array_equal(out_c, text)
    # The rest is initialised normally: attention, embedders.
    assert float(jnp.std(params["block_0"]["x_qkv"]["kernel"])) > 0.05
    assert float(jnp.std(params["context_embedder"]["kernel"])) > 0.05


def test_joint_attention_carries_text_to_image_and_back():
    net, apply = _apply()
    x, t, cond = _inputs()
    v = random_params(net, x, t, cond)
    out = apply(v, x, t, cond)
    other_context = {**cond, "context": cond["context"] + 1.0}
    other_pooled = {**cond, "pooled": cond["pooled"] + 1.0}
    # Both parts of the caption reach the image: the sequence through attention, the pooled vector through adaLN.
    assert float(jnp.max(jnp.abs(apply(v, x, t, other_context) - out))) > 1e-3
    assert float(jnp.max(jnp.abs(apply(v, x, t, other_pooled) - out))) > 1e-3
    # Text tokens carry no positions (their order comes from the encoder): permuting them changes nothing.
    permuted = {**cond, "context": cond["context"][:, ::-1]}
    np.testing.assert_allclose(apply(v, x, t, permuted), out, rtol=1e-5, atol=1e-5)
    # Attention is the only way in for the sequence: without the image stream's attention output it has no effect.
    cut = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.zeros_like(leaf) if any(getattr(p, "key", None) == "x_attn_out" for p in path)
        else leaf, v)
    np.testing.assert_array_equal(apply(cut, x, t, other_context), apply(cut, x, t, cond))
    assert float(jnp.max(jnp.abs(apply(cut, x, t, other_pooled) - apply(cut, x, t, cond)))) > 1e-3
    # And the text stream attends to the image: a block's text output depends on the image tokens.
    y, text = _normal(3, net.hidden, seed=4), _normal(3, 5, net.hidden, seed=7)
    tokens, other = _normal(3, 16, net.hidden, seed=5), _normal(3, 16, net.hidden, seed=6)
    block = _block(net.num_heads)
    _, text_a = block({"params": v["params"]["block_0"]}, tokens, text, y)
    _, text_b = block({"params": v["params"]["block_0"]}, other, text, y)
    assert float(jnp.max(jnp.abs(text_a - text_b))) > 1e-3


def test_guidance_with_the_null_caption():
    net, _ = _apply()
    x, t, cond = _inputs()
    v = random_params(net, x, t, cond)
    null = {"context": 0.0, "pooled": 0.0}          # broadcast by fg.sample to the caption's shapes
    # One Euler step is linear in the velocity, so the guided sample must be uncond + w·(cond − uncond) exactly.
    sample = functools.partial(fg.sample, net.apply, "linear", solver="euler", num_steps=1, noise=x, params=v)
    plain, info = sample(cond=cond)
    unconditional, _ = sample(cond=net.null_cond(cond))
    assert not np.allclose(plain, unconditional, atol=1e-3)
    for w in (1.0, 0.0, 3.0):                         # 1: the conditional model; 0: the null caption's
        guided, info_w = sample(cond=cond, guidance=w, null_cond=null)
        np.testing.assert_allclose(guided, unconditional + w * (plain - unconditional), rtol=1e-5, atol=1e-5)
    assert int(info_w["forward_passes"]) == 2 * int(info_w["nfe"]) == 2 * int(info["forward_passes"]) == 2


def test_bad_inputs_raise_before_compiling():
    net, _ = _apply()
    x, t, cond = _inputs()
    v = jax.eval_shape(net.init, KEY, x, t, cond)
    cases = [
        ((x, t), "cond must be a dict"),
        ((x, t, jnp.zeros(3, jnp.int32)), "cond must be a dict"),
        ((x, t, {"context": cond["context"]}), r"keys \['context', 'pooled'\]"),
        ((x, t, {**cond, "context": cond["context"][:2]}), r"cond\['context'\] must have shape"),
        ((x, t, {**cond, "context": cond["context"][:, 0]}), r"cond\['context'\] must have shape"),
        ((x, t, {**cond, "pooled": cond["pooled"][:, None]}), r"cond\['pooled'\] must have shape"),
        ((x, t, {**cond, "pooled": cond["pooled"].astype(jnp.int32)}), "must be floating point"),
        ((x, t[:2], cond), r"t must have shape \(batch,\)"),
        ((x[..., :7, :], t, cond), "divisible by patch_size"),
        ((jnp.zeros((3, 14, 14, 3)), t, cond), "more than pos_embed_max_size=6"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            jax.eval_shape(net.apply, v, *args)       # abstract evaluation: nothing is compiled
        assert "MMDiT" in str(err.value)
    for kwargs, msg in [({"num_classes": 10}, "not on labels"), ({"qk_norm": "layer_norm"}, "valid: None, 'rms_norm'"),
                        ({"hidden": 30, "num_heads": 3}, "divisible by 4"), ({"num_heads": 5}, "must divide"),
                        ({"pos_embed_max_size": 0}, "pos_embed_max_size must be"),
                        ({"sample_size": 1}, "sample_size=1 must be >= patch_size")]:
        with pytest.raises(ValueError, match=msg):
            MMDiT(**{**TINY, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The ``digits`` variant of configs/sd3_mmdit.py (a tiny MM-DiT on the captioned digits) trained 120 steps at
    batch 32 through the real training loop: (workdir, logged losses)."""
    import importlib.util

    from flowgen.train.loop import train_and_evaluate

    path = Path(__file__).resolve().parents[1] / "configs" / "sd3_mmdit.py"
    spec = importlib.util.spec_from_file_location("sd3_mmdit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("digits")
    tmp = tmp_path_factory.mktemp("mmdit")
    c.data.data_dir = str(tmp / "tfds")
    c.update_from_flattened_dict({"train.num_steps": 120, "train.log_every": 20, "train.checkpoint_every": 120,
                                  "train.sample_every": 0, "data.batch_size": 32, "optim.lr": 3e-3,
                                  "optim.warmup_steps": 20, "ema.decays": (0.99,)})
    train_and_evaluate(c, str(tmp / "w"))
    lines = [json.loads(line) for line in (tmp / "w" / "metrics.jsonl").read_text().splitlines()]
    return tmp / "w", [x["loss"] for x in lines if "loss" in x]


def test_a_tiny_text_conditioned_model_learns_its_captions(trained):
    """The loss falls, and on held-out digits the velocity error with the right caption is clearly below the error
    with the next digit's caption and with the null caption."""
    from flowgen.data import digits, text

    workdir, losses = trained
    assert losses[-1] < 0.7 * losses[0], losses
    model = fg.load_model(workdir, params="params")
    images, labels = digits.digits_images()
    x = jnp.asarray(images[digits.SPLITS["test"][0]:] / 127.5 - 1.0, jnp.float32)
    labels = labels[digits.SPLITS["test"][0]:]
    noise = jax.random.normal(jax.random.key(0), x.shape)
    t = jax.random.uniform(jax.random.key(1), (len(x),), minval=0.05, maxval=0.95)
    x_t = t[:, None, None, None] * x + (1 - t[:, None, None, None]) * noise          # linear path: t = 1 is data
    apply = jax.jit(model.apply)
    captions = text.CAPTION_SETS["digits"]

    def error(cond):
        return float(jnp.mean((apply(model.params, x_t, t, jax.tree.map(jnp.asarray, cond)) - (x - noise)) ** 2))

    right, wrong = error(captions.embed(labels)), error(captions.embed((labels + 1) % 10))
    null = error(model.text.zeros(len(x)))
    print(f"\nloss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out velocity error: right caption {right:.3f}, next "
          f"digit's {wrong:.3f}, null {null:.3f}")
    assert right < 0.95 * wrong and right < null


def test_the_guidance_sweep_runs_on_a_text_conditioned_model(trained, tmp_path):
    """``flowgen.sweep`` over guidance weights: captions of the digits caption set, the null caption for the
    unconditional pass; w = 1 reproduces the unguided samples and costs two forward passes per call."""
    from flowgen.sweep import runner, store

    workdir, _ = trained
    config = {"models": {"t2i": {"workdir": str(workdir)}}, "solvers": ("euler",), "nfe": (4,), "seeds": (0,),
              "metrics": ("pixel_fd",), "num_samples": 40, "guidance": (None, 1.0, 3.0)}
    out = runner.run(config, str(tmp_path), progress=False)
    rows = {r["guidance"]: r for r in out["rows"]}
    assert all(r["status"] == "done" for r in rows.values())
    assert {w: (r["nfe"], r["forward_passes"]) for w, r in rows.items()} == {None: (4, 4), 1.0: (4, 8), 3.0: (4, 8)}
    samples = {w: store.read_samples(str(tmp_path / "cells"), r["id"]) for w, r in rows.items()}
    np.testing.assert_allclose(samples[1.0], samples[None], rtol=1e-4, atol=1e-4)
    assert not np.allclose(samples[3.0], samples[None], atol=1e-2)
