"""Training speed: `bnnkit train` against a minimal eager PyTorch FP32 loop of the same network.

For each model, in one run, alternately (bnnkit, reference, bnnkit, reference, ...):

* **bnnkit**: the library's ``train`` for one epoch on the first ``N`` Fashion-MNIST training
  images and its evaluation of the first ``N / 6`` test images (the proportion of a full
  epoch: 60,000 and 10,000), recipe ``embedded``; the whole call is timed, from reading the
  dataset to the checkpoint and the curves.
* **reference**: the loop one writes by hand: the same architecture with plain
  ``nn.Conv2d``/``nn.Linear`` layers in full precision, NCHW, ``torch.optim.Adam``, batch
  128, the same images as float tensors prepared beforehand, then the same test images under
  ``no_grad`` in batches of 1,000. It runs in a process of its own with the C allocator's
  defaults, as a script would (``--same-allocator``: with the setting ``train`` makes for its
  process, ``bnnkit.training.allocator``).

Both run at 1 thread. The ratio is bnnkit's time over the reference's (lower is faster),
the median over the rounds. The same is then measured beside two CPU-bound processes that
the benchmark starts (and kills at the end), and bnnkit with its default thread count
against 1 thread beside them.

``--floor`` times single training steps instead (CPU time, 1 thread): bnnkit's, the
reference's, bnnkit's convolutions alone, forward and backward in the precision its step
runs them (the part of a step that oneDNN's kernels fix, and so the least a step can cost),
and bnnkit's step with ATen's BatchNorm in place of the host kernels'
(``bnnkit.nn.batchnorm``), alternately.

``--profile MODEL`` instead breaks one epoch of ``bnnkit train`` (60,000 images, the 10,000
test images, 1 thread) down by where its time goes, under ``torch.profiler`` with named
ranges around the loop's parts (the breakdown tables of docs/performance.md).

    python benchmarks/train_speed.py [--rounds 2] [--models ebnn_cnn,small_cnn] [--scale 1.0] [--hogs-scale 0.25]
                                     [--json]
    python benchmarks/train_speed.py --profile ebnn_cnn [--scale 1.0]
    python benchmarks/train_speed.py --floor [--models ...] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.data import load_dataset
from bnnkit.nn import BinaryConv2d, BinaryLinear, IntegerPixels
from bnnkit.recipe import load_recipe
from bnnkit.training import RunConfig, TrainOptions, train

DATASET = "fashion_mnist"
BATCH = 128
# Training images per model: the whole epoch where a round (bnnkit + reference) still takes
# tens of seconds on 2 cores, else a part of it.
LIMITS = {"ebnn_cnn": 60_000, "small_cnn": 9_600, "binarynet_mlp": 60_000, "resnet20": 4_800}


def config(model: str) -> RunConfig:
    recipe = load_recipe("embedded").with_(batch_size=BATCH)
    return RunConfig(model=model, dataset=DATASET, epochs=1, seed=0, recipe=recipe)


@contextmanager
def bnnkit_precision(fp32: bool):
    """bnnkit's binary layers as ``train`` runs them on this CPU, or with ``fp32`` all in float32: the
    forward (``bnnkit.nn.bf16`` off; the same values) and the gradients (``grad_precision="float32"``)."""
    try:
        from bnnkit.nn import bf16
    except ImportError:  # an older bnnkit: float32 only
        yield
        return
    before, bf16.enabled = bf16.enabled, bf16.enabled and not fp32
    if not hasattr(bf16, "gradient_precision"):  # an older bnnkit: float32 gradients only
        precision = contextlib.nullcontext()
    else:
        precision = bf16.gradient_precision("float32" if fp32 or not bf16.cpu_has_fast_bf16() else "bfloat16")
    try:
        with precision:
            yield
    finally:
        bf16.enabled = before


def _bf16_step(x: torch.Tensor, w: torch.Tensor) -> tuple[bool, bool]:
    """Whether bnnkit's training step (inside ``bnnkit_precision``) runs this convolution of ±1
    operands in bfloat16: (forward, gradients). The forward only where bfloat16 holds every sum
    (``bf16.usable``; 64 input channels of a 3×3 convolution in two halves)."""
    try:
        from bnnkit.nn import bf16
    except ImportError:  # an older bnnkit: float32 only
        return False, False
    return bf16.usable(x, w), getattr(bf16, "gradients", "float32") == "bfloat16" and bf16.cpu_has_fast_bf16()


@contextmanager
def atens_batchnorm():
    """bnnkit's step with ATen's BatchNorm instead of the host kernels' (``bnnkit.nn.batchnorm``;
    the same bits, so only the time differs)."""
    try:
        from bnnkit.nn import batchnorm
    except ImportError:  # an older bnnkit: ATen's already
        yield
        return
    takes = batchnorm._host_takes
    batchnorm._host_takes = lambda bn, x: False
    try:
        yield
    finally:
        batchnorm._host_takes = takes


def run_bnnkit(model: str, limit: int, threads: int | None, fp32: bool = False) -> tuple[float, float]:
    """Seconds of one ``train`` call (1 epoch), wall and CPU; ``threads=None``: bnnkit's default;
    ``fp32``: binary layers in float32, forward and gradients (``bnnkit_precision``)."""
    options = TrainOptions(progress=False, limit_train=limit, limit_test=limit // 6)
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    if "threads" in fields:
        options = dataclasses.replace(options, threads=threads)
    else:  # an older bnnkit, without the option: PyTorch's own default is every core
        torch.set_num_threads(threads or os.cpu_count() or 1)
    if fp32 and "grad_precision" in fields:
        options = dataclasses.replace(options, grad_precision="float32")
    with tempfile.TemporaryDirectory() as out, bnnkit_precision(fp32), timer() as t:
        train(config(model), out + "/run", options)
    return t


def fp32_twin(module: nn.Module) -> nn.Module:
    """``module`` with every binary layer replaced by the plain full-precision one of the
    same shape, and no integer-pixel input: what one would write without bnnkit."""
    for name, child in module.named_children():
        if isinstance(child, BinaryConv2d):
            plain = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                child.groups,
                bias=child.bias is not None,
            )
        elif isinstance(child, BinaryLinear):
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
        elif isinstance(child, IntegerPixels):
            plain = nn.Identity()
        else:
            plain = fp32_twin(child)
        setattr(module, name, plain)
    return module


class Reference:
    """The minimal hand-written loop over the same images."""

    def __init__(self, model: str):
        self.model_name = model
        train_ds, test_ds = load_dataset(DATASET, "train"), load_dataset(DATASET, "test")
        self.x, self.y = torch.from_numpy(train_ds.x).float() / 255, torch.from_numpy(train_ds.y)
        self.xt, self.yt = torch.from_numpy(test_ds.x).float() / 255, torch.from_numpy(test_ds.y)

    def run(self, limit: int) -> tuple[float, float]:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        with timer() as t:
            self._train_and_test(limit)
        return t

    def _train_and_test(self, limit: int) -> None:
        model = fp32_twin(config(self.model_name).build_model())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.randperm(limit)
        model.train()
        for start in range(0, limit - BATCH + 1, BATCH):
            idx = order[start : start + BATCH]
            loss = F.cross_entropy(model(self.x[idx]), self.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, limit // 6, 1000):
                stop = min(limit // 6, start + 1000)
                correct += (model(self.xt[start:stop]).argmax(1) == self.yt[start:stop]).sum().item()


class ReferenceProcess:
    """``Reference`` in a process of its own, so that it keeps the C allocator's defaults: ``train``
    fixes glibc's thresholds for the process that trains (``bnnkit.training.allocator``), which a
    loop written by hand does not do. ``same_allocator``: the reference takes bnnkit's setting too."""

    def __init__(self, model: str, same_allocator: bool = False):
        cmd = [sys.executable, __file__, "--serve-reference", model, *(["--same-allocator"] if same_allocator else [])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout is None or self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the reference process for {model} did not start")

    def run(self, limit: int) -> SimpleNamespace:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{limit}\n")
        self.proc.stdin.flush()
        return SimpleNamespace(**json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def serve_reference(model: str, same_allocator: bool) -> None:
    """The reference process: a warm-up, "ready", then one timed run per limit read from stdin."""
    if same_allocator:
        from bnnkit.training.allocator import keep_freed_memory

        keep_freed_memory()
    reference = Reference(model)
    reference.run(2 * BATCH)
    print("ready", flush=True)
    for line in sys.stdin:
        t = reference.run(int(line))
        print(json.dumps({"wall": t.wall, "cpu": t.cpu}), flush=True)


class timer:
    """``with timer() as t``: afterwards ``t`` holds the wall and the process CPU seconds.
    At 1 thread the CPU time is the steadier figure on a machine that others share."""

    def __enter__(self):
        self.start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]


@contextmanager
def cpu_hogs(n: int):
    """``n`` CPU-bound processes for the duration, killed on the way out whatever happens."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1.0)  # let them be scheduled before anything is measured
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def compare(model: str, limit: int, rounds: int, fp32_too: bool = False, same_allocator: bool = False) -> dict:
    """bnnkit (1 thread) against the reference (``ReferenceProcess``), alternately; times are
    medians. ``fp32_too``: bnnkit with its binary layers all in float32 as well, in the same
    alternation."""
    reference = ReferenceProcess(model, same_allocator)
    rows = []
    try:
        for _ in range(rounds):
            rows.append((run_bnnkit(model, limit, 1), reference.run(limit)))
            if fp32_too:
                rows[-1] += (run_bnnkit(model, limit, 1, fp32=True),)
    finally:
        reference.close()
    result = {
        "bnnkit_images_per_s": limit / statistics.median(row[0].wall for row in rows),
        "reference_images_per_s": limit / statistics.median(row[1].wall for row in rows),
        "ratio": statistics.median(row[0].wall / row[1].wall for row in rows),
        "cpu_ratio": statistics.median(row[0].cpu / row[1].cpu for row in rows),
    }
    if fp32_too:
        result["all_fp32_ratio"] = statistics.median(row[2].wall / row[1].wall for row in rows)
        result["all_fp32_cpu_ratio"] = statistics.median(row[2].cpu / row[1].cpu for row in rows)
    return result


def thread_default_vs_one(model: str, limit: int, rounds: int) -> dict:
    """Wall time of bnnkit with its default threads over that with 1 thread, alternately."""
    pairs = [(run_bnnkit(model, limit, None), run_bnnkit(model, limit, 1)) for _ in range(rounds)]
    return {
        "default_threads_s": statistics.median(d.wall for d, _ in pairs),
        "one_thread_s": statistics.median(o.wall for _, o in pairs),
        "ratio": statistics.median(d.wall / o.wall for d, o in pairs),
    }


# --- --floor ---------------------------------------------------------------------------


def floor(model: str, steps: int, rounds: int) -> dict:
    """CPU milliseconds per training step (one batch of 128, 1 thread), alternately: bnnkit's
    step (forward, loss, backward, optimiser, latent clipping), the reference's step, the
    same bnnkit step all in float32 (``bnnkit_precision``), bnnkit's convolutions alone (each
    forward and ``aten.convolution_backward`` on its own shapes, layout, gradient mask and
    precision: bfloat16 where the step takes it; work that no change around the kernels
    removes), and bnnkit's step with ATen's BatchNorm (``atens_batchnorm``)."""
    from bnnkit.nn import bf16, clip_weights_, latent_weights
    from bnnkit.training.batching import in_memory_format, to_unit_float
    from bnnkit.training.loop import memory_format
    from bnnkit.training.optim import make_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = config(model)
    net = cfg.build_model()
    layout = memory_format(net)
    net = net.to(memory_format=layout)
    with contextlib.suppress(ImportError):  # an older bnnkit: no bfloat16 maps handed over
        from bnnkit.nn.batchnorm import link_bfloat16_maps

        link_bfloat16_maps(net)
    optimizer, latent = make_optimizer(net, cfg.recipe), latent_weights(net)
    reference = fp32_twin(cfg.build_model())
    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    ds = load_dataset(DATASET, "train")
    x = to_unit_float(torch.from_numpy(ds.x[:BATCH]))
    y = torch.from_numpy(ds.y[:BATCH]).long()
    x_bnnkit = in_memory_format(x, layout)

    # (module, forward operands, backward operands and output gradient, input needs a gradient)
    convs = []

    def record(module, inputs, output):
        xin = inputs[0].detach().contiguous(memory_format=layout)
        w = module.weight.detach()
        forward = backward = (xin, w)
        if isinstance(module, BinaryConv2d) and module._signs_only():
            xin, w = xin.sign(), w.sign()
            fast_forward, fast_backward = _bf16_step(xin, w)
            # bnnkit's exact forward casts the float32 weights itself (in two halves where one would round)
            forward = (xin.bfloat16(), w) if fast_forward else (xin, w)
            backward = (xin.bfloat16(), w.bfloat16()) if fast_backward else (xin, w)
        grad = torch.randn(output.shape, dtype=backward[0].dtype).contiguous(memory_format=layout)
        convs.append((module, forward, (*backward, grad), inputs[0].requires_grad))

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with bnnkit_precision(False):
        net(x_bnnkit)
    for h in hooks:
        h.remove()

    def bnnkit_step():
        with bnnkit_precision(False):
            float_step()

    def float_step():
        loss = F.cross_entropy(net(x_bnnkit), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip_weights_(latent, cfg.recipe.latent_clip)

    def reference_step():
        loss = F.cross_entropy(reference(x), y)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()

    def convolutions():
        for m, (xf, wf), (xb, wb, grad), input_grad in convs:
            forward = bf16.binary_conv2d if xf.dtype == torch.bfloat16 else F.conv2d
            forward(xf, wf, None, m.stride, m.padding, m.dilation, m.groups)
            torch.ops.aten.convolution_backward(
                grad, xb, wb, None, m.stride, m.padding, m.dilation, False, [0, 0], m.groups, [input_grad, True, False]
            )

    def cpu_ms(step) -> float:
        start = time.process_time()
        for _ in range(steps):
            step()
        return (time.process_time() - start) / steps * 1000

    def bnnkit_fp32_step():
        with bnnkit_precision(True):
            float_step()

    def aten_batchnorm_step():
        with atens_batchnorm():
            bnnkit_step()

    # (module, attribute, its linked value): products handed to the BatchNorms, signs from them
    links = [(m, "feeds_batchnorm", True) for m in net.modules() if getattr(m, "feeds_batchnorm", False)]
    links += [(m, "sign_reader", m.sign_reader) for m in net.modules() if getattr(m, "sign_reader", ())]

    def unlinked_step():
        """bnnkit's step with every convolution widening its product and making its sign itself (the same bits)."""
        for m, name, _ in links:
            setattr(m, name, type(getattr(m, name))())  # False, ()
        try:
            bnnkit_step()
        finally:
            for m, name, value in links:
                setattr(m, name, value)

    steppers = (bnnkit_step, reference_step, convolutions, bnnkit_fp32_step, aten_batchnorm_step, unlinked_step)
    for step in steppers:
        step()  # first calls: oneDNN's kernel choice, the allocator
    times = [tuple(cpu_ms(step) for step in steppers) for _ in range(rounds)]
    b, r, c, f, a, u = (statistics.median(column) for column in zip(*times, strict=True))
    # forward, weight gradient and (where asked) input gradient: one product of the layer's size each
    macs = sum(grad.numel() * w[0].numel() * (2 + needs) for _, _, (_, w, grad), needs in convs)
    return {
        "bnnkit_ms": b,
        "reference_ms": r,
        "convolutions_ms": c,
        "bnnkit_all_fp32_ms": f,
        "aten_batchnorm_ms": a,
        "unlinked_ms": u,
        "ratio": b / r,
        "convolutions_ratio": c / r,
        "convolutions_gmacs": macs / c / 1e6,
        "all_fp32_ratio": f / r,
        # the same steps alternated, so this ratio holds on a busy machine where the others drift
        "host_over_aten_batchnorm": statistics.median(t[0] / t[4] for t in times),
        "linked_over_unlinked": statistics.median(t[0] / t[5] for t in times),
    }


