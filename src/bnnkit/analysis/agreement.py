"""Check an exported graph against the module it came from, on real images (``bnnkit export``'s check).

For a fully binary chain the graph must reproduce every sign the module computes: the
input of each binary layer is captured from the module (its input quantizer's output)
and compared bit for bit with the tensor the graph feeds the matching op. The final
scores are float32 along different roundings, so for them the check is top-1 agreement.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.export import export_run
from bnnkit.export.fixed import to_fixed
from bnnkit.export.int8 import MAX_CALIBRATION
from bnnkit.graph import Graph
from bnnkit.nn import BinaryConv2d, BinaryLinear
from bnnkit.runtime.evaluate import test_images
from bnnkit.runtime.numpy_ref import execute, predict

REAL_FORMATS = ("float32", "fixed")  # bnnkit export --real: the number format of the real-valued stream


@torch.no_grad()
def compare(model: nn.Module, graph: Graph, x: np.ndarray, batch_size: int = 500) -> dict:
    """Module vs graph on uint8 images ``x`` (N, C, H, W): top-1 agreement, and per binary
    layer the fraction of input signs that agree (1.0 everywhere when exact)."""
    model.eval()
    quantizers = {
        n: q
        for n, m in model.named_modules()
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and (q := m.input_quantizer) is not None
    }
    consumers = {op.name: op for op in graph.ops if op.name in quantizers}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        quantizers[n].register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out)) for n in consumers
    ]
    equal = dict.fromkeys(consumers, 0)
    total = dict.fromkeys(consumers, 0)
    module_labels, graph_labels, graph_scores = [], [], []
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            logits = model(torch.from_numpy(xb).float().div_(255))
            env = execute(graph, xb, keep=True)
            for n, op in consumers.items():
                ours = env[op.inputs[0]].reshape(captured[n].shape)
                equal[n] += int(((captured[n] > 0).numpy() == ours).sum())
                total[n] += ours.size
            module_labels.append(logits.argmax(1).numpy())
            graph_labels.append(env[graph.ops[-1].output])
            graph_scores.append(env[graph.scores])
    finally:
        for h in hooks:
            h.remove()
    module_top1, graph_top1 = np.concatenate(module_labels), np.concatenate(graph_labels)
    agree = float(np.mean(module_top1 == graph_top1)) if len(x) else 1.0
    return {
        "n": len(x),
        "top1_agreement": agree,
        "sign_agreement": {n: equal[n] / total[n] for n in consumers if total[n]},
        "module_labels": module_top1,
        "graph_labels": graph_top1,
        "graph_scores": np.concatenate(graph_scores) if graph_scores else None,
    }


def export_and_check(
    run_dir,
    output,
    check: int = 1000,
    allow_approx: bool = False,
    data_dir: str | None = None,
    real: str = "float32",
    calibration: int = 2000,
) -> dict:
    """``bnnkit export``: write the graph of a run, then compare it with the module on the
    first ``check`` test images. ``real="fixed"`` writes the fixed-point twin of the graph
    (``bnnkit.export.fixed``), its fraction set on the first ``calibration`` training images,
    and compares it with the float32 graph too."""
    if check < 0:
        raise BnnkitError(f"--check must be >= 0, got {check}")
    if real not in REAL_FORMATS:
        raise BnnkitError(f"--real must be one of {', '.join(REAL_FORMATS)}, got {real!r}")
    if not 1 <= calibration <= MAX_CALIBRATION:
        raise BnnkitError(f"--calibration must be 1..{MAX_CALIBRATION} images, got {calibration}")
    graph, model, config = export_run(run_dir, allow_approx)
    data_dir = data_dir or config.data_dir
    float_graph = graph
    if real == "fixed":
        train = load_dataset(config.dataset, "train", data_dir)
        graph = to_fixed(graph, train.x[:calibration])
    graph.save(output)
    result = {"output": str(output), "ops": len(graph.ops), "approximations": graph.meta["approximations"]}
    if real == "fixed":
        result.update(q32_fraction=graph.meta["q32_fraction"], calibration_images=min(calibration, len(train.x)))
    n, top1, signs = 0, 1.0, 1.0
    if check:
        _, x, _ = test_images(graph, None, check, data_dir)
        cmp = compare(model, graph, x)
        n, top1 = cmp["n"], cmp["top1_agreement"]
        signs = min(cmp["sign_agreement"].values(), default=1.0)
        result["sign_agreement_per_layer"] = cmp["sign_agreement"]
        if real == "fixed":
            result["float32_graph_agreement"] = float(np.mean(predict(float_graph, x)[1] == cmp["graph_labels"]))
    return {**result, "n": n, "top1_agreement": top1, "sign_agreement": signs}
