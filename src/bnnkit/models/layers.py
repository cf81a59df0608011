"""The layers a recipe asks for: binary where it binarises, full precision where it keeps,
with the quantizers, scales, normalisations and activations of its repair methods.

Larq-style ordering: a binary layer binarizes its own *input*, so the sign that follows a
BatchNorm lives in the next layer's ``input_quantizer`` and BN → sign can later be folded
into one integer threshold.
"""

from __future__ import annotations

from typing import TypedDict

from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import (
    BatchNorm2d,
    BinaryConv2d,
    BinaryLinear,
    LearnableThreshold,
    MaxPool2x2,
    Prequantized,
    RPReLU,
    StandardizedWeights,
)
from bnnkit.quant import MultiBaseActivations, MultiBaseWeights, Quantizer, get_quantizer
from bnnkit.recipe import Recipe


class BinaryOptions(TypedDict):
    """The keyword arguments ``Layers`` gives every binary layer."""

    input_quantizer: Quantizer | None
    kernel_quantizer: Quantizer | None
    weight_scale: str
    activation_scale: str


class Layers:
    """Builds a model's layers in order. One piece of state: under ``pool_order =
    "bn_sign_pool"`` a pool's input is quantized by an explicit module, so the next binary
    layer built takes that input as it is (``Prequantized``)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self._quantized_by: Quantizer | None = None

    def width(self, units: float) -> int:
        """A hidden layer's width under the recipe's ``width_mult``."""
        return max(1, round(units * self.recipe.width_mult))

    # --- quantizers -------------------------------------------------------------------

    def activation_quantizer(self, channels: int) -> Quantizer | None:
        """What binarizes (or quantizes) an activation of ``channels`` channels; None for
        full-precision activations (``input_quantizer = "none"``)."""
        r = self.recipe
        if r.activation_bits > 1:
            return get_quantizer("dorefa", k_bit=r.activation_bits)
        if r.activation_bases > 1:
            return MultiBaseActivations(r.activation_bases, r.input_quantizer)
        if r.learnable_threshold:
            q = self._wrappable(get_quantizer(r.input_quantizer), "learnable_threshold", "input")
            return LearnableThreshold(channels, q)
        return get_quantizer(r.input_quantizer)

    def _wrappable(self, q: Quantizer | None, method: str, side: str) -> Quantizer:
        """``q``, the binarizer that ``method`` wraps: there must be one."""
        if q is None:
            raise BnnkitError(
                f'recipe {self.recipe.name!r}: {method} needs a binarizer to wrap, but {side}_quantizer is "none"'
            )
        return q

    def _input_quantizer(self, channels: int) -> Quantizer | None:
        by, self._quantized_by = self._quantized_by, None
        return self.activation_quantizer(channels) if by is None else Prequantized(by)

    def _kernel_quantizer(self, out_channels: int) -> Quantizer | None:
        r = self.recipe
        q = get_quantizer(r.kernel_quantizer)
        if r.weight_bases > 1:
            q = MultiBaseWeights(out_channels, r.weight_bases, q)
        if r.weight_norm != "standardize":
            return q
        return StandardizedWeights(self._wrappable(q, 'weight_norm = "standardize"', "kernel"))

    def _binary(self, in_channels: int | None, out_channels: int) -> BinaryOptions:
        """Options of a binary layer; ``in_channels=None`` for one on the real-valued image."""
        r = self.recipe
        return BinaryOptions(
            input_quantizer=None if in_channels is None else self._input_quantizer(in_channels),
            kernel_quantizer=self._kernel_quantizer(out_channels),
            weight_scale=r.weight_scale,
            activation_scale="none" if in_channels is None else r.activation_scale,
        )

    # --- layers -----------------------------------------------------------------------

    def conv(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
        """A binary convolution (binary input and weights), 'same' padding."""
        return BinaryConv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=kernel // 2,
            pad_value=self.recipe.pad_value,
            **self._binary(cin, cout),
        )

    def linear(self, fin: int, fout: int, channels: int | None = None) -> nn.Module:
        """A binary linear layer; ``channels``: of the feature map a ``Flatten`` made its
        ``fin`` inputs from (default ``fin``), for the per-channel parts of its quantizer."""
        return BinaryLinear(fin, fout, **self._binary(channels or fin, fout))

    def first_conv(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
        """The layer that sees the real-valued image: FP, or binary weights on a real input."""
        if self.recipe.fp_first_layer:
            return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        return BinaryConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, **self._binary(None, cout))

    def first_linear(self, fin: int, fout: int) -> nn.Module:
        if self.recipe.fp_first_layer:
            return nn.Linear(fin, fout, bias=False)
        return BinaryLinear(fin, fout, **self._binary(None, fout))

    def classifier(self, fin: int, num_classes: int, channels: int | None = None) -> nn.Module:
        """The last layer: an FP linear on real features, or a binary linear whose scores a
        BN scales (no activation after it: they are the scores)."""
        if self.recipe.fp_last_layer:
            return nn.Linear(fin, num_classes)
        return nn.Sequential(self.linear(fin, num_classes, channels), nn.BatchNorm1d(num_classes))

    # --- what follows a layer ---------------------------------------------------------

    def norm(self, channels: int, dims: int = 2) -> list[nn.Module]:
        """BatchNorm of the real-valued path, and the recipe's activation after it."""
        bn = BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
        return [bn, *self.activation(channels)]

    def activation(self, channels: int) -> list[nn.Module]:
        kind = self.recipe.activation
        if kind == "prelu":
            return [nn.PReLU(channels)]
        if kind == "relu":
            return [nn.ReLU()]
        return [RPReLU(channels)] if kind == "rprelu" else []

    def pooled_norm(self, channels: int) -> list[nn.Module]:
        """A 2×2 max-pool and the BatchNorm of a conv, in the recipe's ``pool_order``: on the
        integer sums before BN (BinaryNet, eBNN), or on the signs after an explicit
        quantizer (max of ±1 values is their OR)."""
        if self.recipe.pool_order == "pool_bn_sign":
            return [MaxPool2x2(), *self.norm(channels)]
        self._quantized_by = self.activation_quantizer(channels)
        # Full-precision activations have no sign to pool after: BN, then the pool.
        quantizer = [] if self._quantized_by is None else [self._quantized_by]
        return [*self.norm(channels), *quantizer, MaxPool2x2()]

    def feature_norm(self, channels: int) -> list[nn.Module]:
        """A BatchNorm in front of a binary layer's sign, where the recipe asks for one."""
        return [BatchNorm2d(channels)] if self.recipe.feature_norm else []
