"""Training batches cut from uint8 images in memory, and augmentation batched on tensors."""

import subprocess
import sys

import numpy as np
import torch

from bnnkit.data import DATASETS, ArrayDataset
from bnnkit.training.batching import augmentation_for, batches, epoch_generator, random_crop_flip


def small_dataset(n=50, shape=(3, 8, 8)):
    x = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    return ArrayDataset(x=x, y=np.arange(n, dtype=np.int64), info=DATASETS["cifar10"])


def test_batches_are_a_deterministic_permutation_per_epoch():
    ds = small_dataset()

    def run(epoch):
        return [(x.clone(), y.clone()) for x, y in batches(ds, 16, shuffle=True, seed=1, epoch=epoch)]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    order0 = torch.cat([y for _, y in a])
    assert sorted(order0.tolist()) == list(range(50))
    assert not torch.equal(order0, torch.cat([y for _, y in c]))
    x, y = a[0]
    assert x.dtype == torch.float32 and torch.equal(x * 255, torch.from_numpy(ds.x[y.numpy()]).float())
    assert [len(y) for _, y in batches(ds, 16, shuffle=False, drop_last=True)] == [16, 16, 16]


def test_unshuffled_batches_are_the_dataset_in_order_as_k_over_255():
    ds = small_dataset(n=20)
    got = list(batches(ds, 8, shuffle=False))
    assert [len(y) for _, y in got] == [8, 8, 4]
    x = torch.cat([x for x, _ in got])
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(20))
    assert torch.equal(x, torch.from_numpy(ds.x).double().div(255).float())  # the division, not a product by 1/255


def test_shuffled_batches_follow_the_epoch_generator():
    ds = small_dataset()
    order = torch.randperm(50, generator=epoch_generator(7, 3))
    got = torch.cat([y for _, y in batches(ds, 16, shuffle=True, seed=7, epoch=3, drop_last=True)])
    assert torch.equal(got, order[:48])


def test_crop_and_flip_against_a_per_image_reference():
    ds = small_dataset(n=20)
    images = torch.from_numpy(ds.x)
    out = random_crop_flip(images, epoch_generator(5, 0))
    gen = epoch_generator(5, 0)  # replay the same draws
    dy = torch.randint(0, 9, (20,), generator=gen)
    dx = torch.randint(0, 9, (20,), generator=gen)
    flip = torch.rand(20, generator=gen) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(20):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert 0 < flip.sum() < 20 and len(set(dy.tolist())) > 1


def test_augmented_batches_draw_crops_after_the_order_from_the_same_generator():
    ds = small_dataset(n=32)
    gen = epoch_generator(2, 1)
    order = torch.randperm(32, generator=gen)
    first = random_crop_flip(torch.from_numpy(ds.x)[order[:16]], gen)
    x, y = next(batches(ds, 16, shuffle=True, seed=2, epoch=1, augment=True))
    assert torch.equal(y, order[:16]) and torch.equal(x * 255, first.float())
    assert augmentation_for("cifar10") == "cifar" and augmentation_for("fashion_mnist") == "none"


def test_the_data_package_does_not_import_torch():
    code = "import sys, bnnkit.data; bnnkit.data.load_dataset('digits', 'test'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_in_memory_format_lays_out_batches_for_channels_last_convolutions():
    from bnnkit.training.batching import in_memory_format

    gray = torch.rand(6, 1, 5, 5)
    strided = in_memory_format(gray[::2], torch.channels_last)  # a shard of a batch: not contiguous
    assert strided.stride() == (25, 1, 5, 1) and torch.equal(strided, gray[::2])
    color = torch.rand(2, 3, 5, 5)
    cl = in_memory_format(color, torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous() and torch.equal(cl, color)
    flat = torch.rand(4, 10)
    assert in_memory_format(flat, torch.channels_last) is flat  # not a feature map: as it is
    assert in_memory_format(color, torch.contiguous_format) is color
