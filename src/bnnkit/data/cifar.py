"""CIFAR-10 and CIFAR-100 in both public on-disk formats.

* binary: records of label byte(s) + 3,072 pixel bytes (1,024 red, green, blue planes,
  row-major 32×32); CIFAR-100 records carry a coarse then a fine label byte.
* python: pickled dicts from Python 2. They are read with an unpickler that admits only
  the NumPy reconstruction functions a real batch needs, so a forged file cannot run code.

Files come from anyone, so what a reader allocates is bounded before it is allocated: a file
holds at most ``MAX_RECORDS`` images (its size is checked before it is read), and a pickle
is walked opcode by opcode before it is loaded, then loaded under a byte budget (see
``_scan_pickle`` and ``_BatchUnpickler``).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import reprlib
from pathlib import Path

import numpy as np

from bnnkit.errors import BnnkitError

PIXELS = 3 * 32 * 32
# Images per file: all 60,000 of either dataset (a real file holds 10,000, or 50,000 for CIFAR-100's train).
MAX_RECORDS = 60_000
# A pickled image costs ~3,100 bytes in Python 2's pickles and up to ~6,200 in Python 3's
# protocol 2, which stores bytes as UTF-8 text.
MAX_PICKLE_BYTES = MAX_RECORDS * 2 * (PIXELS + 128)
# A real batch needs under 10 opcodes per image (a file name, its memo entry, one or two labels).
MAX_PICKLE_OPS = 32 * MAX_RECORDS

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


def _read_bounded(path: Path, limit: int, hint: str) -> bytes:
    """The bytes of ``path``, refused unread when there are more than ``limit``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise BnnkitError(
                    f"{path}: {size:,} bytes, more than a file of {MAX_RECORDS:,} CIFAR images takes ({limit:,}) — {hint}"
                )
            return f.read(size)
    except OSError as exc:
        raise BnnkitError(f"{path}: cannot read ({exc}) — {hint}") from None


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, hint: str) -> np.ndarray:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise BnnkitError(f"{path}: label {bad[0]} out of range 0..{num_classes - 1} — {hint}")
    return labels.astype(np.int64)


# --- python batches ---------------------------------------------------------------------

_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_pickle(path: Path, raw: bytes, hint: str) -> None:
    """Walk the opcodes of ``raw`` without building anything, so that loading it allocates a
    bounded amount: every length prefix must lie within the file (the unpickler would
    allocate what one claims before reading it), there are at most ``MAX_PICKLE_OPS``
    opcodes (each builds one object of bounded size), and no memo index exceeds that count
    (the unpickler sizes its memo table by the largest index: a 5-byte LONG_BINPUT could
    otherwise make it zero 32 GB)."""
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(raw)):
            if count == MAX_PICKLE_OPS:
                raise BnnkitError(
                    f"{path}: more than {MAX_PICKLE_OPS:,} pickle opcodes; a CIFAR batch needs far fewer — {hint}"
                )
            # genops types its argument as Any; a memo put's is the memo index, an int.
            if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg >= MAX_PICKLE_OPS:
                raise BnnkitError(f"{path}: pickle memo index {arg:,}, a CIFAR batch needs far fewer — {hint}")
    except ValueError as exc:  # what genops raises for a truncated argument or an unknown opcode
        raise BnnkitError(f"{path}: not a CIFAR python batch ({exc}) — {hint}") from None


def _empty_bytes() -> bytes:
    return b""


# What the name ``numpy.ndarray`` stands for in a batch: only ``_reconstruct``'s first argument,
# never a callable (``ndarray(shape)`` would allocate any shape), nor a class whose attributes
# a BUILD opcode could set.
_NDARRAY = object()


# A batch's arrays: uint8 pixels, and integer labels where a writer stored them as an array.
_ARRAY_TYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}


class _BatchArray(np.ndarray):
    """An array whose pickled state is checked and charged to its batch's byte budget before
    NumPy builds it from that state."""

    def __setstate__(self, state):
        self.check_state(state)
        super().__setstate__(state)


