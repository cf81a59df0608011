"""The layers a recipe asks for: binary where it binarises, full precision where it keeps.

Larq-style ordering: a binary layer binarizes its own *input*, so the sign that follows a
BatchNorm lives in the next layer's ``input_quantizer`` and BN → sign can later be folded
into one integer threshold.
"""

from __future__ import annotations

from torch import nn

from bnnkit.nn import BinaryConv2d, BinaryLinear
from bnnkit.recipe import Recipe


class Layers:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def _binary(self) -> dict:
        r = self.recipe
        return dict(input_quantizer=r.input_quantizer, kernel_quantizer=r.kernel_quantizer, weight_scale=r.weight_scale)

    def conv(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
        """A binary convolution (binary input and weights), 'same' padding."""
        return BinaryConv2d(
            cin, cout, kernel, stride=stride, padding=kernel // 2, pad_value=self.recipe.pad_value, **self._binary()
        )

    def linear(self, fin: int, fout: int) -> nn.Module:
        return BinaryLinear(fin, fout, **self._binary())

    def first_conv(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
        """The layer that sees the real-valued image: FP, or binary weights on a real input."""
        if self.recipe.fp_first_layer:
            return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        binary = {**self._binary(), "input_quantizer": None}
        return BinaryConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, **binary)

    def first_linear(self, fin: int, fout: int) -> nn.Module:
        if self.recipe.fp_first_layer:
            return nn.Linear(fin, fout, bias=False)
        return BinaryLinear(fin, fout, **{**self._binary(), "input_quantizer": None})

    def classifier(self, fin: int, num_classes: int) -> nn.Module:
        """The last layer: an FP linear on real features, or a binary linear whose scores a BN scales."""
        if self.recipe.fp_last_layer:
            return nn.Linear(fin, num_classes)
        return nn.Sequential(self.linear(fin, num_classes), nn.BatchNorm1d(num_classes))

