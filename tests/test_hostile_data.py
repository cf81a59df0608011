"""Hostile data files (issue 15, items 4-5): IDX headers that overflow or lie, gzip bombs,
truncated and oversized files, empty sets, and forged CIFAR batches, binary and pickled.
Each is one BnnkitError naming the file (at the command line: one ``error:`` line, exit 2),
and none makes a reader allocate more than the bounded size the file's header declares."""

import codecs
import gzip
import io
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli_errors import Bad, Ctx, assert_one_clear_line
from helpers.datafiles import cifar_images, make_idx_dir, write_cifar_bin, write_cifar_py, write_idx
from numpy._core.multiarray import _reconstruct

from bnnkit.data import cifar, idx, load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op

MNIST_TEST = "t10k-images-idx3-ubyte"


def header(*shape: int) -> bytes:
    return struct.pack(">HBB", 0, 8, len(shape)) + b"".join(struct.pack(">I", d) for d in shape)


def single_error(load) -> str:
    """The message of the BnnkitError ``load()`` raises, checked to be one line."""
    with pytest.raises(BnnkitError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# --- IDX -----------------------------------------------------------------------------------

FOUR = header(4, 28, 28) + bytes(4 * 784)  # a valid file of 4 images

IDX_CASES = {
    # np.prod wrapped these dims to 0, so a bare 16-byte header passed the length check
    "dims that overflow int64": (MNIST_TEST, header(2**31, 2**31, 4), r"images are 2147483648x4, expected 28x28"),
    "count over the bound": (
        MNIST_TEST,
        header(2**32 - 1, 28, 28),
        r"declares 4,294,967,295 images, more than the 1,000,000",
    ),
    "truncated header": (MNIST_TEST, FOUR[:9], "truncated IDX header"),
    "truncated data": (MNIST_TEST, FOUR[:116], r"116 bytes, but its header \(4, 28, 28\) implies 3152"),
    "trailing garbage": (MNIST_TEST, FOUR + b"junk", r"3156 bytes, but its header \(4, 28, 28\) implies 3152"),
    "gzip claims more than it can expand to": (
        MNIST_TEST + ".gz",
        gzip.compress(header(1_000_000, 28, 28)),
        r"implies 784,000,016 bytes, more than \d+ gzipped bytes can hold",
    ),
    "gzip short of its header": (
        MNIST_TEST + ".gz",
        gzip.compress(FOUR[:116]),
        r"116 bytes, but its header \(4, 28, 28\) implies 3152",
    ),
    "gzip longer than its header": (
        MNIST_TEST + ".gz",
        gzip.compress(FOUR + b"j"),
        r"more than the 3152 bytes its header \(4, 28, 28\)",
    ),
    "gzip stream cut": (MNIST_TEST + ".gz", gzip.compress(FOUR)[:-12], "cannot read .*end-of-stream"),
    "garbage after the gzip stream": (
        MNIST_TEST + ".gz",
        gzip.compress(FOUR) + b"junk",
        "cannot read .*Not a gzipped file",
    ),
    "no images": (MNIST_TEST, header(0, 28, 28), "holds 0 images"),
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_hostile_idx_files_are_one_error_naming_the_file(tmp_path, case):
    name, data, message = IDX_CASES[case]
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / name).write_bytes(data)  # a .gz is found before the raw file
    error = single_error(lambda: load_dataset("mnist", "test", tmp_path))
    assert error.startswith(f"{tmp_path / name}: ")
    assert re.search(message, error), error


def test_gzip_is_read_in_chunks_across_members(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    images = np.random.default_rng(0).integers(0, 256, (1500, 28, 28), dtype=np.uint8)  # more than one chunk
    labels = np.arange(1500, dtype=np.uint8) % 10
    data = header(*images.shape) + images.tobytes()
    assert len(data) > idx.CHUNK
    (tmp_path / f"{MNIST_TEST}.gz").write_bytes(gzip.compress(data[:100_000]) + gzip.compress(data[100_000:]))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, gz=True)
    ds = load_dataset("mnist", "test", tmp_path)
    assert np.array_equal(ds.x[:, 0], images) and np.array_equal(ds.y, labels)


# --- under a memory cap: a child process that must fail in one line, well within it -------------

CAP = 1 << 30
CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)
from bnnkit.cli import main
status = main(sys.argv[3:])
# VmHWM, not ru_maxrss: Linux carries the parent's peak across fork and exec into ru_maxrss,
# so a large pytest process would be counted as the child's
with open("/proc/self/status") as status_file:
    peak_kib = next(line.split()[1] for line in status_file if line.startswith("VmHWM:"))
