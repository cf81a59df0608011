"""The BinaryNet multilayer perceptron (Courbariaux et al., 2016)."""

from __future__ import annotations

import math

from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models.layers import Layers
from bnnkit.models.registry import register_model
from bnnkit.recipe import Recipe


@register_model()
def binarynet_mlp(num_classes: int, in_shape: tuple, recipe: Recipe, *, width: int = 512, depth: int = 3) -> nn.Module:
    """``depth`` hidden layers of ``width`` units, each linear → BN, binarized by the next layer.

    The paper uses 3 × 4096 units for permutation-invariant MNIST; 512 trains in minutes
    on a CPU.
    """
    if width < 1 or depth < 1:
        raise BnnkitError(f"binarynet_mlp needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
    layers = Layers(recipe)
    width = layers.width(width)
    blocks: list[nn.Module] = [
        nn.Flatten(),
        layers.first_linear(math.prod(in_shape), width),
        *layers.norm(width, dims=1),
    ]
    for _ in range(depth - 1):
        blocks += [layers.linear(width, width), *layers.norm(width, dims=1)]
    blocks.append(layers.classifier(width, num_classes))
    return nn.Sequential(*blocks)
