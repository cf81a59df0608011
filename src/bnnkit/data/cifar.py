"""CIFAR-10 and CIFAR-100 in both public on-disk formats.

* binary: records of label byte(s) + 3,072 pixel bytes (1,024 red, green, blue planes,
  row-major 32×32); CIFAR-100 records carry a coarse then a fine label byte.
* python: pickled dicts from Python 2. They are read with an unpickler that admits only
  the NumPy reconstruction functions a real batch needs, so a forged file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from bnnkit.errors import BnnkitError

PIXELS = 3 * 32 * 32

LAYOUTS = {
    # name: (binary folder, binary train files, binary test file, python folder, python train, python test, label key)
    "cifar10": (
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
    ),
    "cifar100": ("cifar-100-binary", ["train.bin"], "test.bin", "cifar-100-python", ["train"], "test", "fine_labels"),
}

# What a genuine batch pickle references: ndarray reconstruction (NumPy 1.x and 2.x
# spelling), and _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise BnnkitError(f"{self.path}: refuses to unpickle {module}.{name}; a CIFAR batch holds only NumPy arrays")
        return super().find_class(module, name)


def _read_python_batch(path: Path, label_key: str, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, path).load()
    except BnnkitError:
        raise
    except Exception as exc:  # a corrupt pickle raises many types
        raise BnnkitError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc}) — {hint}") from None
    if not isinstance(batch, dict):
        raise BnnkitError(f"{path}: expected a pickled dict, got {type(batch).__name__} — {hint}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise BnnkitError(f"{path}: missing 'data' or {label_key!r} — {hint}")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BnnkitError(f"{path}: 'data' is {got}, expected uint8 (N, {PIXELS}) — {hint}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise BnnkitError(f"{path}: {len(labels)} labels for {len(data)} images — {hint}")
    return data, labels.astype(np.int64)


def _read_binary_batch(path: Path, label_bytes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BnnkitError(f"{path}: cannot read ({exc}) — {hint}") from None
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise BnnkitError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte records — {hint}")
    records = raw.reshape(-1, record)
    # The last label byte is the class (CIFAR-100: the fine label after the coarse one).
    return records[:, label_bytes:], records[:, label_bytes - 1].astype(np.int64)


def load_cifar(name: str, directory: Path, split: str, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    bin_dir, bin_train, bin_test, py_dir, py_train, py_test, label_key = LAYOUTS[name]
    for base in (directory, directory.parent):
        if (base / bin_dir).is_dir() or (base / py_dir).is_dir():
            directory = base
            break
    candidates = []
    for folder, files, reader in (
        (bin_dir, bin_train if split == "train" else [bin_test], lambda p: _read_binary_batch(p, 2 if name == "cifar100" else 1, hint)),
        (py_dir, py_train if split == "train" else [py_test], lambda p: _read_python_batch(p, label_key, num_classes, hint)),
    ):
        for root in (directory / folder, directory):
            paths = [root / f for f in files]
            if all(p.is_file() for p in paths):
                candidates.append((paths, reader))
                break
        if candidates:
            break
    if not candidates:
        wanted = f"{bin_dir}/{{{','.join(bin_train + [bin_test])}}} or {py_dir}/{{{','.join(py_train + [py_test])}}}"
        raise BnnkitError(f"{directory}: no {name} {split} files ({wanted}) — {hint}")
    paths, reader = candidates[0]
    parts = [reader(p) for p in paths]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([l for _, l in parts])
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        where = next(p for p, (_, l) in zip(paths, parts) if ((l < 0) | (l >= num_classes)).any())
        raise BnnkitError(f"{where}: label {bad[0]} out of range 0..{num_classes - 1} — {hint}")
    return data.reshape(-1, 3, 32, 32), labels
