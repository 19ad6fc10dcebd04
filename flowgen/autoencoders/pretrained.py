"""Load a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) into Flax.

    vae = flowgen.autoencoders.from_pretrained(folder)      # or a known name, e.g. "sd-vae-ft-mse"
    mean, std = vae.encode(x)       # x (B, H, W, 3) float32 in [−1, 1] → each (B, H/8, W/8, Z), unscaled
    y = vae.decode(z)               # z (B, h, w, Z) unscaled → (B, 8h, 8w, 3), about [−1, 1]

``mean``/``std`` are diffusers' ``latent_dist.mean``/``.std`` and ``y`` its ``decode(z).sample``, channels last.
Latents are unscaled: models train on ``(z − shift_factor)·scaling_factor`` (:meth:`Autoencoder.scale_latents`),
which the latent data source and the sampler apply from the folder's config (SD 1.x/2.x: scale 0.18215, no shift;
SD3: 1.5305 and 0.0609; FLUX.1: 0.3611 and 0.1159).

flowgen never downloads weights. A missing folder raises ``FileNotFoundError`` at once with the command that fetches
the weights and where to put them; :data:`KNOWN` names resolve to ``<cache>/autoencoders/<name>[/<subfolder>]``,
``<cache>`` being ``$FLOWGEN_CACHE`` or ``~/.cache/flowgen`` (as for the FID weights).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowgen.autoencoders import convert
from flowgen.autoencoders.config import AutoencoderConfig, config_from_dict, read_config
from flowgen.autoencoders.kl import KLAutoencoder
from flowgen.evals.inception_weights import cache_dir

WEIGHTS = "diffusion_pytorch_model.safetensors"
# name → (Hugging Face repository, subfolder, what it is)
KNOWN = {
    "sd-vae-ft-mse": ("stabilityai/sd-vae-ft-mse", None, "SD 1.x/2.x autoencoder, MSE-finetuned decoder, 4 channels"),
    "sd-vae-ft-ema": ("stabilityai/sd-vae-ft-ema", None, "SD 1.x/2.x autoencoder, EMA-finetuned decoder, 4 channels"),
    "sd3-medium": ("stabilityai/stable-diffusion-3-medium-diffusers", "vae",
                   "SD3 autoencoder, 16 channels (gated: accept the licence on its model page first)"),
}


def known_folder(name: str) -> Path:
    """Where :func:`from_pretrained` looks for a :data:`KNOWN` autoencoder."""
    repo, sub, _ = KNOWN[name]
    folder = cache_dir() / "autoencoders" / name
    return folder / sub if sub else folder


def fetch_instructions(target: Path | None = None) -> str:
    """How to fetch the published autoencoders by hand (flowgen downloads nothing)."""
    lines = ["flowgen does not download weights. On a machine with internet access run (huggingface_hub's CLI; "
             "`huggingface-cli download` in older versions):"]
    for name, (repo, sub, what) in KNOWN.items():
        include = f" --include '{sub}/*'" if sub else ""
        lines.append(f"  hf download {repo}{include} --local-dir {cache_dir() / 'autoencoders' / name}"
                     f"    # {what}")
    lines.append("and copy the folder to this machine; then pass its path (for the SD3 repository, its vae/ "
                 "subfolder) or the name (" + ", ".join(KNOWN) + f") to from_pretrained. A folder must hold "
                 f"config.json and {WEIGHTS}" + (f"; expected here: {target}" if target else "") + ".")
    return "\n".join(lines)


class Autoencoder:
    """A KL autoencoder with its weights: jitted :meth:`encode` / :meth:`decode` on channels-last float arrays.

    ``config`` (:class:`AutoencoderConfig`), ``module`` (:class:`KLAutoencoder`) and ``params`` (``{"params": …}``)
    are public, for use inside other jitted code: ``module.apply(params, x, method="encode")``.
    """

    def __init__(self, config: AutoencoderConfig, params, dtype=jnp.float32, folder: Path | None = None):
        self.config, self.folder = config, folder
        self.module = KLAutoencoder(config, dtype=dtype)
        self.params = jax.device_put(params)
        self._encode = jax.jit(functools.partial(self.module.apply, method="encode"))
        self._decode = jax.jit(functools.partial(self.module.apply, method="decode"))

    scaling_factor = property(lambda self: self.config.scaling_factor)
    shift_factor = property(lambda self: self.config.shift_factor, doc="None (SD 1.x/2.x) or the shift (SD3, FLUX)")
    latent_channels = property(lambda self: self.config.latent_channels)
    downsampling_factor = property(lambda self: self.config.downsampling_factor)

    @staticmethod
    def _float(x, what):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"{what} must be floating point ({what} in [−1, 1] for images), got {jnp.result_type(x)}")
        return jnp.asarray(x, jnp.float32)

    def encode(self, x) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, in_channels) images in [−1, 1] → (mean, std), each (B, H/f, W/f, Z) float32, unscaled."""
        return self._encode(self.params, self._float(x, "images"))

    def decode(self, z) -> jax.Array:
        """(B, h, w, Z) unscaled latents → (B, h·f, w·f, out_channels) float32 images (about [−1, 1])."""
        return self._decode(self.params, self._float(z, "latents"))

    def scale_latents(self, z):
        """Unscaled latents → the model's space: (z − shift_factor)·scaling_factor."""
        return (z - (self.shift_factor or 0.0)) * self.scaling_factor

    def unscale_latents(self, z_scaled):
        """Inverse of :meth:`scale_latents`: z_scaled / scaling_factor + shift_factor."""
        return z_scaled / self.scaling_factor + (self.shift_factor or 0.0)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self.params))