with open(sys.argv[2], "w") as f:
    f.write(peak_kib)
sys.exit(status)
"""


def run_capped(tmp_path: Path, data_dir: Path, dataset: str, names: Path, cap: int = CAP) -> tuple[str, int]:
    """``bnnkit run`` on ``dataset`` in ``data_dir`` with at most ``cap`` bytes of address space:
    exit 2 with one ``error:`` line naming ``names``. Its message and peak RSS in bytes."""
    graph = tmp_path / "tiny.bnn"  # the data fails to load before the graph's shape is compared with it
    ops = [
        Op("flatten", ["input"], "f"),
        Op("input_dense", ["f"], "d", {}, {"weight": np.ones((10, 784), bool)}),
        Op("argmax", ["d"], "y"),
    ]
    Graph((1, 28, 28), ops).save(graph)
    rss = tmp_path / "maxrss"
    args = ["run", str(graph), "--dataset", dataset, "--data-dir", str(data_dir), "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", CAPPED, str(cap), str(rss), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith(f"error: {names}: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr, int(rss.read_text()) * 1024  # VmHWM is in KiB


def gzip_bomb(path: Path, head: bytes, gib: int = 1) -> None:
    """``head`` then ``gib`` GiB of zeros in a file of about a megabyte: one gzip member per MiB,
    all the same (a gzip file may hold many members), so that it is written in no time."""
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    path.write_bytes(gzip.compress(head + bytes(1 << 20), compresslevel=9) + zeros * ((gib << 10) - 1))


@pytest.mark.parametrize(
    "declared, cap, message",
    [
        (10, CAP, r"more than the 7856 bytes its header \(10, 28, 28\) implies"),
        # declares 784 MB, within every bound but not within a 640 MiB cap: refused before a byte is read
        (1_000_000, 640 << 20, r"not enough memory for the 784,000,016 bytes its header \(1000000, 28, 28\) implies"),
    ],
)
def test_gzip_bomb_under_a_memory_cap(tmp_path, declared, cap, message):
    root = tmp_path / "mnist"
    make_idx_dir(root, gz=False)
    bomb = root / f"{MNIST_TEST}.gz"
    gzip_bomb(bomb, header(declared, 28, 28))
    assert bomb.stat().st_size < 1.1e6
    error, rss = run_capped(tmp_path, root, "mnist", bomb, cap)
    assert re.search(message, error), error
    print(f"gzip bomb, {declared} images declared: peak RSS {rss / 2**20:.0f} MiB")
    assert rss < cap // 2  # the interpreter and NumPy: the bomb itself costs nothing


def pickle_batch_dir(root: Path, test_batch: bytes) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_py(folder / f"data_batch_{i}", cifar_images(1), [1])
    (folder / "test_batch").write_bytes(test_batch)
    return folder / "test_batch"


def many_encodes(text_bytes: int, times: int) -> bytes:
    """A protocol-2 pickle that encodes one memoised text ``times`` times: small file, huge result."""
    text = b"X" + struct.pack("<I", text_bytes) + b"a" * text_bytes
    one = b"h\x00h\x01h\x02\x86R"  # encode, text, 'latin1' -> REDUCE
    return (
        b"\x80\x02c_codecs\nencode\nq\x00" + text + b"q\x01X\x06\x00\x00\x00latin1q\x02" + b"](" + one * times + b"e."
    )


@pytest.mark.parametrize(
    "pickled, message",
    [
        # 2 GB of bytes from a 1 MB file
        (many_encodes(1 << 20, 2000), "builds more bytes than the file holds twice over"),
        # the unpickler would zero a 32 GB memo table for this 8-byte file
        (b"\x80\x02Nr\xff\xff\xff\x7f.", "pickle memo index 2,147,483,647"),
        # 2M empty lists from a 4 MB file: 150 MB, 32 times the file
        (b"\x80\x02]" + b"]a" * 2_000_000 + b".", "more than 1,920,000 pickle opcodes"),
    ],
)
def test_pickles_that_build_much_from_little_under_a_memory_cap(tmp_path, pickled, message):
    test_batch = pickle_batch_dir(tmp_path / "cifar", pickled)
    error, rss = run_capped(tmp_path, tmp_path / "cifar", "cifar10", test_batch)
    assert message in error
    assert rss < CAP // 2


# --- CIFAR --------------------------------------------------------------------------------------


def batch(data=None, labels=None, **extra) -> dict:
    data = cifar_images(2).reshape(2, -1) if data is None else data
    return {b"data": data, b"labels": [3, 4] if labels is None else labels, b"filenames": [b"a.png", b"b.png"], **extra}


class SharedArray:
    """Pickles as an ndarray whose bytes the pickler memoises and then references again."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def __reduce__(self):
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.raw),), np.dtype(np.uint8), False, self.raw)


