"""Binary layers on the host: bnnkit's C kernels against PyTorch FP32 and NumPy.

    python benchmarks/bconv.py [--quick] [--shapes large,resnet20-s3] [--threads 1,2] [--isa avx2] [--json]

One table, every figure from this run. Per layer (threshold fused, packed bits out, as
deployed) and thread count:

* ms, binary GOPS: 2 binary operations (XNOR, popcount-accumulate) per bit product, as
  FLOPs count 2 per multiply-add;
* × PyTorch FP32: time of ``torch.nn.functional.conv2d`` (``linear`` for dense layers) on
  float32 tensors of the same shape and batch, same thread count, over ours;
* × NumPy: time of a ``np.bitwise_count`` XOR-popcount GEMM on the same packed patches
  (im2col done beforehand, not timed; NumPy runs one thread) over ours;
* roofline: bit products per second over the peak of the same micro-kernel on
  L1-resident data (``fast.popcount_peak``, one thread, × threads).

End to end: images/s of the exported Fashion-MNIST models (untrained: speed does not
depend on the weights) in ``FastModel`` against their FP32 twins in PyTorch (the same
architecture with the identity quantizer), Fashion-MNIST test images when installed,
batch 500; × NumPy is against the reference interpreter ``numpy_ref``.
Times are the best of repeated runs, which discounts other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from bnnkit.errors import BnnkitError
from bnnkit.export import export_model
from bnnkit.graph import Op, pair
from bnnkit.models import create_model
from bnnkit.recipe import load_recipe
from bnnkit.runtime import fast, numpy_ref

# name: (batch, C, H, W, O, kernel, stride, padding)
SHAPES = {
    "large": (1, 512, 32, 32, 256, 3, 1, 1),
    "resnet20-s1": (1, 16, 32, 32, 16, 3, 1, 1),
    "resnet20-s3": (1, 64, 8, 8, 64, 3, 1, 1),
}
FMNIST_MODELS = ("ebnn_cnn", "small_cnn", "binarynet_mlp")
FMNIST_LAYER_BATCH = 64  # a server batches; one image would leave dense layers a matrix-vector product
QUICK = ("resnet20-s3", "ebnn_cnn")
IN_SHAPE = (1, 28, 28)


def best_seconds(fn, budget: float, min_runs: int = 3) -> float:
    fn()  # warm-up: caches, thread pools, first-touch pages
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or spent < budget:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


# --- layers ---------------------------------------------------------------------------


def shape_op(name: str, rng) -> tuple[Op, int, tuple[int, ...]]:
    n, c, h, w, o, k, s, p = SHAPES[name]
    op = Op(
        "binary_conv2d",
        ["x"],
        "y",
        {"stride": s, "padding": p, "pad": "zero"},
        {"weight": rng.random((o, c, k, k)) < 0.5},
        name,
    )
    return op, n, (c, h, w)


def model_graph(model: str, recipe: str = "embedded"):
    return export_model(create_model(model, 10, IN_SHAPE, load_recipe(recipe)).eval(), IN_SHAPE)


def fmnist_layers() -> list[tuple[Op, int, tuple[int, ...]]]:
    out = []
    for model in FMNIST_MODELS:
        g = model_graph(model)
        for op in g.ops:
            if op.kind in ("binary_conv2d", "binary_dense"):
                op.name = f"{model}/{op.name}"
                out.append((op, FMNIST_LAYER_BATCH, g.types[op.inputs[0]][1]))
    return out


def describe(op: Op, n: int, in_shape) -> str:
    o = op.params["weight"].shape[0]
    if op.kind == "binary_dense":
        return f"{op.name}: dense {in_shape[0]}→{o}, N={n}"
    k, s = op.params["weight"].shape[2], pair(op.attrs["stride"])[0]
    return f"{op.name}: {n}×{in_shape[1]}×{in_shape[2]}×{in_shape[0]}→{o}, {k}×{k}" + (f"/{s}" if s > 1 else "")


def im2col_words(op: Op, bits: np.ndarray) -> np.ndarray:
    """Packed patches (pixels, words) in the kernels' (kh, kw, C) order, padding read as −1."""
    if op.kind == "binary_dense":
        return fast.Packed.from_bits(bits).words
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    k = op.params["weight"].shape[2]
    padded = np.pad(bits, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::sh, ::sw]
    rows = win.transpose(0, 2, 3, 4, 5, 1).reshape(-1, k * k * bits.shape[1])
    return fast.Packed.from_bits(rows).words


