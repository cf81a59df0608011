"""Dataset files written in exactly the public formats (IDX, CIFAR binary and Python batches)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, magic_type: int = 0x08, gz: bool = False):
    header = struct.pack(">HBB", 0, magic_type, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def make_idx_dir(root: Path, n_train=6, n_test=4, gz=True, labels=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8) if labels is None else labels
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", lab, gz=gz)
        arrays[prefix] = (images, lab)
    return arrays


def cifar_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_cifar_bin(path: Path, images, labels, coarse=None):
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        head = bytes([lab]) if coarse is None else bytes([coarse[i], lab])
        rows.append(head + img.reshape(-1).tobytes())  # R plane, G plane, B plane, row-major
    path.write_bytes(b"".join(rows))


def write_cifar_py(path: Path, images, labels, label_key=b"labels"):
    batch = {
        b"batch_label": b"testing",
        label_key: list(map(int, labels)),
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"x.png"] * len(images),
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))