def gemm_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """G multiply-adds per second of one large matrix product per dtype on 1 thread (best of
    ``repeats``): what this core's kernels reach where nothing but arithmetic limits them, the
    yardstick for the convolutions' rate."""
    torch.set_num_threads(1)
    rates = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = (torch.randn(n, n).to(dtype) for _ in "ab")
        a @ b
        walls = []
        for _ in range(repeats):
            with timer() as t:
                a @ b
            walls.append(t.wall)
        rates[str(dtype).removeprefix("torch.")] = n**3 / min(walls) / 1e9
    return rates


# --- --profile -------------------------------------------------------------------------

# Top-level profiler events by name (forward ops and backward nodes alike), first match wins.
CATEGORIES = [
    ("Bf16Conv", "convolution"),  # bnnkit.nn.bf16's autograd functions
    ("Bf16Linear", "linear"),
    ("onvolution", "convolution"),
    ("conv", "convolution"),
    ("atch_norm", "batchnorm"),
    ("BatchNorm", "batchnorm"),
    ("ax_pool", "max-pool"),
    ("MaxPool", "max-pool"),
    ("Sign", "quantizers"),
    ("Mm", "linear"),
    ("Addmm", "linear"),
    ("linear", "linear"),
    ("Optimizer.", "optimizer"),
    ("_local_scalar_dense", "host syncs (.item)"),
    ("aten::item", "host syncs (.item)"),
    ("cross_entropy", "loss"),
    ("NllLoss", "loss"),
    ("LogSoftmax", "loss"),
]
# The loop's helpers, by the names it imports them under (old and new loops), and their part.
RANGES = {
    "batches": "batches and augmentation",
    "_evaluation_sums": "evaluation (test set)",
    "save_weights": "checkpoint",
    "save_state": "checkpoint",
    "atomic_write": "checkpoint",
    "plot_curves": "curves.png",
    "load_dataset": "reading the dataset",
    "clip_latent_weights_": "latent clipping",
    "clip_weights_": "latent clipping",
    "set_lr": "schedules",
    "set_training_progress": "schedules",
    "choose_threads": "choosing threads",
}