class Call:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def dumps(value) -> bytes:
    return pickle.dumps(value, protocol=2)


SHARED = bytes(100_000)
PICKLE_CASES = {
    "data as bytes": (dumps(batch(data=bytes(2 * 3072))), "'data' is bytes, expected uint8 (N, 3072)"),
    "data as int64": (dumps(batch(data=np.zeros((2, 3072), np.int64))), "'data' is int64 (2, 3072)"),
    "data 3-D": (dumps(batch(data=cifar_images(2).reshape(2, 3, -1))), "'data' is uint8 (2, 3, 1024)"),
    "data of objects": (dumps(batch(data=np.zeros((2, 3072), object))), "refuses numpy.dtype('O8')"),
    "no images": (dumps(batch(data=np.zeros((0, 3072), np.uint8), labels=[])), "holds 0 images"),
    "a label as text": (dumps(batch(labels=[3, "4"])), "'labels'[1] is str, expected an int label"),
    "a label as float": (dumps(batch(labels=[3.0, 4])), "'labels'[0] is float"),
    "a label beyond int64": (
        dumps(batch(labels=[3, 2**100])),
        "label 1267650600228229401496703205376 out of range 0..9",
    ),
    "a negative label": (dumps(batch(labels=[-1, 4])), "label -1 out of range 0..9"),
    "labels not a list": (dumps(batch(labels={3: 4})), "'labels' is dict, expected a list"),
    "labels as floats": (dumps(batch(labels=np.array([3.0, 4.0]))), "refuses numpy.dtype('f8')"),
    "labels as a 2-D array": (dumps(batch(labels=np.array([[3], [4]]))), "'labels' is ndarray, expected a list"),
    "label array out of range": (dumps(batch(labels=np.array([3, 12]))), "label 12 out of range 0..9"),
    "labels fewer than images": (dumps(batch(labels=[3])), "1 labels for 2 images"),
    "not a dict": (dumps([1, 2]), "expected a pickled dict, got list"),
    "no data key": (dumps({b"labels": [1]}), "missing 'data' or 'labels'"),
    "truncated": (dumps(batch())[:5000], "not a CIFAR python batch"),
    "a length prefix beyond the file": (
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.",
        "not a CIFAR python batch",
    ),
    "ndarray called": (dumps(Call(np.ndarray, (10**10,))), "not a CIFAR python batch (TypeError"),
    "a huge _reconstruct": (dumps(Call(_reconstruct, np.ndarray, (10**10,), b"b")), "refuses numpy _reconstruct"),
    "another codec": (dumps(Call(codecs.encode, "abc", "rot13")), "refuses _codecs.encode of str as 'rot13'"),
    "one memoised buffer in many arrays": (
        dumps(batch(data=[SharedArray(SHARED) for _ in range(8)])),
        "holds twice over",
    ),
}


