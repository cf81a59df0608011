"""IDX files (the MNIST family's format), gzipped or raw, validated before use."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from bnnkit.errors import BnnkitError

# Magic = 0x0000 | type code (0x08: unsigned byte) | number of dimensions.
UBYTE = 0x08


def read_idx(path: Path, ndim: int, hint: str) -> np.ndarray:
    """The uint8 array of an IDX file with ``ndim`` dimensions; any defect is a BnnkitError."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BnnkitError(f"{path}: cannot read ({exc}) — {hint}") from None
    if len(raw) < 4:
        raise BnnkitError(f"{path}: {len(raw)} bytes, too short for an IDX header — {hint}")
    zero, dtype, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != UBYTE or dims != ndim:
        magic = raw[:4].hex()
        raise BnnkitError(f"{path}: IDX magic 0x{magic}, expected 0x{UBYTE:06x}{ndim:02x} (unsigned bytes, {ndim}-D) — {hint}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BnnkitError(f"{path}: truncated IDX header — {hint}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise BnnkitError(f"{path}: {len(raw)} bytes, but its header {shape} implies {expected} — {hint}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


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
    if missing:
        wanted = ", ".join(f"{m}[.gz]" for m in missing)
        raise BnnkitError(f"{directory}: missing {wanted} — {hint}")
    images = read_idx(images_path, 3, hint)
    labels = read_idx(labels_path, 1, hint)
    if images.shape[1:] != (28, 28):
        raise BnnkitError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28 — {hint}")
    if len(images) != len(labels):
        raise BnnkitError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name} — {hint}")
    if len(labels) and labels.max() >= num_classes:
        raise BnnkitError(f"{labels_path}: label {labels.max()} out of range 0..{num_classes - 1} — {hint}")
    return images[:, None, :, :], labels.astype(np.int64)
