"""Paired data sets: (x_data, x₀) pairs stored together, for training with the coupling ``given`` (e.g. reflow's
pairs of Liu et al. 2023, drawn by integrating a trained model from x₀ to x_data).

A pairs file is a ``.npz`` (what ``np.load`` reads) with arrays ``x_data`` (N, ...) and ``noise`` (N, ...) of one
shape, optionally ``label`` (N,) integers, and the provenance as 0-d strings ``meta_<key>``. ``PairsWriter`` and
``write_pairs`` write it as an uncompressed ZIP64 whose arrays start at 64-byte aligned offsets, so ``open_pairs``
memory-maps them (``np.memmap``; ``np.load(mmap_mode=...)`` does not map ``.npz`` members): Liu et al.'s 4M CIFAR-10
pairs (4M × 2 × 3072 float32 = 98 GB) open in milliseconds and a batch reads only its rows. Files of ``np.savez``
(also uncompressed) map as well; ``np.savez_compressed`` ones are read whole by ``load_pairs`` only.

A file is never replaced: it is written under a temporary name, then hard-linked to its name, which fails if the name
exists (``FileExistsError``).
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zipfile
import zlib

import numpy as np

#: The array members of a pairs file, in file order.
ARRAYS = ("x_data", "noise", "label")
_ALIGN = 64
_BLOCK = 1 << 23                 # bytes per read when computing CRCs
_DOS_DATE = (0 << 9) | (1 << 5) | 1   # 1980-01-01: fixed, so equal contents give equal bytes
_LOCAL = struct.Struct("<IHHHHHIIIHH")            # local file header (30 bytes) ...
_LOCAL_EXTRA = struct.Struct("<HHQQ")             # ... and its ZIP64 extra: uncompressed, compressed size
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")    # central directory header (46 bytes) ...
_CENTRAL_EXTRA = struct.Struct("<HHQQQ")          # ... and its ZIP64 extra: sizes and the local header's offset
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_MAX32 = 0xFFFFFFFF


def _npy_header(dtype, shape, start: int) -> bytes:
    """A .npy (version 1.0) header for C-ordered ``dtype`` ``shape`` whose data begins 64-byte aligned when the
    header is written at file offset ``start``."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, 'fortran_order': False, " \
           f"'shape': {tuple(int(n) for n in shape)!r}, }}"
    size = 10 + len(text) + 1
    text += " " * (-(start + size) % _ALIGN) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _Member:
    """One stored ZIP member: its local header at ``offset``, then ``size`` bytes of a .npy file."""

    def __init__(self, name: str, offset: int, payload_size: int | None = None, header: bytes = b""):
        self.name, self.offset = f"{name}.npy", offset
        self.content = offset + _LOCAL.size + len(self.name) + _LOCAL_EXTRA.size   # where the .npy starts
        self.header = header
        self.size = len(header) + (payload_size or 0)
        self.crc = 0

    @property
    def end(self) -> int:
        return self.content + self.size

    def local_header(self) -> bytes:
        return (_LOCAL.pack(0x04034B50, 45, 0, 0, 0, _DOS_DATE, self.crc, _MAX32, _MAX32, len(self.name),
                            _LOCAL_EXTRA.size) + self.name.encode() + _LOCAL_EXTRA.pack(1, 16, self.size, self.size))

    def central_header(self) -> bytes:
        return (_CENTRAL.pack(0x02014B50, 45, 45, 0, 0, 0, _DOS_DATE, self.crc, _MAX32, _MAX32, len(self.name),
                              _CENTRAL_EXTRA.size, 0, 0, 0, 0, _MAX32) + self.name.encode()
                + _CENTRAL_EXTRA.pack(1, 24, self.size, self.size, self.offset))


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class PairsWriter:
    """A pairs file of ``num_pairs`` pairs of ``element_shape`` (float32; int32 labels if ``labelled``) written in
    place, rows in any order, then published once.

    The arrays' places are fixed at creation: ``tmp`` is created with every .npy header written and the array space
    allocated (``posix_fallocate``: a full disk fails at once, not after hours of solving). ``write(start, x_data,
    noise, label)`` puts rows [start, start + n) in place; ``sync()`` makes them durable. ``finish(file,
    **provenance)`` computes the CRC-32 of each member, appends the provenance and the ZIP's central directory and
    links ``tmp`` to ``file`` (FileExistsError if ``file`` exists). With ``resume``, an existing ``tmp`` of the same
    layout is reopened with its rows kept (``flowgen.reflow`` resumes a killed run this way); another layout is
    refused. The file's bytes depend only on the rows and the provenance, not on the order they were written in."""

    def __init__(self, tmp: str, num_pairs: int, element_shape, labelled: bool = False, *, resume: bool = False):
        self.tmp, self.num_pairs = tmp, int(num_pairs)
        self.element_shape = tuple(int(n) for n in element_shape)
        self.labelled = bool(labelled)
        self.row_bytes = 4 * int(np.prod(self.element_shape, dtype=np.int64))
        self.members: dict[str, _Member] = {}
        offset = 0
        for name in ARRAYS[: 3 if labelled else 2]:
            dtype, shape = (np.int32, (self.num_pairs,)) if name == "label" else (
                np.float32, (self.num_pairs, *self.element_shape))
            member = _Member(name, offset)
            member.header = _npy_header(dtype, shape, member.content)
            member.size = len(member.header) + 4 * int(np.prod(shape, dtype=np.int64))
            self.members[name] = member
            offset = member.end
        self.end = offset
        if resume and os.path.exists(tmp):
            self._fd = os.open(tmp, os.O_RDWR)
            if not self._same_layout():
                os.close(self._fd)
                raise FileExistsError(f"{tmp} holds pairs of another layout (not {self.num_pairs} pairs of "
                                      f"{self.element_shape}{' with labels' if labelled else ''}); move it away")
            return
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._allocate()
            for m in self.members.values():
                _pwrite_all(self._fd, m.local_header() + m.header, m.offset)
        except BaseException:
            os.close(self._fd)
            os.unlink(tmp)
            raise

    def _allocate(self) -> None:
        try:
            os.posix_fallocate(self._fd, 0, self.end)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space for {self.end / 2**30:.2f} GiB of pairs", self.tmp) from None
            os.ftruncate(self._fd, self.end)             # a file system without fallocate: a sparse file
        except AttributeError:                           # no posix_fallocate on this platform
            os.ftruncate(self._fd, self.end)

    def _same_layout(self) -> bool:
        if os.fstat(self._fd).st_size < self.end:
            return False
        return all(os.pread(self._fd, m.content - m.offset + len(m.header), m.offset)[-len(m.header):]
                   == m.header for m in self.members.values())

    def write(self, start: int, x_data, noise, label=None) -> None:
        """Rows [start, start + n) of the arrays (x_data, noise: (n, *element_shape); label: (n,))."""
        x_data = np.ascontiguousarray(x_data, np.float32)
        noise = np.ascontiguousarray(noise, np.float32)
        n = len(x_data)
        if x_data.shape != (n, *self.element_shape) or noise.shape != x_data.shape:
            raise ValueError(f"x_data {x_data.shape} and noise {noise.shape}: expected (n, {self.element_shape})")
        if not 0 <= start <= start + n <= self.num_pairs:
            raise ValueError(f"rows [{start}, {start + n}) are outside [0, {self.num_pairs})")
        if (label is None) == self.labelled:
            raise ValueError(f"label {'missing' if label is None else 'given'}: this file has "
                             f"{'labels' if self.labelled else 'no labels'}")
        arrays = {"x_data": x_data, "noise": noise}
        if label is not None:
            arrays["label"] = np.ascontiguousarray(label, np.int32).reshape(n)
        for name, a in arrays.items():
            m = self.members[name]
            _pwrite_all(self._fd, a, m.content + len(m.header) + start * a[:1].nbytes)

    def sync(self) -> None:
        os.fsync(self._fd)

    def _crc(self, m: _Member) -> int:
        crc, position, stop = 0, m.content, m.end
        while position < stop:
            block = os.pread(self._fd, min(_BLOCK, stop - position), position)
            if not block:
                raise OSError(f"{self.tmp} is shorter than its layout")
            crc, position = zlib.crc32(block, crc), position + len(block)
        return crc

    def finish(self, file: str, **provenance) -> None:
        """Complete the ZIP (CRCs, provenance as ``meta_<key>``, central directory) and publish it as ``file``,
        exclusively; ``tmp`` is gone afterwards. Idempotent up to the publication (a killed finish is redone)."""
        for m in self.members.values():
            m.crc = self._crc(m)
            _pwrite_all(self._fd, m.local_header(), m.offset)
        os.ftruncate(self._fd, self.end)
        members, tail, offset = list(self.members.values()), bytearray(), self.end
        for key, value in provenance.items():
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(str(value)))
            meta = _Member(f"meta_{key}", offset, header=buffer.getvalue())
            meta.crc = zlib.crc32(meta.header)
            tail += meta.local_header() + meta.header
            members.append(meta)
            offset = meta.end
        directory = b"".join(m.central_header() for m in members)
        end64 = offset + len(directory)
        tail += directory
        tail += _END64.pack(0x06064B50, _END64.size - 12, 45, 45, 0, 0, len(members), len(members), len(directory),
                            offset, )
        tail += _LOCATOR64.pack(0x07064B50, 0, end64, 1)
        tail += _END.pack(0x06054B50, 0, 0, min(len(members), 0xFFFF), min(len(members), 0xFFFF), _MAX32, _MAX32, 0)
        _pwrite_all(self._fd, bytes(tail), self.end)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        _publish(self.tmp, file)

    def close(self) -> None:
        """Close without publishing (``tmp`` stays, for a resume)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _publish(tmp: str, file: str) -> None:
    """Give ``tmp`` the name ``file`` unless ``file`` exists (then FileExistsError; nothing is replaced)."""
    try:
        os.link(tmp, file)
    except FileExistsError:
        raise FileExistsError(f"{file} exists: a pairs file is never replaced; the new one stays in {tmp}") from None
    except OSError:                  # no hard links here: reserve the name exclusively, then move onto our own name
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.replace(tmp, file)
        return
    os.unlink(tmp)


def write_pairs(file: str, x_data, noise, label=None, **provenance) -> None:
    """Write a pairs file of these arrays (exclusive creation: an existing file is never replaced). ``provenance``
    (teacher, solver, NFE, seeds, ...) is stored beside the arrays as 0-d string arrays under ``meta_<key>``."""
    x_data = np.asarray(x_data, np.float32)
    if os.path.exists(file):
        raise FileExistsError(f"{file} exists: a pairs file is never replaced")
    directory, name = os.path.split(os.path.abspath(file))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    writer = PairsWriter(tmp, len(x_data), x_data.shape[1:], label is not None)
    try:
        writer.write(0, x_data, noise, label)
        writer.finish(file, **provenance)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _headers(file: str) -> dict[str, tuple[tuple[int, ...], np.dtype, int | None]]:
    """``{name: (shape, dtype, data offset or None)}`` of the arrays of a pairs file, from the headers only; the
    offset is where the array's bytes start in the file (None for a compressed or Fortran-ordered member)."""
    out = {}
    with zipfile.ZipFile(file) as z, open(file, "rb") as raw:
        for info in z.infolist():
            name = info.filename.removesuffix(".npy")
            if name not in ARRAYS:
                continue
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                header_size = f.tell() if hasattr(f, "tell") else None
            offset = None
            if info.compress_type == zipfile.ZIP_STORED and not fortran and header_size is not None:
                raw.seek(info.header_offset)
                local = raw.read(_LOCAL.size)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + _LOCAL.size + name_len + extra_len + header_size
            out[name] = (tuple(shape), np.dtype(dtype), offset)
    return out


