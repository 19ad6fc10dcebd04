"""flowgen.networks: time embeddings and the MLP (shapes, conditioning, dtypes, validation, size)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.networks import MLP, embeddings, param_count

KEY = jax.random.key(0)
B, D = 7, 3


def _inputs(batch=B, dim=D):
    x = jax.random.normal(jax.random.key(1), (batch, dim))
    t = jnp.linspace(0.0, 1.0, batch)
    return x, t


# --- embeddings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [embeddings.sinusoidal_embedding, embeddings.fourier_embedding])
@pytest.mark.parametrize("dim", [2, 16, 17])
def test_embedding_shapes_and_range(fn, dim):
    emb = fn(jnp.linspace(0.0, 1.0, 5), dim)
    assert emb.shape == (5, dim) and emb.dtype == jnp.float32
    assert bool(jnp.all(jnp.abs(emb) <= 1.0))
    if dim % 2:
        np.testing.assert_array_equal(emb[:, -1], 0.0)


def test_sinusoidal_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    dim, max_period, scale = 8, 10_000.0, 1000.0
    emb = embeddings.sinusoidal_embedding(t, dim, max_period, scale)
    half = dim // 2
    w = scale * max_period ** (-np.arange(half) / half)
    args = np.asarray(t, np.float64)[:, None] * w[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], -1), atol=2e-4)
    np.testing.assert_array_equal(emb[0], [1.0] * half + [0.0] * half)      # t = 0


def test_fourier_frequencies_fixed_and_scaled():
    w = embeddings.fourier_frequencies(4096, scale=16.0, seed=3)
    np.testing.assert_array_equal(w, embeddings.fourier_frequencies(4096, scale=16.0, seed=3))
    assert abs(np.std(w) / 16.0 - 1.0) < 0.05
    # Not parameters: the module form has no variables at all.
    assert embeddings.GaussianFourierEmbedding(8).init(KEY, jnp.zeros(3)) == {}


# --- MLP ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("time_embedding", ["sinusoidal", "fourier"])
def test_output_shape_equals_input_shape(time_embedding):
    x, t = _inputs()
    net = MLP(hidden=16, depth=2, time_embedding=time_embedding)
    variables = net.init(KEY, x, t)
    out = net.apply(variables, x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    # The output depends on t (the embedding is wired in).
    assert not np.allclose(out, net.apply(variables, x, 1.0 - t))


def test_trailing_axes_are_flattened():
    x, t = _inputs()
    x = x.reshape(B, 1, D)
    net = MLP(hidden=16, depth=2)
    variables = net.init(KEY, x, t)
    out = net.apply(variables, x, t)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.reshape(B, D), net.apply(variables, x.reshape(B, D), t), rtol=1e-6)


def test_conditional_labels_and_null_label():
    x, t = _inputs()
    net = MLP(hidden=16, depth=2, num_classes=4)
    assert net.null_label == 4
    variables = net.init(KEY, x, t, jnp.zeros(B, jnp.int32))
    assert variables["params"]["label_embed"]["table"]["embedding"].shape == (5, 16)  # num_classes + 1 rows
    outs = [net.apply(variables, x, t, jnp.full(B, c, jnp.int32)) for c in range(5)]
    for i in range(5):
        assert bool(jnp.all(jnp.isfinite(outs[i])))
        for j in range(i):
            assert not np.allclose(outs[i], outs[j]), (i, j)
    # Labels outside [0, num_classes] give NaN rows (a negative label must not wrap round to the null label).
    bad = net.apply(variables, x, t, jnp.array([0, -1, 5, 4, 1, 2, 3], jnp.int32))
    assert np.isnan(bad[1]).all() and np.isnan(bad[2]).all() and np.isfinite(np.delete(bad, [1, 2], 0)).all()
    # Per-sample labels: each row follows its own label.
    mixed = jnp.arange(B, dtype=jnp.int32) % 5
    out = net.apply(variables, x, t, mixed)
    for i in range(B):
        np.testing.assert_allclose(out[i], outs[int(mixed[i])][i], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    x, t = _inputs()
    net16 = MLP(hidden=16, depth=2, num_classes=3, dtype=jnp.bfloat16)
    labels = jnp.ones(B, jnp.int32)
    variables = net16.init(KEY, x, t, labels)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out16 = net16.apply(variables, x, t, labels)
    assert out16.dtype == jnp.float32 and out16.shape == x.shape
    # The matmuls really run in bfloat16, and agree with float32 compute to bfloat16 accuracy.
    jaxpr = str(jax.make_jaxpr(lambda v: net16.apply(v, x, t, labels))(variables))
    assert "bf16" in jaxpr
    out32 = MLP(hidden=16, depth=2, num_classes=3).apply(variables, x, t, labels)
    np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.05)


def test_bad_inputs_raise_at_trace_time():
    x, t = _inputs()
    uncond, cond = MLP(hidden=16, depth=1), MLP(hidden=16, depth=1, num_classes=2)
    v_u = jax.eval_shape(uncond.init, KEY, x, t)
    v_c = jax.eval_shape(cond.init, KEY, x, t, jnp.zeros(B, jnp.int32))
    labels = jnp.zeros(B, jnp.int32)
    cases = [
        (uncond, v_u, (x, t[:, None]), "t must have shape"),
        (uncond, v_u, (x, t[:3]), "t must have shape"),
        (uncond, v_u, (x, jnp.float32(0.5)), "t must have shape"),
        (uncond, v_u, (x[:, 0], t), "x must have shape"),
        (uncond, v_u, (x, t, labels), "unconditional"),
        (cond, v_c, (x, t), "needs labels"),
        (cond, v_c, (x, t, labels[:2]), "labels must have shape"),
        (cond, v_c, (x, t, labels.astype(jnp.float32)), "must be integers"),
    ]
    for net, v, args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            jax.eval_shape(net.apply, v, *args)      # abstract evaluation: nothing is compiled
        with pytest.raises(ValueError, match=msg):
            net.apply(v, *args)             # raised while tracing, before XLA compiles
    for kwargs in (dict(hidden=0), dict(depth=0), dict(num_classes=0), dict(num_classes=2.0),
                   dict(time_embedding="learned"), dict(activation="relu")):
        with pytest.raises(ValueError, match="MLP"):
            MLP(**kwargs)


@pytest.mark.parametrize("d, hidden, depth, num_classes, time_embedding",
                         [(2, 256, 3, None, "sinusoidal"), (2, 256, 3, 10, "sinusoidal"), (5, 64, 1, None, "fourier"),
                          (3, 48, 4, 1, "sinusoidal"), (2, 64, 3, None, "concat"), (3, 32, 2, 4, "concat")])
def test_param_count_matches_formula(d, hidden, depth, num_classes, time_embedding):
    net = MLP(hidden=hidden, depth=depth, num_classes=num_classes, time_embedding=time_embedding)
    args = (jnp.zeros((4, d)), jnp.zeros(4)) + ((jnp.zeros(4, jnp.int32),) if num_classes else ())
    shapes = jax.eval_shape(net.init, KEY, *args)
    counted = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert counted == param_count(d, hidden, depth, num_classes, time_embedding)


def test_concat_selu_is_torchcfms_2d_network():
    """time_embedding="concat", activation="selu", 3×64 is torchcfm's ``MLP(dim=2, w=64, time_varying=True)``:
    Linear(3, 64) SELU Linear(64, 64) SELU Linear(64, 64) SELU Linear(64, 2) on [x, t] — 8,706 parameters; the
    function is checked against that formula written out with the same weights."""
    net = MLP(hidden=64, depth=3, time_embedding="concat", activation="selu")
    x, t = jax.random.normal(KEY, (5, 2)), jnp.linspace(0.0, 1.0, 5)
    p = net.init(KEY, x, t)["params"]
    assert sum(leaf.size for leaf in jax.tree.leaves(p)) == 8706
    dense = lambda layer, h: h @ layer["kernel"] + layer["bias"]  # noqa: E731
    h = jax.nn.selu(dense(p["in_proj"], jnp.concatenate([x, t[:, None]], axis=1)))
    h = jax.nn.selu(dense(p["hidden_0"]["dense"], h))
    h = jax.nn.selu(dense(p["hidden_1"]["dense"], h))
    np.testing.assert_allclose(net.apply({"params": p}, x, t), dense(p["out_proj"], h), rtol=1e-5, atol=1e-6)


def test_plugs_into_sampler_with_params_and_guidance():
    x, t = _inputs(batch=8, dim=2)
    net = MLP(hidden=16, depth=1, num_classes=2)
    variables = net.init(KEY, x, t, jnp.zeros(8, jnp.int32))
    out, info = fg.sample(net.apply, "linear", solver="euler", num_steps=3, noise=x, params=variables,
                          cond=jnp.zeros(8, jnp.int32), null_cond=net.null_label, guidance=2.0)
    assert out.shape == x.shape and int(info["nfe"]) == 3 and int(info["forward_passes"]) == 6
    assert bool(jnp.all(jnp.isfinite(out)))
