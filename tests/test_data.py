"""Dataset readers on small files written in exactly the public formats, and the real data."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers.datafiles import cifar_images, make_idx_dir, write_cifar_bin, write_cifar_py

from bnnkit.data import DATASETS, get_info, load_dataset
from bnnkit.errors import BnnkitError

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", "test", tmp_path)
    images, labels = arrays["t10k"]
    assert ds.x.shape == (4, 1, 28, 28) and ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
    assert np.array_equal(ds.x[:, 0], images) and np.array_equal(ds.y, labels)


def _corrupt(tmp_path, name, data):
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("train-images-idx3-ubyte", lambda: struct.pack(">HBB", 0, 0x0D, 3) + b"\0" * 12, "magic"),
        ("train-images-idx3-ubyte", lambda: struct.pack(">HBBIII", 0, 8, 3, 2, 10, 10) + b"\0" * 200, "expected 28x28"),
        ("train-images-idx3-ubyte", lambda: struct.pack(">HBBIII", 0, 8, 3, 6, 28, 28) + b"\0" * 100, "implies"),
        (
            "train-labels-idx1-ubyte",
            lambda: struct.pack(">HBBI", 0, 8, 1, 6) + bytes([1, 2, 3, 12, 0, 0]),
            "label 12 out of range",
        ),
        ("train-labels-idx1-ubyte", lambda: struct.pack(">HBBI", 0, 8, 1, 5) + bytes(5), "5 labels for 6 images"),
        ("train-labels-idx1-ubyte", lambda: b"\x00\x00", "too short"),
    ],
)
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, name, make, message):
    path = _corrupt(tmp_path, name, make())
    with pytest.raises(BnnkitError, match=message) as info:
        load_dataset("mnist", "train", tmp_path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(BnnkitError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load_dataset("mnist", "test", tmp_path)


def test_missing_files_and_directories(tmp_path, monkeypatch):
    monkeypatch.delenv("BNNKIT_DATA", raising=False)
    with pytest.raises(BnnkitError, match="missing train-images-idx3-ubyte"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(BnnkitError, match="no such directory"):
        load_dataset("fashion_mnist", "train", tmp_path / "absent")
    with pytest.raises(BnnkitError, match="no data directory given.*BNNKIT_DATA"):
        load_dataset("cifar10", "train")
    with pytest.raises(BnnkitError, match="unknown dataset 'svhn'.*cifar10"):
        load_dataset("svhn", "train")
    with pytest.raises(BnnkitError, match="unknown split"):
        load_dataset("digits", "validation")


def test_bnnkit_data_resolution(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "mnist", n_test=3)
    monkeypatch.setenv("BNNKIT_DATA", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 3  # $BNNKIT_DATA/<name>
    other = tmp_path / "other"
    make_idx_dir(other, n_test=2)
    assert len(load_dataset("mnist", "test", other)) == 2  # --data-dir wins
    monkeypatch.setenv("BNNKIT_DATA", str(other))
    assert len(load_dataset("mnist", "test")) == 2  # $BNNKIT_DATA itself


# --- CIFAR ------------------------------------------------------------------------------


def test_cifar10_binary_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = []
    for i in range(1, 6):
        images, labels = cifar_images(2, i), [i, 9 - i]
        write_cifar_bin(folder / f"data_batch_{i}.bin", images, labels)
        expected.append((images, labels))
    write_cifar_bin(folder / "test_batch.bin", cifar_images(3, 9), [0, 1, 2])
    ds = load_dataset("cifar10", "train", tmp_path)  # the parent of the extracted folder
    assert np.array_equal(ds.x, np.concatenate([e[0] for e in expected]))
    assert ds.y.tolist() == sum((e[1] for e in expected), [])
    assert load_dataset("cifar10", "test", folder).y.tolist() == [0, 1, 2]  # the folder itself


def test_cifar100_binary_uses_the_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    images = cifar_images(3)
    write_cifar_bin(folder / "train.bin", images, [99, 50, 7], coarse=[19, 3, 1])
    write_cifar_bin(folder / "test.bin", images[:1], [42], coarse=[5])
    ds = load_dataset("cifar100", "train", tmp_path)
    assert ds.y.tolist() == [99, 50, 7] and np.array_equal(ds.x, images)


def test_cifar_python_round_trip(tmp_path):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        write_cifar_py(c10 / f"data_batch_{i}", cifar_images(1, i), [i])
    test_images = cifar_images(2, 7)
    write_cifar_py(c10 / "test_batch", test_images, [3, 4])
    ds = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(ds.x, test_images) and ds.y.tolist() == [3, 4]
    assert load_dataset("cifar10", "train", tmp_path).y.tolist() == [1, 2, 3, 4, 5]

    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    write_cifar_py(c100 / "train", cifar_images(2), [98, 1], label_key=b"fine_labels")
    write_cifar_py(c100 / "test", cifar_images(1), [5], label_key=b"fine_labels")
    assert load_dataset("cifar100", "train", tmp_path).y.tolist() == [98, 1]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {SIDE_EFFECT}",))


SIDE_EFFECT = ""


def test_cifar_python_batch_with_a_foreign_class_is_refused_unexecuted(tmp_path):
    global SIDE_EFFECT
    SIDE_EFFECT = str(tmp_path / "pwned")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        write_cifar_py(folder / name, cifar_images(1), [1])
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [1]}, protocol=2))
    with pytest.raises(BnnkitError, match=r"test_batch: refuses to unpickle (posix|os)\.system"):
        load_dataset("cifar10", "test", tmp_path)
    assert not Path(SIDE_EFFECT).exists()


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(bytes(3073 + 10)), "whole number of 3073-byte records"),
        (lambda p: write_cifar_bin(p, cifar_images(1), [10]), "label 10 out of range 0..9"),
    ],
)
def test_bad_cifar_binary_batches(tmp_path, write, message):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_bin(folder / f"data_batch_{i}.bin", cifar_images(1), [1])
    write(folder / "test_batch.bin")
    with pytest.raises(BnnkitError, match=message) as info:
        load_dataset("cifar10", "test", tmp_path)
    assert "test_batch.bin" in str(info.value)


def test_bad_cifar_python_batch_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_cifar_py(folder / "test_batch", cifar_images(2)[:, :, :16], [1, 2])
    for i in range(1, 6):
        write_cifar_py(folder / f"data_batch_{i}", cifar_images(1), [1])
    with pytest.raises(BnnkitError, match=r"test_batch: 'data' is uint8 \(2, 1536\)"):
        load_dataset("cifar10", "test", tmp_path)


# --- real data shipped with the install -----------------------------------------------


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_real_files():
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(train.y).tolist() == [6000] * 10 and np.bincount(test.y).tolist() == [1000] * 10
    pixels = train.x / 255.0
    info = get_info("fashion_mnist")
    assert pixels.mean() == pytest.approx(info.mean[0], abs=1e-3) and pixels.std() == pytest.approx(
        info.std[0], abs=1e-3
    )


@pytest.mark.parametrize(
    "name, n_train, n_test, shape", [("mnist5k", 4000, 1000, (1, 28, 28)), ("digits", 1442, 355, (1, 8, 8))]
)
def test_packaged_datasets(name, n_train, n_test, shape):
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.x.shape[1:] == shape == DATASETS[name].in_shape
    per_class = np.bincount(train.y, minlength=10) + np.bincount(test.y, minlength=10)
    assert np.bincount(test.y, minlength=10).tolist() == (per_class // 5).tolist()  # every 5th of each class
    pixels = train.x / 255.0
    assert pixels.mean() == pytest.approx(get_info(name).mean[0], abs=1e-3)
    assert pixels.std() == pytest.approx(get_info(name).std[0], abs=1e-3)
    assert not set(map(bytes, train.x[:50])) & set(map(bytes, test.x))  # no image in both splits