def _check(file: str, shapes: dict) -> None:
    missing = [k for k in ("x_data", "noise") if k not in shapes]
    if missing:
        raise ValueError(f"pairs file {file!r} lacks array(s) {', '.join(missing)} (has {', '.join(shapes)})")
    if shapes["x_data"] != shapes["noise"] or len(shapes["x_data"]) < 2:
        raise ValueError(f"pairs file {file!r}: x_data {shapes['x_data']} and noise {shapes['noise']} must have one "
                         "shape (N, ...)")
    if "label" in shapes and shapes["label"] != shapes["x_data"][:1]:
        raise ValueError(f"pairs file {file!r}: label has shape {shapes['label']}; expected (N,)")


def _exists(file: str) -> None:
    if not file:
        raise ValueError("data.name='pairs' needs data.kwargs.file: a .npz with arrays x_data and noise")
    if not os.path.isfile(file):
        raise ValueError(f"data.kwargs.file={file!r}: no such file (a .npz with arrays x_data and noise)")


def load_pairs(file: str) -> dict[str, np.ndarray]:
    """Every array of a pairs file (provenance ``meta_*`` included) read into memory, checked (ValueError naming the
    file and what is wrong). For sets that fit in memory; ``open_pairs`` maps large ones."""
    _exists(file)
    with np.load(file) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    _check(file, {k: arrays[k].shape for k in ARRAYS if k in arrays})
    return arrays


