"""The ImageNet-256 latent recipes (configs/imagenet256_{dit,sit,meanflow}.py): their networks' parameter counts,
exactly, against the DiT code's DiT-XL/2 count, and ``sample.solver_options``, which their samplers need (DDPM's
ancestral η = 1, SiT's w(t) = σ(t)). Counting is abstract (``jax.eval_shape``): nothing of 675M is allocated."""

import jax
import numpy as np
import pytest

from flowgen.methods import METHODS
from flowgen.networks.dit import DIT_PRESETS, dit_param_count
from flowgen.train import config as config_lib
from flowgen.train.model import build_network
from flowgen.train.run import Run
from flowgen.train.sample_mode import sample_stem

DIT_CODE_XL2 = 675_129_632    # "DiT Parameters: 675,129,632", printed by the DiT code for DiT-XL/2 at 256×256
pytestmark = pytest.mark.usefixtures("fast_compiles")   # tests/conftest.py: XLA optimisations off, quicker compiles


def recipe(name: str, variant: str = ""):
    return config_lib.load_config_module(__file__ + "/../../configs/x.py", name).get_config(variant)


def abstract_params(config):
    """The parameter tree (shapes only) of a recipe's network on its declared latent shape."""
    extra = METHODS[config.method.name].extra_times
    net = build_network(config.model, config.model.num_classes, extra)
    x = np.zeros((1, *config.data.kwargs["shape"]), np.float32)
    t, y = np.zeros((1,), np.float32), np.zeros((1,), np.int32)
    times = {"times": {name: t for name in extra}} if extra else {}
    return jax.eval_shape(lambda key: net.init(key, x, t, y, **times), jax.random.key(0))["params"]


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["imagenet256_dit", "imagenet256_sit"])
def test_dit_xl2_count_and_its_difference_from_the_dit_code(name):
    config = recipe(name)
    assert config.model.kwargs.to_dict() == DIT_PRESETS["XL/2"] and tuple(config.data.kwargs["shape"]) == (32, 32, 4)
    params = abstract_params(config)
    ours = count(params)
    assert ours == dit_param_count(1152, 28, 2, 4, 1000) == 674_816_272
    # The DiT code's count = ours + the 4 extra output channels (learn_sigma) of the final linear layer, per
    # patch pixel, weights and biases + its frozen positional embedding (a parameter there, a constant here).
    kernel, bias = params["final_layer"]["linear"]["kernel"].shape, params["final_layer"]["linear"]["bias"].shape
    assert kernel == (1152, 2 * 2 * 4) and bias == (2 * 2 * 4,)
    extra_channels = kernel[0] * (2 * 2 * 4) + 2 * 2 * 4            # a second (1152, 16) kernel and (16,) bias
    pos_embed = (32 // 2) * (32 // 2) * 1152                         # 256 tokens × 1152
    assert (extra_channels, pos_embed) == (18_448, 294_912)
    assert ours + extra_channels + pos_embed == DIT_CODE_XL2


def test_meanflow_xl2_adds_one_timestep_embedder():
    config = recipe("imagenet256_meanflow")
    params = abstract_params(config)
    assert set(params) - set(abstract_params(recipe("imagenet256_dit"))) == {"h_embedder"}
    assert count(params["h_embedder"]) == 1152 * 256 + 1152 + 1152 * 1152 + 1152 == 1_624_320
    assert count(params) == 674_816_272 + 1_624_320 == 676_440_592


def test_recipes_declare_the_papers_sampling():
    dit, sit, mf = (recipe(n) for n in ("imagenet256_dit", "imagenet256_sit", "imagenet256_meanflow"))
    assert (dit.sample.solver, dit.sample.solver_options.to_dict(), dit.sample.num_steps, dit.sample.guidance) == \
        ("ddim", {"eta": 1.0}, 250, 1.5)
    assert (sit.sample.solver, sit.sample.solver_options["diffusion"], sit.sample.num_steps, sit.sample.guidance) == \
        ("euler_maruyama", "sigma", 250, 1.5)
    assert (mf.sample.solver, mf.sample.num_steps, mf.sample.guidance) == ("meanflow", 1, None)
    assert mf.train.num_steps == 240 * 1_281_167 // 256
    for c in (dit, sit, mf):
        assert (c.data.batch_size, c.optim.lr, c.optim.weight_decay, c.ema.decays, c.loss.label_dropout) == \
            (256, 1e-4, 0.0, (0.9999,), 0.1)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match=r"unknown variant 'tiny'; valid: '', 'small'"):
        recipe("imagenet256_sit", "tiny")


@pytest.mark.parametrize("solver, options, match", [
    ("ddim", {"eta": 2.0}, r"sample.solver_options=\{'eta': 2.0\} for sample.solver='ddim': .*eta must be in \[0, 1\]"),
    ("ddim", {"etta": 1.0}, r"sample.solver_options=\{'etta': 1.0\} for sample.solver='ddim'.*etta"),
    ("euler_maruyama", {"diffusion": "sgima"}, r"unknown diffusion 'sgima'; valid: zero, path, constant, sigma"),
])
def test_bad_solver_options_are_refused(solver, options, match):
    config = recipe("imagenet256_dit", "small")
    config.sample.solver, config.sample.solver_options = solver, options
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_a_method_sampler_takes_no_solver_options():
    config = recipe("imagenet256_meanflow", "small")
    config.sample.solver_options = {"eta": 1.0}
    with pytest.raises(ValueError, match=r"sample.solver='meanflow' is the method's own sampler and takes no options"):
        config_lib.validate(config)


def test_solver_options_reach_the_sampler_and_name_the_samples():
    """SiT's sampler on the linear path needs its option: without it Euler–Maruyama uses the path's own g², which is
    infinite at t = 0 (α = 0) and is refused; with ``diffusion = "sigma"`` it draws finite samples."""
    config = recipe("imagenet256_sit", "small")
    config.sample.num_steps = 2
    run = Run.from_config(config)
    state = run.init_state()
    x, nfe = run.draw_samples(state, jax.random.key(0), 4)
    assert x.shape == (4, 8, 8, 4) and np.isfinite(x).all() and nfe == 2
    assert "_euler_maruyama_diffusion-sigma_diffusion_scale-1.0_2steps_" in sample_stem(config, 2, nfe)
    config.sample.solver_options = {}
    config_lib.validate(config)
    with pytest.raises(ValueError, match="not finite"):
        Run.from_config(config).draw_samples(state, jax.random.key(0), 4)
    assert "_euler_maruyama_2steps_" in sample_stem(config, 2, nfe)


def test_configs_saved_before_solver_options_upgrade_to_none():
    saved = recipe("imagenet256_dit", "small")
    del saved.sample["solver_options"]
    assert config_lib.solver_options(saved) == {}
    assert config_lib.upgrade(saved).sample.solver_options.to_dict() == {}
