"""IDX files (the MNIST family's format), gzipped or raw, validated before use.

A file comes from anyone, so nothing is allocated before the header is checked: the header
is read first, the size it implies is computed with Python integers (header dimensions
overflow NumPy's int64) and bounded, and then exactly that many bytes are read, a gzip
stream decompressed a chunk at a time. A gzip bomb therefore costs at most the size its
header declares, and that declared size is bounded twice: by ``MAX_ITEMS`` and by what
the compressed file can possibly expand to.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bnnkit.errors import BnnkitError

# Magic = 0x0000 | type code (0x08: unsigned byte) | number of dimensions.
UBYTE = 0x08
# Images (or labels) per file. EMNIST ByClass, the largest set published in this format,
# has 697,932 training images; MNIST and Fashion-MNIST have 60,000.
MAX_ITEMS = 1_000_000
# zlib's documented limit: deflate never expands a byte of input to more than 1032 bytes.
MAX_DEFLATE_RATIO = 1032
# Decompressed bytes read per call, so that no temporary outgrows this.
CHUNK = 1 << 20


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_into(f: io.BufferedIOBase, out: npt.NDArray[np.uint8]) -> int:
    """Fill ``out`` from ``f`` a chunk at a time; the number of bytes read (short at EOF)."""
    view, done = out.data, 0
    while done < len(out):
        got = f.readinto(view[done : done + CHUNK])
        if not got:
            break
        done += got
    return done


def read_idx(path: Path, item_shape: tuple[int, ...], what: str, hint: str) -> np.ndarray:
    """The uint8 array (N, *item_shape) of an IDX file holding N ``what`` of ``item_shape``;
    any defect is a BnnkitError."""
    try:
        with _open(path) as f:
            return _read_checked(f, path, item_shape, what, hint)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BnnkitError(f"{path}: cannot read ({exc}) — {hint}") from None


def _read_checked(f: io.BufferedIOBase, path: Path, item_shape: tuple[int, ...], what: str, hint: str) -> np.ndarray:
    ndim = 1 + len(item_shape)
    magic = f.read(4)
    if len(magic) < 4:
        raise BnnkitError(f"{path}: {len(magic)} bytes, too short for an IDX header — {hint}")
    if magic != bytes([0, 0, UBYTE, ndim]):
        raise BnnkitError(
            f"{path}: IDX magic 0x{magic.hex()}, expected 0x{UBYTE:06x}{ndim:02x} (unsigned bytes, {ndim}-D) — {hint}"
        )
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise BnnkitError(f"{path}: truncated IDX header — {hint}")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    if shape[1:] != item_shape:
        found, want = "x".join(map(str, shape[1:])), "x".join(map(str, item_shape))
        raise BnnkitError(f"{path}: {what} are {found}, expected {want} — {hint}")
    if shape[0] > MAX_ITEMS:
        raise BnnkitError(
            f"{path}: its header declares {shape[0]:,} {what}, more than the {MAX_ITEMS:,} allowed — {hint}"
        )
    header = 4 + 4 * ndim
    expected = header + shape[0] * math.prod(item_shape)
    stored = path.stat().st_size
    if path.suffix == ".gz":
        if expected > stored * MAX_DEFLATE_RATIO:
            raise BnnkitError(
                f"{path}: its header {shape} implies {expected:,} bytes, more than {stored:,} gzipped bytes can hold — {hint}"
            )
    elif stored != expected:
        raise BnnkitError(f"{path}: {stored} bytes, but its header {shape} implies {expected} — {hint}")
    try:
        data = np.empty(expected - header, dtype=np.uint8)
    except MemoryError:
        raise BnnkitError(
            f"{path}: not enough memory for the {expected:,} bytes its header {shape} implies — {hint}"
        ) from None
    got = header + _read_into(f, data)
    if got < expected:
        raise BnnkitError(f"{path}: {got} bytes, but its header {shape} implies {expected} — {hint}")
    if f.read(1):
        raise BnnkitError(f"{path}: more than the {expected} bytes its header {shape} implies — {hint}")
    return data.reshape(shape)


def find_file(directory: Path, stem: str) -> Path | None:
    """``stem`` raw or gzipped (also the ``stem.idx3-ubyte`` spelling some mirrors use)."""
    for name in (f"{stem}.gz", stem, f"{stem.replace('-idx', '.idx')}.gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_split(directory: Path, split: str, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images_stem, labels_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images_path, labels_path = find_file(directory, images_stem), find_file(directory, labels_stem)
    missing = [stem for stem, p in ((images_stem, images_path), (labels_stem, labels_path)) if p is None]
    if images_path is None or labels_path is None:
        wanted = ", ".join(f"{m}[.gz]" for m in missing)
        raise BnnkitError(f"{directory}: missing {wanted} — {hint}")
    images = read_idx(images_path, (28, 28), "images", hint)
    if len(images) == 0:
        raise BnnkitError(f"{images_path}: holds 0 images — {hint}")
    labels = read_idx(labels_path, (), "labels", hint)
    if len(images) != len(labels):
        raise BnnkitError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name} — {hint}"
        )
    if labels.max() >= num_classes:
        raise BnnkitError(f"{labels_path}: label {labels.max()} out of range 0..{num_classes - 1} — {hint}")
    return images[:, None, :, :], labels.astype(np.int64)