@pytest.mark.parametrize("case", PICKLE_CASES)
def test_hostile_cifar_pickles_are_one_error_naming_the_file(tmp_path, case):
    pickled, message = PICKLE_CASES[case]
    test_batch = pickle_batch_dir(tmp_path, pickled)
    error = single_error(lambda: load_dataset("cifar10", "test", tmp_path))
    assert error.startswith(f"{test_batch}: ") and message in error, error


def test_label_arrays_and_odd_keys_still_load(tmp_path):
    labels = np.array([3, 4], np.int64)
    pickle_batch_dir(tmp_path, dumps(batch(labels=labels) | {b"\xff\xfe": b"a key that is not UTF-8"}))
    ds = load_dataset("cifar10", "test", tmp_path)
    assert ds.y.tolist() == [3, 4] and np.array_equal(ds.x.reshape(2, -1), batch()[b"data"])


def test_a_pickle_over_the_size_bound_is_refused_unread(tmp_path):
    test_batch = pickle_batch_dir(tmp_path, b"")
    with open(test_batch, "wb") as f:
        f.truncate(cifar.MAX_PICKLE_BYTES + 1)  # sparse: costs no disk
    error = single_error(lambda: load_dataset("cifar10", "test", tmp_path))
    assert error.startswith(
        f"{test_batch}: {cifar.MAX_PICKLE_BYTES + 1:,} bytes, more than a file of 60,000 CIFAR images"
    )


def binary_dir(root: Path, name: str, write) -> Path:
    """Valid train files of ``name`` and a test file that ``write`` writes."""
    folder, train, test = cifar.LAYOUTS[name][:3]
    (root / folder).mkdir()
    for file in train:
        write_cifar_bin(root / folder / file, cifar_images(1), [1], coarse=[0] if name == "cifar100" else None)
    write(root / folder / test)
    return root / folder / test


def sparse(size: int):
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            f.truncate(size)

    return write


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("cifar10", lambda p: p.write_bytes(b""), "holds 0 images"),
        (
            "cifar10",
            sparse(3073 * 60_001),
            "184,383,073 bytes, more than a file of 60,000 CIFAR images takes (184,380,000)",
        ),
        (
            "cifar100",
            lambda p: write_cifar_bin(p, cifar_images(2), [5, 100], coarse=[1, 2]),
            "label 100 out of range 0..99",
        ),
        ("cifar100", lambda p: p.write_bytes(bytes(3073)), "3073 bytes is not a whole number of 3074-byte records"),
    ],
)
def test_hostile_cifar_binary_files(tmp_path, name, write, message):
    test_batch = binary_dir(tmp_path, name, write)
    error = single_error(lambda: load_dataset(name, "test", tmp_path))
    assert error.startswith(f"{test_batch}: {message}"), error


# --- an empty test set at the command line ----------------------------------------------------


@pytest.mark.parametrize("command", ["run", "eval"])
def test_an_empty_test_set_is_one_clear_line(command, trained, tmp_path, monkeypatch, capsys):
    c = Ctx(tmp_path, *trained, monkeypatch)
    root = tmp_path / "empty"
    root.mkdir()
    write_idx(root / MNIST_TEST, np.zeros((0, 28, 28), np.uint8))  # a valid IDX file of 0 images
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    target = c.graph if command == "run" else c.run
    args = [command, str(target), "--dataset", "mnist", "--data-dir", str(root), "--json"]
    assert_one_clear_line(Bad(args, str(root / MNIST_TEST), "holds 0 images"), tmp_path, capsys)


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did, where bytes and text were both ``str``: as BINSTRING, not as
    ``_codecs.encode`` of text. The format of the published CIFAR python batches."""

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, str: save_str, bytes: save_bytes}


def test_python_2_pickles_still_load(tmp_path):
    images = cifar_images(3)
    f = io.BytesIO()
    Python2Pickler(f, protocol=2).dump(
        batch(data=images.reshape(3, -1), labels=[7, 0, 9]) | {b"batch_label": b"testing"}
    )
    assert b"_codecs" not in f.getvalue()
    pickle_batch_dir(tmp_path, f.getvalue())
    ds = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(ds.x, images) and ds.y.tolist() == [7, 0, 9]