def abstract_params(config: AutoencoderConfig | dict, dtype=jnp.float32):
    """The parameter tree's shapes (``jax.ShapeDtypeStruct``), with no allocation and no compilation."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    f, c = config.downsampling_factor, config.in_channels
    x = jax.ShapeDtypeStruct((1, f, f, c), jnp.float32)
    return jax.eval_shape(KLAutoencoder(config, dtype=dtype).init, jax.random.key(0), x)


def param_count(config: AutoencoderConfig | dict) -> int:
    """Number of parameters of the configured autoencoder (from :func:`abstract_params`)."""
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract_params(config)))


def from_pretrained(folder, dtype=jnp.float32, variant: str | None = None) -> Autoencoder:
    """Load a diffusers ``AutoencoderKL`` folder (or a :data:`KNOWN` name) as an :class:`Autoencoder`.

    ``dtype``: compute dtype (parameters stay float32). ``variant``: read ``diffusion_pytorch_model.<variant>
    .safetensors`` (e.g. ``"fp16"``), as diffusers' ``variant=``. Raises ``FileNotFoundError`` (with fetch
    instructions) when the folder or a file is missing and ``ValueError`` when config and weights do not match.
    """
    if isinstance(folder, str) and folder in KNOWN and not Path(folder).exists():
        folder = known_folder(folder)
    folder = Path(folder).expanduser()
    weights = folder / (WEIGHTS if variant is None else WEIGHTS.replace(".safetensors", f".{variant}.safetensors"))
    missing = [p.name for p in (folder / "config.json", weights) if not p.is_file()]
    if not folder.is_dir() or missing:
        what = "no such folder" if not folder.is_dir() else f"it has no {' and no '.join(missing)}"
        hint = ""
        if folder.is_dir() and weights.name in missing:
            others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
            if others:
                hint = (f" (it has {', '.join(others)}: flowgen reads only .safetensors; pass variant= for e.g. "
                        "the .fp16.safetensors file)")
        raise FileNotFoundError(f"no diffusers AutoencoderKL at {folder}: {what}{hint}.\n"
                                + fetch_instructions(folder))
    config = read_config(folder)
    params = convert.load_safetensors(weights, abstract_params(config, dtype))
    return Autoencoder(config, params, dtype=dtype, folder=folder)
