"""Training-time overhead of binarization: each binary model against its full-precision twin.

The twin is the same architecture and code path with the ``identity`` quantizer in place
of the binarizers, so the ratio isolates what binarization (forward sign, surrogate
gradient, latent-weight clipping) adds to a training step. Both are timed in the same
run, one step each in turn, on random data of the dataset's shape; the per-epoch figure
is the median step time × the steps in one epoch of the real dataset, the ratio the
median of the per-step ratios.

    python benchmarks/train_overhead.py [--steps 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from bnnkit.models import create_model
from bnnkit.nn import clip_latent_weights_
from bnnkit.recipe import BASELINE
from bnnkit.training.optim import make_optimizer

# (model, options, input shape, classes, images per epoch of the dataset it is meant for)
CASES = [
    ("binarynet_mlp", {}, (1, 28, 28), 10, 60_000),
    ("ebnn_cnn", {}, (1, 28, 28), 10, 60_000),
    ("small_cnn", {}, (1, 28, 28), 10, 60_000),
    ("resnet20", {}, (3, 32, 32), 10, 50_000),
    ("vgg_small", {"width_mult": 0.25}, (3, 32, 32), 10, 50_000),
]


class Stepper:
    """One model with its optimiser and a fixed random batch; ``step()`` times one update."""

    def __init__(self, model, in_shape, classes, batch, recipe):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(batch, *in_shape, generator=gen)
        self.y = torch.randint(0, classes, (batch,), generator=gen)
        self.model, self.recipe = model.train(), recipe
        self.optimizer = make_optimizer(model, recipe)

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.recipe.latent_clip > 0:
            clip_latent_weights_(self.model, self.recipe.latent_clip)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    binary = BASELINE
    twin = BASELINE.with_(name="fp-twin", input_quantizer="identity", kernel_quantizer="identity", latent_clip=0.0)
    rows = []
    for name, options, in_shape, classes, epoch_images in CASES:
        torch.manual_seed(0)
        binary_run, twin_run = (
            Stepper(create_model(name, classes, in_shape, r, **options), in_shape, classes, args.batch, r)
            for r in (binary, twin)
        )
        for _ in range(3):  # warm up allocators and caches
            binary_run.step(), twin_run.step()
        # Alternate single steps so that a change in machine load hits both alike; the
        # median of per-pair ratios is robust to the noisy steps that remain.
        pairs = [(binary_run.step(), twin_run.step()) for _ in range(args.steps)]
        steps_per_epoch = epoch_images // args.batch
        rows.append(
            {
                "model": name,
                "options": options,
                "binary_s_per_epoch": statistics.median(b for b, _ in pairs) * steps_per_epoch,
                "fp_s_per_epoch": statistics.median(t for _, t in pairs) * steps_per_epoch,
                "ratio": statistics.median(b / t for b, t in pairs),
            }
        )
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "batch": args.batch, "rows": rows}))
        return
    print(
        f"training time per epoch, binary vs full-precision twin ({torch.get_num_threads()} threads, batch {args.batch})"
    )
    print(f"{'model':24s} {'binary s/epoch':>15s} {'FP s/epoch':>11s} {'ratio':>6s}")
    for r in rows:
        label = r["model"] + ("" if not r["options"] else " " + ",".join(f"{k}={v}" for k, v in r["options"].items()))
        print(f"{label:24s} {r['binary_s_per_epoch']:15.1f} {r['fp_s_per_epoch']:11.1f} {r['ratio']:6.2f}")


if __name__ == "__main__":
    main()