def _ranged(name: str, fn, iterator: bool = False):
    from torch.profiler import record_function

    def call(*args, **kwargs):
        with record_function("part:" + name):
            return fn(*args, **kwargs)

    def iterate(*args, **kwargs):
        items = iter(fn(*args, **kwargs))
        while True:
            with record_function("part:" + name):
                item = next(items, None)
            if item is None:
                return
            yield item

    return iterate if iterator else call


def profile(model: str, limit: int) -> list[tuple[str, float]]:
    """(part, seconds) of one profiled ``train`` call, largest first; the rest is Python."""
    from torch.profiler import profile as torch_profile
    from torch.profiler import record_function

    import bnnkit.quant.sign as sign
    import bnnkit.training.loop as loop

    for attr, part in RANGES.items():
        if hasattr(loop, attr):
            setattr(loop, attr, _ranged(part, getattr(loop, attr), iterator=attr == "batches"))
    for attr in ("_SignFunction", "_ClippedSignFunction"):
        if hasattr(sign, attr):
            getattr(sign, attr).apply = _ranged("quantizers", getattr(sign, attr).apply)
    run_bnnkit(model, 2 * BATCH, 1)  # imports and caches outside the profile
    with torch_profile() as prof, record_function("part:total"):
        run_bnnkit(model, limit, 1)
    events = prof.events()
    total = next(e for e in events if e.name == "part:total")
    sums: dict[str, float] = {}
    for e in events:
        if e.cpu_parent is total or (e.cpu_parent is None and e is not total):
            named = e.name[5:] if e.name.startswith("part:") else None
            part = named or next((c for k, c in CATEGORIES if k in e.name), "other ops")
            sums[part] = sums.get(part, 0.0) + e.cpu_time_total / 1e6
    sums["Python, tqdm, rest"] = total.cpu_time_total / 1e6 - sum(sums.values())
    return sorted(sums.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(LIMITS), help=f"comma-separated, of {', '.join(LIMITS)}")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per measurement (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the training images per model")
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound background processes (default 2; 0 skips)")
    parser.add_argument(
        "--hogs-scale",
        type=float,
        default=0.25,
        help="multiply the training images beside the hogs (default 0.25: everything runs slower there)",
    )
    parser.add_argument(
        "--profile", metavar="MODEL", help="break one epoch of MODEL down instead (60,000 images x --scale)"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="per training step instead: bnnkit, the reference, and the float32 convolution backward alone",
    )
    parser.add_argument(
        "--fp32-too",
        action="store_true",
        help="also time bnnkit with its binary layers all in float32 (forward and gradients; quiet only)",
    )
    parser.add_argument(
        "--same-allocator",
        action="store_true",
        help="the reference keeps freed memory as bnnkit's training does (bnnkit.training.allocator)",
    )
    parser.add_argument("--serve-reference", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve_reference:
        serve_reference(args.serve_reference, args.same_allocator)
        return
    if args.profile:
        limit = round(60_000 * args.scale)
        parts = profile(args.profile, limit)
        total = sum(s for _, s in parts)
        print(
            f"{args.profile}: one epoch, {limit} images, 1 thread, {total:.1f} s under the profiler; "
            f"load average {os.getloadavg()[0]:.2f}\n\n| part | s | % |\n| --- | ---: | ---: |"
        )
        print("\n".join(f"| {part} | {sec:.2f} | {100 * sec / total:.1f} |" for part, sec in parts))
        return
    models = args.models.split(",")
    unknown = sorted(set(models) - set(LIMITS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}")
    limits = {m: max(6 * BATCH, round(LIMITS[m] * args.scale)) for m in models}
    if args.floor:
        load = os.getloadavg()[0]
        floors = {m: floor(m, steps=10, rounds=args.rounds) for m in models}
        rates = gemm_rates()
        if args.json:
            report = {"load_before": load, "rounds": args.rounds, "batch": BATCH, "gemm_gmacs": rates}
            print(json.dumps({**report, "models": floors}))
            return
        print(f"CPU ms per step, batch {BATCH}, 1 thread, median of {args.rounds} rounds; load {load:.2f}")
        print(
            "this core's matrix product, 2048³, G multiply-adds/s: "
            + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
        )
        print(
            "| model | bnnkit step | reference step | ratio | all float32: step | ratio "
            "| convolutions alone | ÷ reference | ATen's BatchNorm: step | bnnkit ÷ that "
            "| maps not handed over: step | bnnkit ÷ that |"
        )
        print("| --- |" + " ---: |" * 11)
        for m, f in floors.items():
            print(
                f"| {m} | {f['bnnkit_ms']:.1f} | {f['reference_ms']:.1f} | {f['ratio']:.2f} | "
                f"{f['bnnkit_all_fp32_ms']:.1f} | {f['all_fp32_ratio']:.2f} | "
                f"{f['convolutions_ms']:.1f} ({f['convolutions_gmacs']:.0f} GMAC/s) | {f['convolutions_ratio']:.2f} | "
                f"{f['aten_batchnorm_ms']:.1f} | {f['host_over_aten_batchnorm']:.2f} | "
                f"{f['unlinked_ms']:.1f} | {f['linked_over_unlinked']:.2f} |"
            )
        return

    for m in models:  # warm-up: imports (matplotlib, torch's optimisers), allocator, caches
        run_bnnkit(m, 2 * BATCH, 1)
    report = {
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "batch": BATCH,
        "load_before": os.getloadavg(),
        "reference_allocator": "bnnkit's" if args.same_allocator else "glibc's defaults",
        "models": {},
    }
    for m in models:
        quiet = compare(m, limits[m], args.rounds, args.fp32_too, args.same_allocator)
        report["models"][m] = {"limit_train": limits[m], "quiet": quiet}
    if args.hogs:
        with cpu_hogs(args.hogs):
            for m in models:
                row = report["models"][m]
                row["hogs_limit_train"] = limit = max(6 * BATCH, round(limits[m] * args.hogs_scale))
                row["hogs"] = compare(m, limit, args.rounds, same_allocator=args.same_allocator)
                row["threads_under_hogs"] = thread_default_vs_one(m, limit, args.rounds)
    report["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report))
        return
    print(
        "bnnkit train vs minimal eager FP32 loop, 1 thread; time ratio (lower is faster), "
        f"median of {args.rounds} rounds"
    )
    print(
        f"torch {report['torch']}, {report['cores']} cores, load average before {report['load_before'][0]:.2f}, "
        f"after {report['load_after'][0]:.2f}; beside {args.hogs} CPU hogs"
    )
    print(
        f"{'model':14s} {'images':>7s} {'bnnkit img/s':>13s} {'ref img/s':>10s} {'ratio':>6s} {'(CPU)':>6s} "
        f"{'hogs ratio':>11s} {'(CPU)':>6s} {'default/1 thread, hogs':>23s}",
        end="",
    )
    # bnnkit with its binary convolutions' forward in float32, against the same reference
    print(f" {'fp32 ratio':>10s} {'(CPU)':>6s}" if args.fp32_too else "")
    for m, row in report["models"].items():
        q, h, t = row["quiet"], row.get("hogs"), row.get("threads_under_hogs")
        hogs = f"{h['ratio']:11.2f} {h['cpu_ratio']:6.2f}" if h else f"{'-':>11s} {'-':>6s}"
        threads = f"{t['ratio']:23.2f}" if t else f"{'-':>23s}"
        print(
            f"{m:14s} {row['limit_train']:7d} {q['bnnkit_images_per_s']:13.0f} {q['reference_images_per_s']:10.0f} "
            f"{q['ratio']:6.2f} {q['cpu_ratio']:6.2f} {hogs} {threads}",
            end="",
        )
        print(f" {q['all_fp32_ratio']:10.2f} {q['all_fp32_cpu_ratio']:6.2f}" if args.fp32_too else "")


if __name__ == "__main__":
    main()
