"""The cost columns of the empirical review: one dict per model, from one traced forward pass.

Activations are sized as a device would store them: a tensor that only feeds binary
layers' activation binarizers is kept as 1 bit per element (k bits for k-bit
activations), every other one as a 32-bit float, and the image as 8-bit pixels. The peak
is the largest input + output pair of any counted layer, i.e. a two-buffer schedule
without the planner's fusion (``bnnkit profile`` gives the planned figure of an exported
graph).
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.cost import energy
from bnnkit.cost.summary import COUNTED, binary_bases, layer_costs, totals
from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.progress import progress as bar
from bnnkit.recipe import BASELINE, METHODS, apply_methods


def activation_sizes(model: nn.Module, in_shape: tuple[int, int, int]) -> list[tuple[str, float, float]]:
    """(layer, input bytes, output bytes) of each counted layer, in execution order."""
    image = torch.zeros(1, *in_shape)
    # Tensors are kept alive so that no storage is reused: a data pointer then names one
    # activation (views such as flatten share it, which is what a device does too).
    alive: list[torch.Tensor] = [image]
    outputs: dict[str, tuple[int, int]] = {}  # layer -> (storage written, elements)
    read_bits: dict[int, int] = {image.data_ptr(): 8}
    inputs: list[tuple[str, int, int]] = []  # (layer, storage read, elements)

    def before(name, module, args):
        x = args[0]
        alive.append(x)
        bits = binary_bases(getattr(module, "input_quantizer", None))  # bits per element, 0: float
        if bits:
            read_bits[x.data_ptr()] = min(bits, read_bits.get(x.data_ptr(), 32))
        inputs.append((name, x.data_ptr(), x[0].numel()))

    def after(name, _module, _args, out):
        alive.append(out)
        outputs[name] = (out.data_ptr(), out[0].numel())

    counted = [(n, m) for n, m in model.named_modules() if isinstance(m, COUNTED)]
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: before(n, m, a)) for n, m in counted]
    hooks += [m.register_forward_hook(lambda m, a, o, n=n: after(n, m, a, o)) for n, m in counted]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    def nbytes(ptr: int, elems: int) -> float:
        return elems * read_bits.get(ptr, 32) / 8

    return [(name, nbytes(ptr, elems), nbytes(*outputs[name])) for name, ptr, elems in inputs]


def model_costs(model: nn.Module, in_shape: tuple[int, int, int]) -> dict[str, float]:
    """Parameters, bits, binary and FP MACs, model bytes, activation bytes (peak and
    total) and the energy estimate (``bnnkit.cost.energy``) of one inference."""
    t = totals(layer_costs(model, in_shape))
    sizes = activation_sizes(model, in_shape)
    activation_bytes = sum(out for _, _, out in sizes)
    e = energy.energy_pj(
        binary_macs=t["binary_macs"],
        fp_macs=t["fp_macs"],
        weight_bytes=t["memory_bytes"],
        activation_bytes=activation_bytes,
    )
    return {
        "params": t["params"],
        "binary_params": t["binary_params"],
        "fp_params": t["fp_params"],
        "binary_macs": t["binary_macs"],
        "fp_macs": t["fp_macs"],
        "model_bytes": t["memory_bytes"],
        "peak_activation_bytes": max((i + o for _, i, o in sizes), default=0.0),
        "activation_bytes": activation_bytes,
        "energy_pj": e["total_pj"],
    }


def method_costs(
    model: str, num_classes: int, in_shape: tuple[int, int, int], *, progress: bool = False, **model_options
) -> dict[str, dict]:
    """``model_costs`` of the baseline and of every catalogue method applied to it alone;
    a method the model cannot use maps to ``{"error": why}``."""

    def costs(recipe):
        try:
            return model_costs(create_model(model, num_classes, in_shape, recipe, **model_options), in_shape)
        except BnnkitError as exc:
            return {"error": str(exc)}

    methods = bar(METHODS, desc=f"costing methods on {model}", unit="method", enabled=progress)
    return {"baseline": costs(BASELINE), **{name: costs(apply_methods(BASELINE, [name])) for name in methods}}
