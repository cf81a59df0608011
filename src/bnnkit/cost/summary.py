"""Per-layer parameter, bit, MAC and memory counts of a model, like Larq's ``summary``.

Counted by tracing one forward pass with hooks, so the shapes are the ones the model
really produces. Conventions: a MAC is *binary* when both operands are ±1 (an
XNOR-popcount on the device); every other multiply-accumulate is an FP MAC, BatchNorm
and per-channel scaling counting one FP MAC per output element. Weights whose kernel
quantizer is binary cost 1 bit; every other stored value (BN statistics included, as
they are needed at inference) costs 32 bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

from bnnkit.cost.formatting import kib, render_table
from bnnkit.nn import BinaryConv2d, BinaryLinear, InputNorm, RPReLU
from bnnkit.quant import Quantizer

# Layers with a cost of their own; residual blocks (with a ``residual_adds`` attribute)
# are counted for their additions.
COUNTED = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    InputNorm,
    nn.PReLU,
    RPReLU,
)


@runtime_checkable
class ResidualBlock(Protocol):
    """A block that adds a shortcut to its output (``bnnkit.models.resnet.BasicBlock``)."""

    @property
    def residual_adds(self) -> int: ...


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int
    binary_params: int
    fp_params: int
    binary_macs: int
    fp_macs: int

    @property
    def memory_bytes(self) -> float:
        return (self.binary_params + 32 * self.fp_params) / 8

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out_shape": list(self.out_shape), "memory_bytes": self.memory_bytes}


def binary_bases(quantizer: Quantizer | None) -> int:
    """How many binary tensors a quantized operand is computed from: 1 for a sign, M for
    ABC-Net's M binary bases, k bit planes for k-bit values (DoReFa); 0 for full precision.
    A product of an M-base and an N-base operand is M·N binary products, summed in FP."""
    bits = 32 if quantizer is None else getattr(quantizer, "bits", 32)
    return bits if bits < 32 else 0


def _conv_or_linear(module: nn.Conv2d | nn.Linear, x: torch.Tensor, out_elems: int) -> tuple[int, int, int]:
    """(binary weights stored, binary MACs, FP MACs) of a convolution or linear layer."""
    macs = out_elems * module.weight[0].numel()
    w_bases = i_bases = 0
    if isinstance(module, (BinaryConv2d, BinaryLinear)):
        w_bases, i_bases = binary_bases(module.kernel_quantizer), binary_bases(module.input_quantizer)
    binary_params = w_bases * module.weight.numel()
    if w_bases and i_bases:
        binary_macs, fp_macs = macs * w_bases * i_bases, 0
        if w_bases * i_bases > 1:  # the partial products, weighted (α_i·β_j or 2^j) and summed
            fp_macs += out_elems * w_bases * i_bases
    else:
        binary_macs, fp_macs = 0, macs
    if getattr(module, "weight_scale", "none") != "none":
        fp_macs += out_elems
    if getattr(module, "activation_scale", "none") != "none":
        # XNOR-Net's K: mean |x| over the input channels, its k×k box filter, one multiply per output
        taps = math.prod(module.kernel_size) if isinstance(module, nn.Conv2d) else 1
        positions = out_elems // module.weight.shape[0]
        fp_macs += x[0].numel() + positions * taps + out_elems
    if module.bias is not None:
        fp_macs += out_elems
    return binary_params, binary_macs, fp_macs


def _layer_cost(name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> LayerCost:
    out_elems = out[0].numel()
    binary_params = binary_macs = fp_macs = 0
    if isinstance(module, ResidualBlock):
        # a residual block: its layers are counted on their own, the block adds its additions
        params, fp_macs = 0, module.residual_adds * out_elems
    else:
        tensors = [t for key, t in module.state_dict().items() if not key.endswith("num_batches_tracked")]
        params = sum(t.numel() for t in tensors)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        binary_params, binary_macs, fp_macs = _conv_or_linear(module, x, out_elems)
        if binary_params:  # the device stores the binary bases, not the latent weights
            params += binary_params - module.weight.numel()
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, InputNorm, nn.PReLU)):
        fp_macs = out_elems
    elif isinstance(module, RPReLU):
        fp_macs = 3 * out_elems  # shift, PReLU, shift
    return LayerCost(
        name=name,
        kind=type(module).__name__,
        out_shape=tuple(out.shape[1:]),
        params=params,
        binary_params=binary_params,
        fp_params=params - binary_params,
        binary_macs=binary_macs,
        fp_macs=fp_macs,
    )


def layer_costs(model: nn.Module, in_shape: tuple[int, int, int]) -> list[LayerCost]:
    """One row per counted layer, in execution order, for a single input of ``in_shape``."""
    rows: list[LayerCost] = []
    hooks = [
        module.register_forward_hook(lambda m, inp, out, name=name: rows.append(_layer_cost(name, m, inp[0], out)))
        for name, module in model.named_modules()
        if isinstance(module, COUNTED) or hasattr(module, "residual_adds")
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return rows


class Totals(TypedDict):
    params: int
    binary_params: int
    fp_params: int
    binary_macs: int
    fp_macs: int
    memory_bytes: float
    fp32_memory_bytes: int  # what the same network would need with every weight in 32-bit float


def totals(rows: list[LayerCost]) -> Totals:
    params = sum(r.params for r in rows)
    return Totals(
        params=params,
        binary_params=sum(r.binary_params for r in rows),
        fp_params=sum(r.fp_params for r in rows),
        binary_macs=sum(r.binary_macs for r in rows),
        fp_macs=sum(r.fp_macs for r in rows),
        memory_bytes=sum(r.memory_bytes for r in rows),
        fp32_memory_bytes=4 * params,
    )


def format_table(rows: list[LayerCost]) -> str:
    header = ("layer", "type", "output", "params", "1-bit", "32-bit", "binary MACs", "FP MACs", "memory")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.name,
                r.kind,
                "x".join(map(str, r.out_shape)),
                f"{r.params:,}",
                f"{r.binary_params:,}",
                f"{r.fp_params:,}",
                f"{r.binary_macs:,}",
                f"{r.fp_macs:,}",
                kib(r.memory_bytes),
            )
        )
    t = totals(rows)
    lines.append(
        (
            "total",
            "",
            "",
            f"{t['params']:,}",
            f"{t['binary_params']:,}",
            f"{t['fp_params']:,}",
            f"{t['binary_macs']:,}",
            f"{t['fp_macs']:,}",
            kib(t["memory_bytes"]),
        )
    )
    text = render_table(lines, left=3)
    ratio = t["fp32_memory_bytes"] / t["memory_bytes"] if t["memory_bytes"] else math.nan
    text.append(f"memory {kib(t['memory_bytes'])} vs {kib(t['fp32_memory_bytes'])} in float32 ({ratio:.1f}x smaller)")
    return "\n".join(text)