class _BatchUnpickler(pickle.Unpickler):
    """Admits only the names a real batch uses, each replaced by a guard that checks its
    arguments. Everything those build (arrays, bytes from text) is charged to ``budget``
    bytes: that is what stops a file from reusing one large memoised object many times."""

    def __init__(self, raw: bytes, path: Path, budget: int):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.path, self.budget = path, budget
        self.allowed = {
            ("_codecs", "encode"): self._encode,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): self._dtype,
            # Python 3's protocol 2 stores b"" as bytes(); bytes(n) would allocate n bytes, so no argument is taken
            ("__builtin__", "bytes"): _empty_bytes,
            ("builtins", "bytes"): _empty_bytes,
        }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise BnnkitError(
                f"{self.path}: refuses to unpickle {module}.{name}; a CIFAR batch holds only NumPy arrays"
            )
        return self.allowed[module, name]

    def _refuse(self, what: str) -> BnnkitError:
        return BnnkitError(f"{self.path}: refuses {what}, which no CIFAR batch holds")

    def _charge(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise BnnkitError(
                f"{self.path}: builds more bytes than the file holds twice over; a CIFAR batch builds each once"
            )

    def _encode(self, text, encoding):  # how Python 3's protocol 2 stores bytes: text, encoded back
        if not isinstance(text, str) or encoding != "latin1":
            raise self._refuse(f"_codecs.encode of {type(text).__name__} as {reprlib.repr(encoding)}")
        self._charge(len(text))
        return text.encode("latin1")

    def _dtype(self, spec, align=False, copy=False):
        name = spec.decode("latin1") if isinstance(spec, bytes) else spec
        if name not in _ARRAY_TYPES:
            raise self._refuse(f"numpy.dtype({reprlib.repr(spec)})")
        return np.dtype(name, align=bool(align), copy=bool(copy))

    def _reconstruct(self, subtype, shape, typecode):
        # NumPy pickles every array as _reconstruct(ndarray, (0,), b'b') and sets its content after.
        if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
            got = f"{'ndarray' if subtype is _NDARRAY else type(subtype).__name__}, {reprlib.repr(shape)}, {reprlib.repr(typecode)}"
            raise BnnkitError(
                f"{self.path}: refuses numpy _reconstruct({got}); NumPy writes _reconstruct(ndarray, (0,), b'b')"
            )
        array = _BatchArray((0,), np.uint8)
        array.check_state = self._check_array_state
        return array

    def _check_array_state(self, state) -> None:
        version, shape, dtype, _, data = state if isinstance(state, tuple) and len(state) == 5 else (None,) * 5
        if (
            version != 1
            or not isinstance(shape, tuple)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(dtype, np.dtype)
            or dtype.kind not in "iu"
            or dtype.fields
            or dtype.subdtype
            or not isinstance(data, bytes)
            or len(data) != math.prod(shape) * dtype.itemsize
        ):
            raise self._refuse("an array state other than (1, shape, integer dtype, fortran, bytes of that size)")
        self._charge(len(data))


def _python_labels(path: Path, labels, key: str, num_classes: int, hint: str) -> np.ndarray:
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        return _check_labels(path, labels, num_classes, hint)
    if not isinstance(labels, list):
        raise BnnkitError(f"{path}: {key!r} is {type(labels).__name__}, expected a list of int labels — {hint}")
    for i, label in enumerate(labels):
        if type(label) is not int:
            raise BnnkitError(f"{path}: {key!r}[{i}] is {type(label).__name__}, expected an int label — {hint}")
        if not 0 <= label < num_classes:  # before NumPy, which cannot hold an arbitrary int
            raise BnnkitError(f"{path}: label {label} out of range 0..{num_classes - 1} — {hint}")
    return np.array(labels, dtype=np.int64)


def _read_python_batch(path: Path, label_key: str, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bounded(path, MAX_PICKLE_BYTES, hint)
    _scan_pickle(path, raw, hint)
    try:
        batch = _BatchUnpickler(raw, path, budget=2 * len(raw)).load()
    except BnnkitError:
        raise
    except Exception as exc:  # a corrupt pickle raises many types
        raise BnnkitError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc}) — {hint}") from None
    if not isinstance(batch, dict):
        raise BnnkitError(f"{path}: expected a pickled dict, got {type(batch).__name__} — {hint}")
    # plain ndarrays from here on, so that messages and callers never see _BatchArray
    batch = {
        k.decode("latin1") if isinstance(k, bytes) else k: v.view(np.ndarray) if isinstance(v, np.ndarray) else v
        for k, v in batch.items()
    }
    if "data" not in batch or label_key not in batch:
        raise BnnkitError(f"{path}: missing 'data' or {label_key!r} — {hint}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BnnkitError(f"{path}: 'data' is {got}, expected uint8 (N, {PIXELS}) — {hint}")
    if len(data) == 0:
        raise BnnkitError(f"{path}: holds 0 images — {hint}")
    labels = _python_labels(path, batch[label_key], label_key, num_classes, hint)
    if len(labels) != len(data):
        raise BnnkitError(f"{path}: {len(labels)} labels for {len(data)} images — {hint}")
    return data, labels


# --- binary batches ---------------------------------------------------------------------


def _read_binary_batch(path: Path, label_bytes: int, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    raw = _read_bounded(path, MAX_RECORDS * record, hint)
    if not raw:
        raise BnnkitError(f"{path}: holds 0 images — {hint}")
    if len(raw) % record:
        raise BnnkitError(f"{path}: {len(raw)} bytes is not a whole number of {record}-byte records — {hint}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    # The last label byte is the class (CIFAR-100: the fine label after the coarse one).
    return records[:, label_bytes:], _check_labels(path, records[:, label_bytes - 1], num_classes, hint)


def load_cifar(name: str, directory: Path, split: str, num_classes: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    bin_dir, bin_train, bin_test, py_dir, py_train, py_test, label_key = LAYOUTS[name]
    for base in (directory, directory.parent):
        if (base / bin_dir).is_dir() or (base / py_dir).is_dir():
            directory = base
            break
    candidates = []
    label_bytes = 2 if name == "cifar100" else 1
    for folder, files, reader in (
        (
            bin_dir,
            bin_train if split == "train" else [bin_test],
            lambda p: _read_binary_batch(p, label_bytes, num_classes, hint),
        ),
        (
            py_dir,
            py_train if split == "train" else [py_test],
            lambda p: _read_python_batch(p, label_key, num_classes, hint),
        ),
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
    labels = np.concatenate([y for _, y in parts])
    return data.reshape(-1, 3, 32, 32), labels
