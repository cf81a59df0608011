"""Batches for training and evaluation, cut from a dataset's uint8 images held in memory.

The order of an epoch and its augmentation come from one generator seeded by
``(seed, epoch)``, so a resumed run replays exactly the batches it would have seen.
Augmentation works on a whole batch of uint8 images at once, before the conversion to
float. (The dataset readers in ``bnnkit.data`` stay NumPy-only; torch starts here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from bnnkit.data import ArrayDataset

CROP_PAD = 4
_AUGMENTATIONS = {"cifar10": "cifar", "cifar100": "cifar"}


def augmentation_for(name: str) -> str:
    """``"cifar"`` (pad-4 random crop + horizontal flip) for CIFAR, ``"none"`` otherwise."""
    return _AUGMENTATIONS.get(name, "none")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator owned by one epoch: a resumed run replays exactly the same batches,
    whatever else has drawn from the global RNG meanwhile."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back to the input size at a random offset, and flip
    left-right with probability 1/2, each image independently: one gather for the batch."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1] (``k / 255``, which ``IntegerPixels`` inverts exactly)."""
    return images.float().div_(255)


def in_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` laid out in ``memory_format``. One-channel images are the same bytes in NCHW and
    channels_last, so ``contiguous`` leaves their NCHW strides, and convolutions given those
    answer in NCHW; explicit channels-last strides (a view, no copy) make them answer in
    channels_last, which the layers after them need."""
    if memory_format != torch.channels_last:
        return x.contiguous(memory_format=memory_format)
    if x.ndim != 4:  # not a feature map (an MLP's input): no channels to put last
        return x
    if x.shape[1] == 1:
        x = x.contiguous()
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (float32 images in [0, 1], int64 labels). The images are shared with
    ``ds`` (no copy of the dataset); each batch is converted to float on its own, so the
    float copy stays in cache."""
    n = len(ds.y)
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=gen) if shuffle else None
    images, labels = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        if drop_last and stop - start < batch_size:
            break
        if order is None:  # in order: a view, not a gather
            xb, yb = images[start:stop], labels[start:stop]
        else:
            idx = order[start:stop]
            xb, yb = images[idx], labels[idx]
        if augment:
            xb = random_crop_flip(xb, gen)
        yield to_unit_float(xb), yb