def numpy_gemm(patches: np.ndarray, weights: np.ndarray, fan_in: int) -> np.ndarray:
    """±1 sums by XOR and np.bitwise_count, a slab of pixels at a time (bounded temporaries)."""
    step = max(1, 2**20 // (weights.size or 1))
    out = [
        fan_in - 2 * np.bitwise_count(patches[i : i + step, None, :] ^ weights[None]).sum(axis=2, dtype=np.int32)
        for i in range(0, len(patches), step)
    ]
    return np.concatenate(out)


def torch_layer(op: Op, n: int, in_shape):
    x = torch.randn(n, *in_shape)
    w = torch.randn(op.params["weight"].shape)
    if op.kind == "binary_dense":
        return lambda: F.linear(x, w)
    return lambda: F.conv2d(x, w, stride=pair(op.attrs["stride"]), padding=pair(op.attrs["padding"]))


def bench_layer(op: Op, n: int, in_shape, isa: str, threads: list[int], peak: float, budget: float, rng) -> list[dict]:
    bits = rng.random((n, *in_shape)) < 0.5
    o = op.params["weight"].shape[0]
    th = Op("threshold", ["y"], "z", {}, {"thresh": np.zeros(o, np.int32), "flip": rng.random(o) < 0.3})
    layer = fast.Layer(op, in_shape, th)
    x = fast.Packed.from_bits(bits)
    products = n * int(np.prod(layer.out_shape)) * int(np.prod(op.params["weight"].shape[1:]))
    taps = np.ascontiguousarray(
        op.params["weight"].reshape(o, *op.params["weight"].shape[1:2], -1).transpose(0, 2, 1).reshape(o, -1)
    )
    patches, weights = im2col_words(op, bits), fast.Packed.from_bits(taps).words
    numpy_s = best_seconds(lambda: numpy_gemm(patches, weights, taps.shape[1]), budget, min_runs=1)
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        ours = best_seconds(lambda t=t: layer(x, isa, t), budget)
        pytorch = best_seconds(torch_layer(op, n, in_shape), budget)
        rows.append(
            {
                "case": describe(op, n, in_shape),
                "threads": t,
                "ms": 1e3 * ours,
                "gops": 2 * products / ours / 1e9,
                "images_per_s": None,
                "x_torch": pytorch / ours,
                "x_numpy": numpy_s / ours,
                "roofline": products / ours / (peak * t),
            }
        )
    return rows


# --- end to end -----------------------------------------------------------------------


def test_images(count: int) -> tuple[np.ndarray, str]:
    from bnnkit.data import load_dataset

    try:
        return load_dataset("fashion_mnist", "test").x[:count], "Fashion-MNIST test"
    except BnnkitError:
        return np.random.default_rng(0).integers(0, 256, (count, *IN_SHAPE), dtype=np.uint8), "random"


def graph_products(graph) -> int:
    """Bit products of one image in the binary layers."""
    return sum(
        int(np.prod(graph.types[op.output][1])) * int(np.prod(op.params["weight"].shape[1:]))
        for op in graph.ops
        if op.kind in ("binary_conv2d", "binary_dense")
    )


def bench_model(name: str, x: np.ndarray, isa: str, threads: list[int], budget: float) -> list[dict]:
    graph = model_graph(name)
    twin_recipe = load_recipe("embedded").with_(
        name="fp-twin", input_quantizer="identity", kernel_quantizer="identity", latent_clip=0.0
    )
    twin = create_model(name, 10, IN_SHAPE, twin_recipe).eval()
    xt = torch.from_numpy(x).float().div_(255)
    numpy_s = best_seconds(lambda: numpy_ref.predict(graph, x, batch_size=500), budget, min_runs=1)

    def pytorch():
        with torch.inference_mode():
            for i in range(0, len(xt), 500):
                twin(xt[i : i + 500])

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        model = fast.FastModel(graph, isa, t)
        ours = best_seconds(lambda model=model: model.predict(x, batch_size=500), budget)
        torch_s = best_seconds(pytorch, budget)
        rows.append(
            {
                "case": f"end to end: {name}, {len(x)} images",
                "threads": t,
                "ms": 1e3 * ours,
                "gops": 2 * graph_products(graph) * len(x) / ours / 1e9,
                "images_per_s": len(x) / ours,
                "x_torch": torch_s / ours,
                "x_numpy": numpy_s / ours,
                "roofline": None,
            }
        )
    return rows


# --- table ----------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    def cell(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [
        "| case | threads | ms | binary GOPS | images/s | × PyTorch FP32 | × NumPy | of roofline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['ms']:.3f} | {r['gops']:.0f} | {cell(r['images_per_s'], ',.0f')} | "
            f"{r['x_torch']:.1f} | {r['x_numpy']:.0f} | {cell(r['roofline'], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shapes",
        help=f"comma-separated from {', '.join([*SHAPES, *FMNIST_MODELS])} (a model: its layers and its end-to-end run)",
    )
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, 1,000 images, short timings")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--isa", choices=fast.ISAS, help="micro-kernel (default: the best this CPU runs)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    picked = args.shapes.split(",") if args.shapes else QUICK if args.quick else [*SHAPES, *FMNIST_MODELS]
    unknown = sorted(set(picked) - set(SHAPES) - set(FMNIST_MODELS))
    if unknown:
        ap.error(f"unknown shapes {unknown}")
    threads = [int(t) for t in args.threads.split(",")]
    isa, budget, count = fast.resolve_isa(args.isa), (0.2 if args.quick else 1.0), (1000 if args.quick else 10_000)
    rng = np.random.default_rng(0)
    peak = fast.popcount_peak(isa, seconds=budget)

    rows = []
    layers = [shape_op(name, rng) for name in picked if name in SHAPES]
    layers += [layer for layer in fmnist_layers() if layer[0].name.split("/")[0] in picked]
    for op, n, in_shape in layers:
        rows += bench_layer(op, n, in_shape, isa, threads, peak, budget, rng)
    x, source = test_images(count)
    for name in (m for m in FMNIST_MODELS if m in picked):
        rows += bench_model(name, x, isa, threads, budget)

    header = {
        "isa": isa,
        "popcount_peak_gops": 2 * peak / 1e9,
        "images": source,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps({**header, "rows": rows}))
        return
    print(
        f"micro-kernel {isa}: popcount roofline {2 * peak / 1e9:.0f} binary GOPS per thread; "
        f"PyTorch {torch.__version__}, NumPy {np.__version__}; end-to-end images: {source}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
