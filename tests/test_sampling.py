"""fg.sample: measured NFE, jit equivalence, classifier-free guidance, NFE-independent program size, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgen as fg

GMM = fg.analytic.GaussianMixture.circle()
LINEAR = fg.paths.get("linear")
KEY = jax.random.key(0)


def counting(model):
    """Wrap a model so that every call it really makes (at run time, per batch) is counted on the host."""
    calls = []

    def wrapped(*args):
        jax.debug.callback(lambda: calls.append(1))
        return model(*args)

    return wrapped, calls


# solver -> (options, t_start, expected NFE for n steps on a grid that ends at σ = 0)
EXPECTED_NFE = {
    "euler": ({}, None, lambda n: n),
    "midpoint": ({}, None, lambda n: 2 * n),
    "heun": ({}, None, lambda n: 2 * n),
    "rk4": ({}, None, lambda n: 4 * n),
    "ddim": ({"eta": 0.5}, None, lambda n: n),
    "dpmpp_2m": ({}, None, lambda n: n),
    "dpmpp_3m": ({}, None, lambda n: n),
    "unipc": ({"solver_order": 3}, None, lambda n: n),
    "euler_maruyama": ({}, 1e-2, lambda n: n),
    "pc": ({"corrector_steps": 2}, 1e-2, lambda n: 3 * n),
    "edm_stochastic": ({"s_churn": 5.0}, 1e-2, lambda n: 2 * n - 1),   # EDM: no Heun correction into σ = 0
}


@pytest.mark.parametrize("solver", list(EXPECTED_NFE))
def test_nfe_is_what_the_model_saw(solver):
    options, t_start, expected = EXPECTED_NFE[solver]
    model, calls = counting(GMM.model(LINEAR, "data"))
    n = 7
    x, info = fg.sample(model, LINEAR, target="data", solver=solver, num_steps=n, key=KEY, shape=(16, 2),
                        t_start=t_start, solver_options=options)
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(calls) == expected(n)
    assert int(info["forward_passes"]) == int(info["nfe"])


def test_nfe_of_edm_heun_ending_before_sigma_zero_is_2n():
    path = fg.paths.get("ve")               # σ(1) = 0.01 > 0: every step takes its Heun correction
    model, calls = counting(GMM.model(path, "data"))
    x, info = fg.sample(model, path, target="data", solver="edm_stochastic", num_steps=5, key=KEY, shape=(4, 2))
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(calls) == 10


def test_nfe_of_dopri5_and_of_the_final_denoising_step():
    model, calls = counting(GMM.model(LINEAR, "velocity"))
    x, info = fg.sample(model, LINEAR, solver="dopri5", key=KEY, shape=(32, 2), denoise=True)
    jax.block_until_ready(x)
    assert int(info["nfe"]) == len(calls)
    assert int(info["nfe"]) == 2 + 6 * int(info["num_accepted"] + info["num_rejected"]) + 1


def test_guidance_counts_forward_passes_and_guides_every_channel():
    """guided = uncond + w·(cond − uncond) on every output channel; one batched call of 2B per step."""
    dim = 5

    def model(x, t, labels):
        # A per-channel label effect: every channel of the output depends on the label differently.
        return -x + jnp.outer(labels.astype(x.dtype) + 1.0, jnp.arange(1.0, dim + 1.0)) * (1 - t)[:, None]

    wrapped, calls = counting(model)
    labels = jnp.array([0, 1, 2, 0])
    z = jax.random.normal(KEY, (4, dim))
    w = 2.5
    x, info = fg.sample(wrapped, LINEAR, solver="euler", num_steps=6, noise=z, cond=labels, guidance=w,
                        null_cond=7)
    jax.block_until_ready(x)
    assert len(calls) == int(info["nfe"]) == 6 and int(info["forward_passes"]) == 12

    def guided(x, t, labels):
        c, u = model(x, t, labels), model(x, t, jnp.full_like(labels, 7))
        return u + w * (c - u)

    expected, _ = fg.sample(guided, LINEAR, solver="euler", num_steps=6, noise=z, cond=labels)
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_guidance_weight_one_is_conditional_sampling_and_zero_is_unconditional():
    with jax.enable_x64(True):
        model = GMM.model(LINEAR, "velocity", conditional=True)
        labels = jnp.arange(8) % 8
        z = jax.random.normal(KEY, (8, 2), jnp.float64)
        common = dict(solver="heun", num_steps=20, noise=z, cond=labels, null_cond=8)
        guided1, _ = fg.sample(model, LINEAR, guidance=1.0, **common)
        plain, _ = fg.sample(model, LINEAR, **{k: v for k, v in common.items() if k != "null_cond"})
        np.testing.assert_allclose(guided1, plain, rtol=1e-12)
        guided0, _ = fg.sample(model, LINEAR, guidance=0.0, **common)
        uncond, _ = fg.sample(GMM.model(LINEAR, "velocity"), LINEAR, solver="heun", num_steps=20, noise=z)
        np.testing.assert_allclose(guided0, uncond, rtol=1e-12)
        # Conditional samples land on their own component.
        nearest = np.argmin(((np.asarray(guided1)[:, None] - GMM.means[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(nearest, np.asarray(labels))


def test_params_are_a_traced_argument():
    def model(params, x, t):
        return params["scale"] * x

    z = jnp.ones((3, 2))
    x1, _ = fg.sample(model, LINEAR, solver="euler", num_steps=4, noise=z, params={"scale": jnp.array(1.0)})
    x2, _ = fg.sample(model, LINEAR, solver="euler", num_steps=4, noise=z, params={"scale": jnp.array(-1.0)})
    np.testing.assert_allclose(x1, np.full((3, 2), 1.25**4), rtol=1e-6)    # x ← x + ¼·x, four times
    np.testing.assert_allclose(x2, np.full((3, 2), 0.75**4), rtol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "unipc", "edm_stochastic", "pc", "dopri5"])
def test_sample_under_jit_gives_the_same_result(solver):
    model = GMM.model(LINEAR, "data")
    t_start = 1e-2 if solver in ("pc", "edm_stochastic") else None
    kwargs = dict(target="data", solver=solver, t_start=t_start,
                  num_steps=None if solver == "dopri5" else 8)
    z = jax.random.normal(KEY, (16, 2))
    key = jax.random.key(1)
    eager, info = fg.sample(model, LINEAR, noise=z, key=key, **kwargs)
    jitted, jinfo = jax.jit(lambda z, key: fg.sample(model, LINEAR, noise=z, key=key, **kwargs))(z, key)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    assert int(jinfo["nfe"]) == int(info["nfe"])


def test_a_traced_grid_is_accepted_under_jit():
    model = GMM.model(LINEAR, "velocity")
    z = jax.random.normal(KEY, (8, 2))
    grid = jnp.linspace(0.0, 1.0, 9)
    eager, _ = fg.sample(model, LINEAR, solver="heun", grid=np.asarray(grid), noise=z)
    jitted, _ = jax.jit(lambda g: fg.sample(model, LINEAR, solver="heun", grid=g, noise=z))(grid)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dpmpp_3m", "unipc", "edm_stochastic", "pc"])
def test_program_size_does_not_grow_with_nfe(solver, jaxpr_equations):
    """The sampler is one scan over the grid: its jaxpr has the same equations for 10 and 1000 steps."""
    model = GMM.model(LINEAR, "data")
    t_start = 1e-2 if solver in ("pc", "edm_stochastic") else None

    def size(n):
        fn = lambda z: fg.sample(model, LINEAR, target="data", solver=solver, num_steps=n, noise=z,  # noqa: E731
                                 key=jax.random.key(0), t_start=t_start)[0]
        jaxpr = jax.make_jaxpr(fn)(jnp.zeros((4, 2)))
        return sum(1 for _ in jaxpr_equations(jaxpr.jaxpr))

    assert size(10) == size(1000)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError, naming the bad value and the valid choices, before anything is compiled.
# ---------------------------------------------------------------------------------------------------------------

def never_called(*args):
    raise AssertionError("the model must not be called for invalid input")


BAD = [
    (dict(solver="euler2"), "unknown solver 'euler2'; valid solvers: euler, midpoint"),
    (dict(target="eps"), "unknown prediction target 'eps'"),
    (dict(grid="cosine"), "unknown grid 'cosine'; valid grids: uniform, logsnr, edm"),
    (dict(grid=np.array([0.0, 0.5, 0.4, 1.0]), num_steps=None), "strictly increasing"),
    (dict(grid=np.array([-0.1, 0.5, 1.0]), num_steps=None), r"must lie in \[0, 1\]"),
    (dict(grid=np.array([0.5]), num_steps=None), "at least 2 times"),
    (dict(num_steps=0), "num_steps must be an integer >= 1; got 0"),
    (dict(num_steps=2.5), "num_steps must be an integer >= 1; got 2.5"),
    (dict(solver="dopri5", solver_options=dict(rtol=float("nan")), num_steps=None), "rtol must be a finite"),
    (dict(solver="ddim", solver_options=dict(eta=2.0)), "eta must be in"),
    (dict(solver="pc", solver_options=dict(snr=-1.0)), "snr must be"),
    (dict(solver="euler", solver_options=dict(order=3)), r"unknown options \['order'\] for solver 'euler'"),
    (dict(path="vp"), "unknown path 'vp'; valid paths"),
    (dict(solver="euler_maruyama"), "stochastic: pass key"),
    (dict(target="noise"), "does not determine x_data where α"),
    (dict(solver="euler_maruyama", key=KEY), "diffusion w.t. is not finite"),
    (dict(solver="edm_stochastic", grid="uniform"), "needs α.t. > 0"),
    (dict(guidance=2.0), "needs cond"),
    (dict(grid=np.linspace(0, 1, 5), t_start=0.1, num_steps=None), "t_start/t_end apply to named grids only"),
    (dict(shape=(3, 2)), "disagrees with noise"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_input_is_refused_before_compilation(kwargs, message):
    args = dict(path=LINEAR, target="velocity", solver="euler", num_steps=4, noise=jnp.ones((4, 2)))
    args.update(kwargs)
    args = {k: v for k, v in args.items() if v is not None or k in ("target",)}
    path = args.pop("path")
    with pytest.raises(ValueError, match=message):
        fg.sample(never_called, path, **args)


def test_model_output_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"shaped like x_t \(4, 2\); it returned \(4, 3\)"):
        fg.sample(lambda x, t: jnp.ones((4, 3)), LINEAR, num_steps=2, noise=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="calling the model on x_t of shape"):
        fg.sample(lambda x, t: x @ jnp.ones((3, 3)), LINEAR, num_steps=2, noise=jnp.ones((4, 2)))


def test_score_target_refuses_a_grid_ending_at_sigma_zero_with_heun():
    with pytest.raises(ValueError, match="score is infinite where σ"):
        fg.sample(never_called, LINEAR, target="score", solver="heun", num_steps=3, t_start=0.1,
                  noise=jnp.ones((2, 2)))


# ---------------------------------------------------------------------------------------------------------------
# Low-precision state: times and coefficients stay float32 whatever the noise's dtype.
# ---------------------------------------------------------------------------------------------------------------

LOW_PRECISION = [
    ("heun", "vp_linear", "noise", {}),
    ("euler", "linear", "velocity", {}),
    ("dpmpp_2m", "vp_linear", "noise", {}),
    ("unipc", "vp_cosine", "noise", {}),
    ("edm_stochastic", "ve", "data", {}),
    ("dopri5", "vp_linear", "noise", {"rtol": 1e-3, "atol": 1e-3}),
]


@pytest.mark.parametrize("dtype,solver,path_name,target,options",
                         [("bfloat16", *case) for case in LOW_PRECISION]
                         + [("float16", *case) for case in LOW_PRECISION if case[0] in ("heun", "edm_stochastic")])
def test_low_precision_noise_gives_finite_samples_close_to_float32(solver, path_name, target, options, dtype):
    """A bfloat16 state once cast the grid to bfloat16: t_max = 0.999 became 1.0, where VP's σ = 0 (NaN samples).

    The model computes in float32 whatever x_t's dtype (as a network with float32 parameters does), so the only
    difference from the float32 run from the same noise is the state's own rounding."""
    path = fg.paths.get(path_name)
    exact = GMM.model(path, target)
    model = lambda x, t: exact(x.astype(jnp.float32), t)    # noqa: E731
    z = jax.random.normal(KEY, (256, 2), jnp.float32).astype(dtype)
    kwargs = dict(target=target, solver=solver, num_steps=None if solver == "dopri5" else 16,
                  solver_options=options)
    ref, _ = fg.sample(model, path, noise=z.astype(jnp.float32), **kwargs)
    low, info = fg.sample(model, path, noise=z, **kwargs)
    assert low.dtype == jnp.dtype(dtype) and info["grid"].dtype == jnp.float32
    assert float(info["grid"][-1]) == np.float32(path.t_max)
    err = np.abs(np.asarray(low.astype(jnp.float32)) - np.asarray(ref))
    assert np.all(np.isfinite(err))
    # Measured: bfloat16 rms 0.013-0.024, max <= 0.28; float16 rms <= 0.0045, max <= 0.034 (|x| up to about 5,
    # where bfloat16's spacing is 0.03 and float16's 0.004).
    rms_tol, max_tol = (0.05, 0.5) if dtype == "bfloat16" else (0.01, 0.1)
    assert np.sqrt(np.mean(err**2)) < rms_tol and err.max() < max_tol, (np.sqrt(np.mean(err**2)), err.max())


