"""The contract every network shares (MLP, U-Net, DiT), on tiny configurations.

Output shape and dtype equal the input's; t is (batch,); labels in [0, C] with C the null label (classifier-free
guidance); bfloat16 compute keeps float32 parameters; remat changes nothing numerically; samples in a batch do not
interact; bad conditioning inputs raise a ValueError while tracing, before XLA compiles anything.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen.networks import MLP, DiT, UNet

KEY = jax.random.key(0)
DROPOUT_KEY = jax.random.key(3)
FAST_COMPILE = {"xla_backend_optimization_level": 0}   # tiny nets: compiling, not running, is what costs time
B = 3

# Tiny configurations: (constructor keyword arguments, input shape without the batch).
TINY = {
    "mlp": (MLP, dict(hidden=32, depth=2), (3,)),
    "unet": (UNet, dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, dropout=0.1),
             (8, 8, 3)),
    "dit": (DiT, dict(hidden=32, depth=2, num_heads=2, patch_size=2), (8, 8, 4)),
}
REMAT = ("mlp", "unet", "dit")


def make(name, **overrides):
    cls, kwargs, shape = TINY[name]
    return cls(**{**kwargs, **overrides}), shape


def inputs(shape, batch=B, seed=1):
    x = jax.random.normal(jax.random.key(seed), (batch, *shape))
    t = jnp.linspace(0.05, 0.95, batch)
    return x, t


def random_params(net, *args, seed=7):
    """Random parameters of ``net`` made on the host (no PRNG kernels to compile): kernels ~ N(0, 1/fan_in),
    norm scales ~ 1 + N(0, 0.01), biases ~ N(0, 0.01), embeddings ~ N(0, 1). Unlike the real init, whose
    zero-initialised output layers make every net ≈ 0, these make every path through the net visible."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * z)
        return jnp.asarray(z if name == "embedding" else 0.1 * z)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(net.init, KEY, *args))


def init(net, x, t, labels=None):
    return random_params(net, *((x, t) if labels is None else (x, t, labels)))


@functools.cache
def _compiled(name, items):
    net, shape = make(name, **dict(items))
    return net, shape, jax.jit(net.apply, static_argnames=("train",), compiler_options=FAST_COMPILE)


def compiled(name, **overrides):
    """(net, input shape, jitted apply) for a tiny config, shared by every test in the session: compiling is what
    costs time on 2 CPU cores, so each (config, dtype, train) combination is compiled once."""
    return _compiled(name, tuple(sorted(overrides.items())))


