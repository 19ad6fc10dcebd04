"""flowgen.methods: the interface (options checked before anything runs, the loss sees the train state), flow
matching equal to ``flowgen.losses.make_loss``, pseudo-Huber's limits, and networks' extra time inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg
from flowgen import losses, methods
from flowgen.networks import MLP
from flowgen.train.state import TrainState

PATH = fg.paths.get("linear")


def batch(n=64, seed=0):
    return {"x": jax.random.normal(jax.random.key(seed), (n, 2))}


def net(hidden=16, **kw):
    module = MLP(hidden=hidden, depth=2, **kw)
    times = {n: jnp.zeros((1,)) for n in kw.get("extra_times", ())}
    params = module.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)), **({"times": times} if times else {}))
    return module, params


#: Methods tied to one path (their default path otherwise: linear): consistency models are TrigFlow's.
OWN_PATH = {"consistency": fg.paths.get("trig")}


def test_every_table_entry_builds_and_names_itself():
    for name, cls in methods.METHODS.items():
        m = methods.build(name, path=OWN_PATH.get(name, PATH), **({"coupling": "given"} if cls.trains_on_pairs else {}))
        assert m.name == name and isinstance(m, methods.Method) and m.prediction in fg.paths.TARGETS


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="flow_matchin"), "method.name"),
    (dict(name="flow_matching", tarrget="velocity"), "unknown options ['tarrget'] for method 'flow_matching'"),
    (dict(name="flow_matching", target="eps"), "'eps'"),
    (dict(name="pseudo_huber", c=0.0), "method.kwargs.c=0.0"),
    (dict(name="pseudo_huber", c=0.1, weighting="snr"), "only 'uniform'"),
])
def test_bad_options_are_one_clear_error(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as e:
        if name not in methods.METHODS:
            raise ValueError(f"method.name={name!r} is not one of: {', '.join(methods.METHODS)}")
        methods.build(name, path=PATH, **kwargs)
    assert message in str(e.value)


def test_flow_matching_is_losses_make_loss_exactly():
    module, params = net()

    def apply(p, x, t, cond, rng, **times):
        return module.apply(p, x, t)

    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), ema={})
    key = jax.random.key(3)
    for target in ("velocity", "noise", "data"):
        method = methods.build("flow_matching", path=PATH, target=target, time_sampler="logit_normal")
        got, _ = method.make_loss(apply)(params, state, batch(), key)
        want, _ = losses.make_loss(apply, PATH, target, time_sampler="logit_normal")(params, batch(), key)
        assert float(got) == float(want)


def test_the_loss_sees_the_state_but_differentiates_only_params():
    """A method may regress onto the EMA: the gradient flows through params only."""
    module, params = net()
    ema = jax.tree.map(lambda p: p + 0.1, params)

    def loss(p, state, b, key):
        x = b["x"]
        t = jnp.full((x.shape[0],), 0.5)
        anchor = module.apply(state.ema["ema_0.9"], x, t)
        return jnp.mean((module.apply(p, x, t) - anchor) ** 2), {}

    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), ema={"ema_0.9": ema})
    g = jax.grad(lambda p: loss(p, state, batch(), None)[0])(params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    assert float(loss(ema, dataclasses.replace(state, params=ema), batch(), None)[0]) == 0.0


@pytest.mark.parametrize("name", sorted(set(methods.METHODS) - {"pseudo_huber"}))      # pseudo_huber: no dropout
def test_label_dropout_gives_the_network_the_null_label(name):
    """Every method with label dropout hands the network real labels at rate 0 and only the null label (num_classes)
    at rate 1."""
    cls = methods.METHODS[name]
    x = batch(8)["x"]
    b = {"x": x, "label": jnp.arange(8) % 3} | ({"noise": jnp.zeros_like(x)} if cls.trains_on_pairs else {})
    for rate in (0.0, 1.0):
        method = methods.build(name, path=OWN_PATH.get(name, PATH), num_classes=10, label_dropout=rate,
                               **({"coupling": "given"} if cls.trains_on_pairs else {}),
                               # shortcut drops labels in its flow-matching part only (its documented behaviour)
                               **({"self_consistency_fraction": 0.0} if name == "shortcut" else {}))
        seen = []

        def apply(p, z, t, cond, rng, **times):
            seen.append(np.asarray(cond))
            return jnp.zeros_like(z)

        method.make_loss(apply)({}, TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=(), ema={}),
                                b, jax.random.key(0))
        seen = np.concatenate(seen)            # some methods split the batch over several network calls
        assert len(seen) >= 8 and np.all((seen == 10) == (rate == 1.0)), (name, rate, seen)


def test_pseudo_huber_limits():
    """d = sqrt(‖e‖² + c²) − c: ‖e‖²/(2c) for ‖e‖ ≪ c, ‖e‖ − c for ‖e‖ ≫ c (per example)."""
    module, params = net()
    scale = jnp.asarray(0.0)

    def apply(p, x, t, cond, rng, **times):
        return scale * module.apply(p, x, t)

    key = jax.random.key(1)
    b = batch()
    state = None
    big_c = methods.build("pseudo_huber", path=PATH, c=1e4)
    small_c = methods.build("pseudo_huber", path=PATH, c=1e-6)
    huber_big, aux = big_c.make_loss(apply)(params, state, b, key)     # aux["mse"]: mean over examples and the 2 axes
    np.testing.assert_allclose(float(huber_big), float(aux["mse"]) * 2 / (2 * 1e4), rtol=1e-4)
    huber_small, _ = small_c.make_loss(apply)(params, state, b, key)
    # ‖e‖ per example, e = −target here (the network outputs 0), minus c
    k_couple, k_time, _ = jax.random.split(key, 3)
    noise = jax.random.normal(k_couple, b["x"].shape)
    norms = jnp.linalg.norm(b["x"] - noise, axis=1)          # the velocity target x_data − noise on the linear path
    np.testing.assert_allclose(float(huber_small), float(jnp.mean(norms)) - 1e-6, rtol=1e-5)


def test_extra_time_inputs_add_one_embedding_each_and_leave_the_default_network_unchanged():
    _, plain = net()
    _, with_r = net(extra_times=("r",))
    assert set(with_r["params"]) - set(plain["params"]) == {"r_embed"}
    for name in plain["params"]:
        for a, b in zip(jax.tree.leaves(plain["params"][name]), jax.tree.leaves(with_r["params"][name]), strict=True):
            np.testing.assert_array_equal(a, b)          # same names, same init keys: the same weights
    module = MLP(hidden=16, depth=2, extra_times=("r",))
    x, t = jnp.ones((3, 2)), jnp.full((3,), 0.3)
    a = module.apply(with_r, x, t, times={"r": t})
    b = module.apply(with_r, x, t, times={"r": t * 0.0})
    assert not np.allclose(a, b)                           # r changes the output
    with pytest.raises(ValueError, match="takes the time inputs"):
        module.apply(with_r, x, t)