def open_pairs(file: str) -> dict[str, np.ndarray]:
    """``x_data``, ``noise`` (and ``label``) of a pairs file as read-only ``np.memmap`` views: nothing is read until
    rows are indexed. ValueError if the file is not a pairs file or an array cannot be mapped (compressed)."""
    _exists(file)
    headers = _headers(file)
    _check(file, {k: v[0] for k, v in headers.items()})
    out = {}
    for name, (shape, dtype, offset) in headers.items():
        if offset is None:
            raise ValueError(f"pairs file {file!r}: {name} is compressed or Fortran-ordered and cannot be "
                             "memory-mapped; rewrite it with flowgen.data.pairs.write_pairs")
        out[name] = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
    return out


def pairs_element_shape(file: str) -> tuple[int, ...]:
    """Shape of one example of a pairs file, read from the file's headers only."""
    _exists(file)
    headers = _headers(file)
    _check(file, {k: v[0] for k, v in headers.items()})
    return headers["x_data"][0][1:]


def pairs_nbytes(file: str) -> int:
    """Bytes of the arrays of a pairs file (x_data, noise, label), from its headers."""
    _exists(file)
    return sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype, _ in _headers(file).values())


def pairs_num_classes(file: str) -> int:
    """1 + the largest label of a pairs file (0 if it has none), reading only the labels."""
    _exists(file)
    headers = _headers(file)
    if "label" not in headers:
        return 0
    shape, dtype, offset = headers["label"]
    if offset is None:
        return int(load_pairs(file)["label"].max()) + 1
    return int(np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape).max()) + 1