@pytest.mark.parametrize("name", list(TINY))
def test_forward_contract_and_labels(name):
    # Unconditional: shape, dtype and finiteness.
    net, shape, apply = compiled(name)
    x, t = inputs(shape)
    out = apply(init(net, x, t), x, t)
    assert out.shape == x.shape and out.dtype == x.dtype and bool(jnp.all(jnp.isfinite(out)))
    # Conditional: num_classes + 1 label rows, the last being the null label.
    num_classes = 3
    net, shape, apply = compiled(name, num_classes=num_classes)
    assert net.null_label == num_classes
    v = init(net, x, t, jnp.zeros(B, jnp.int32))
    outs = [apply(v, x, t, jnp.full(B, c, jnp.int32)) for c in range(num_classes + 1)]   # the last: null label
    for i in range(num_classes + 1):
        assert outs[i].shape == x.shape and outs[i].dtype == x.dtype and bool(jnp.all(jnp.isfinite(outs[i])))
        for j in range(i):
            assert not np.allclose(outs[i], outs[j], atol=1e-5), (i, j)
    labels = jnp.array([3, 1, 0], jnp.int32)
    out = apply(v, x, t, labels)
    for i in range(B):
        np.testing.assert_allclose(out[i], outs[int(labels[i])][i], rtol=1e-4, atol=1e-5)
    # The output depends on t, and samples do not interact: permuting the batch permutes the output.
    assert not np.allclose(out, apply(v, x, 1.0 - t, labels), atol=1e-5)
    perm = jnp.array([2, 0, 1])
    np.testing.assert_allclose(apply(v, x[perm], t[perm], labels[perm]), out[perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_bfloat16_compute_float32_params(name):
    net16, shape, apply16 = compiled(name, num_classes=3, dtype=jnp.bfloat16)
    net32, _, apply32 = compiled(name, num_classes=3)
    x, t = inputs(shape)
    labels = jnp.array([3, 1, 0], jnp.int32)
    v = init(net16, x, t, labels)
    assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.structure(v) == jax.tree.structure(jax.eval_shape(net32.init, KEY, x, t, labels))
    out16 = apply16(v, x, t, labels)
    assert out16.dtype == jnp.float32 and out16.shape == x.shape   # the input's dtype, not the compute dtype
    assert "bf16" in str(jax.make_jaxpr(lambda v: net16.apply(v, x, t, labels))(v))
    out32 = apply32(v, x, t, labels)
    scale = float(jnp.max(jnp.abs(out32)))
    assert 0 < float(jnp.max(jnp.abs(out16 - out32))) < 0.1 * scale


@pytest.mark.parametrize("name", REMAT)
def test_remat_same_output_and_gradient(name):
    net, shape, apply = compiled(name)
    net_remat, _, apply_remat = compiled(name, remat=True)
    x, t = inputs(shape)
    v = init(net, x, t)
    assert jax.tree.structure(v) == jax.tree.structure(jax.eval_shape(net_remat.init, KEY, x, t))
    train = name == "unet"             # with dropout (DiT has none)
    rngs = {"dropout": DROPOUT_KEY}   # the same dropout masks in both
    np.testing.assert_allclose(apply_remat(v, x, t, train=train, rngs=rngs), apply(v, x, t, train=train, rngs=rngs),
                               rtol=1e-5, atol=1e-6)
    # remat really recomputes: the backward pass of the remat net contains the checkpoint (remat) primitive.
    loss = lambda n: lambda v: jnp.mean(n.apply(v, x, t, train=train, rngs=rngs) ** 2)
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss(net_remat)))(v))
    assert "remat" not in str(jax.make_jaxpr(jax.grad(loss(net)))(v))
    if name == "dit":   # gradients agree (compiled once per net; the U-Net's would cost ~8 s on 2 cores)
        grads = [jax.jit(jax.value_and_grad(loss(n)), compiler_options=FAST_COMPILE)(v) for n in (net, net_remat)]
        (l0, g0), (l1, g1) = grads
        np.testing.assert_allclose(l0, l1, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g0))


@pytest.mark.parametrize("name", list(TINY))
def test_bad_conditioning_raises_while_tracing(name):
    uncond, shape = make(name)
    cond, _ = make(name, num_classes=2)
    owner = type(uncond).__name__
    x, t = inputs(shape)
    labels = jnp.zeros(B, jnp.int32)
    v_u = jax.eval_shape(uncond.init, KEY, x, t)
    v_c = jax.eval_shape(cond.init, KEY, x, t, labels)
    cases = [
        (uncond, v_u, (x, t[:, None]), "t must have shape"),
        (uncond, v_u, (x, t[:2]), r"t must have shape \(batch,\) = \(3,\); got shape \(2,\)"),
        (uncond, v_u, (x, jnp.float32(0.5)), "t must have shape"),
        (uncond, v_u, (x, t, labels), "unconditional"),
        (cond, v_c, (x, t), "needs labels"),
        (cond, v_c, (x, t, labels[:2]), "labels must have shape"),
        (cond, v_c, (x, t, labels.astype(jnp.float32)), "must be integers"),
        (uncond, v_u, (x[0], t), "x must have shape"),
    ]
    for net, v, args, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            jax.eval_shape(net.apply, v, *args)       # abstract evaluation: nothing is compiled
        assert owner in str(err.value)
        with pytest.raises(ValueError, match=msg):
            jax.jit(net.apply)(v, *args)              # raised while tracing, before XLA compiles
    with pytest.raises(ValueError, match="no null label"):
        _ = uncond.null_label
    with pytest.raises(ValueError, match="num_classes"):
        make(name, num_classes=0)
    with pytest.raises(ValueError, match="time_embedding"):
        make(name, time_embedding="learned")


def test_plugs_into_sampler_with_guidance():
    net, shape = make("dit", num_classes=3)   # the U-Net has the same call signature
    x, t = inputs(shape)
    v = init(net, x, t, jnp.zeros(B, jnp.int32))
    out, info = fg.sample(net.apply, "linear", solver="euler", num_steps=2, noise=x, params=v,
                          cond=jnp.array([0, 1, 2], jnp.int32), null_cond=net.null_label, guidance=2.0)
    assert out.shape == x.shape and int(info["nfe"]) == 2 and int(info["forward_passes"]) == 4
    assert bool(jnp.all(jnp.isfinite(out)))