# ---------------------------------------------------------------------------------------------------------------
# Guidance: one convention (uncond + w·(cond − uncond)), and a weight that may be traced.
# ---------------------------------------------------------------------------------------------------------------

def test_guidance_weights_sweep_in_one_compiled_program():
    model = GMM.model(LINEAR, "velocity", conditional=True)
    labels = jnp.arange(8) % 8
    z = jax.random.normal(KEY, (8, 2))
    common = dict(solver="heun", num_steps=8, noise=z, cond=labels, null_cond=8)
    traces = []

    @jax.jit
    def run(w):
        traces.append(w)
        return fg.sample(model, LINEAR, guidance=w, **common)[0]

    weights = [0.0, 1.0, 2.5]
    jitted = [run(jnp.float32(w)) for w in weights]
    assert len(traces) == 1                                   # one trace, one compile, three weights
    swept = jax.vmap(run)(jnp.asarray(weights, jnp.float32))
    for w, x, xv in zip(weights, jitted, swept, strict=True):
        eager, _ = fg.sample(model, LINEAR, guidance=w, **common)
        np.testing.assert_allclose(x, eager, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(xv, eager, rtol=1e-5, atol=1e-5)
    assert not np.allclose(jitted[0], jitted[2])


@pytest.mark.parametrize("bad", [np.ones(2), "2", True])
def test_guidance_must_be_a_scalar_number(bad):
    with pytest.raises(ValueError, match="guidance must be a scalar weight"):
        fg.sample(never_called, LINEAR, num_steps=2, noise=jnp.ones((2, 2)), cond=jnp.zeros(2, jnp.int32),
                  null_cond=1, guidance=bad)


def test_training_config_uses_the_same_guidance_convention():
    """``config.sample.guidance``: None (default) samples the conditional model unguided, and a weight w means
    what ``fg.sample(guidance=w)`` means: w = 1 the conditional model, w = 0 the unconditional one."""
    import dataclasses
    from types import SimpleNamespace

    from flowgen.train.config import base_config
    from flowgen.train.run import Run

    with jax.enable_x64(True):
        model = GMM.model(LINEAR, "velocity", conditional=True)

        def draw(guidance):
            config = base_config()
            config.sample.ema, config.sample.num_steps, config.loss.target = "params", 8, "velocity"
            config.model.num_classes = 8
            config.sample.guidance = guidance
            run = dataclasses.replace(Run.from_config(config), sample_apply=lambda p, x, t, c: model(x, t, c))
            state = SimpleNamespace(params=jnp.zeros(()), ema={})
            x, _ = run.draw_samples(state, KEY, 16)
            return x

        assert base_config().sample.guidance is None
        conditional, w1, w0 = draw(None), draw(1.0), draw(0.0)
        np.testing.assert_allclose(w1, conditional, rtol=1e-5, atol=1e-5)     # draw_samples draws float32 noise
        config = base_config()
        noise = jax.random.normal(jax.random.split(KEY)[0], (16, 2), jnp.float32)   # as Run.draw_samples draws it
        unconditional, _ = fg.sample(GMM.model(LINEAR, "velocity"), LINEAR, solver=config.sample.solver, num_steps=8,
                                     grid=config.sample.grid, key=KEY, noise=noise)
        np.testing.assert_allclose(w0, unconditional, rtol=1e-5, atol=1e-5)
        assert not np.allclose(conditional, unconditional)


# ---------------------------------------------------------------------------------------------------------------
# dopri5 never returns an unfinished integration as samples.
# ---------------------------------------------------------------------------------------------------------------

def test_dopri5_out_of_steps_raises_eagerly_and_is_nan_under_jit():
    model = GMM.model(LINEAR, "velocity")
    z = jax.random.normal(KEY, (16, 2))
    options = dict(max_steps=5)
    with pytest.raises(RuntimeError, match=r"dopri5 stopped at t=0\.\d+ before the end t=1: max_steps=5"):
        fg.sample(model, LINEAR, solver="dopri5", noise=z, solver_options=options)
    x, info = jax.jit(lambda z: fg.sample(model, LINEAR, solver="dopri5", noise=z, solver_options=options))(z)
    assert 0 < float(info["t_final"]) < 1 and np.all(np.isnan(x))
    x, info = fg.sample(model, LINEAR, solver="dopri5", noise=z)         # enough steps: finite, at the end
    assert float(info["t_final"]) == 1.0 and np.all(np.isfinite(x)) and int(info["num_failed_rows"]) == 0


@pytest.mark.parametrize("from_t", [-1.0, 0.5])
def test_dopri5_row_gone_non_finite_is_nan_and_the_others_are_unaffected(from_t):
    """A row whose model output turns NaN (from t > from_t) comes back NaN; the error norm leaves it out, so the other
    rows finish, and exactly as without it when it was never finite."""
    with jax.enable_x64(True):
        exact = GMM.model(LINEAR, "velocity")

        def model(x, t):
            v = exact(x, t)
            return v.at[0].set(jnp.where(t[0] > from_t, jnp.nan, v[0]))

        z = jax.random.normal(KEY, (16, 2), jnp.float64)
        x, info = fg.sample(model, LINEAR, solver="dopri5", noise=z)
        rest, _ = fg.sample(exact, LINEAR, solver="dopri5", noise=z[1:])
        assert np.all(np.isnan(x[0])) and int(info["num_failed_rows"]) == 1 and float(info["t_final"]) == 1.0
        # rtol = atol = 1e-5 solves: the same result to the tolerance, or to round-off when the step sizes agree.
        tol = 1e-10 if from_t < 0 else 1e-4
        np.testing.assert_allclose(x[1:], rest, rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------------------------
# First-call cost does not grow with the number of steps.
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver,path_name,target", [("heun", "linear", "velocity"), ("dpmpp_2m", "vp_linear", "noise"),
                                                     ("euler_maruyama", "vp_linear", "noise")])
def test_a_new_grid_length_costs_no_compilation_but_the_sampler(solver, path_name, target):
    """Host-side grid work once compiled eager ops again for every new grid size (a 1000-step grid cost about a
    second more than a 10-step one). Now a first call at any length compiles the sampler program and nothing else."""
    path = fg.paths.get(path_name)
    z = jax.random.normal(KEY, (4, 2))
    key = jax.random.key(3)

    def compiles(num_steps):
        model = lambda x, t: -x        # noqa: E731   a new function: the sampler's jit cache misses
        names = []

        def listen(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                names.append(str(kwargs.get("fun_name")))

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            jax.block_until_ready(fg.sample(model, path, target=target, solver=solver, num_steps=num_steps, noise=z,
                                            key=key))
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        return names

    compiles(10)                                           # first use of the host-side ops in this process
    assert compiles(11) == compiles(1000) == compiles(3000) == ["jit(_sample_jit)"]
