"""Binary ResNets for CIFAR: ResNet-20 (He et al., 2016, §4.2) and the CIFAR variant of
ResNet-18 (3×3 stem, no stem pooling), the two networks of de Putter & Corporaal (2022)."""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models.layers import Layers
from bnnkit.models.registry import register_model
from bnnkit.recipe import Recipe


class BasicBlock(nn.Module):
    """Two binary 3×3 convolutions, each followed by BN, with one shortcut around both.

    The residual stream stays real-valued; each binary conv binarizes its own input.
    Where the shape changes, the baseline shortcut is a binary 1×1 strided conv → BN.
    """

    def __init__(self, layers: Layers, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = layers.conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = layers.conv(cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(layers.conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)


class ResNet(nn.Module):
    def __init__(self, layers: Layers, in_channels: int, num_classes: int, widths: list[int], blocks: list[int]):
        super().__init__()
        self.stem = nn.Sequential(layers.first_conv(in_channels, widths[0], 3), nn.BatchNorm2d(widths[0]))
        stages = []
        cin = widths[0]
        for i, (cout, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(layers, cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = layers.classifier(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


def _widths(base: list[int], width_mult: float, model: str) -> list[int]:
    if width_mult <= 0:
        raise BnnkitError(f"{model} needs width_mult > 0, got {width_mult}")
    return [max(1, round(w * width_mult)) for w in base]


@register_model
def resnet20(num_classes: int, in_shape: tuple, recipe: Recipe, *, width_mult: float = 1.0) -> nn.Module:
    """ResNet-20 for CIFAR: 16/32/64 channels × 3 basic blocks (about 0.27 M parameters)."""
    return ResNet(Layers(recipe), in_shape[0], num_classes, _widths([16, 32, 64], width_mult, "resnet20"), [3, 3, 3])


@register_model
def resnet18(num_classes: int, in_shape: tuple, recipe: Recipe, *, width_mult: float = 1.0) -> nn.Module:
    """ResNet-18, CIFAR variant: 64/128/256/512 channels × 2 basic blocks (about 11 M parameters)."""
    widths = _widths([64, 128, 256, 512], width_mult, "resnet18")
    return ResNet(Layers(recipe), in_shape[0], num_classes, widths, [2, 2, 2, 2])
