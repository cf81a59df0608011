"""Binary ResNets for CIFAR: ResNet-20 (He et al., 2016, §4.2) and the CIFAR variant of
ResNet-18 (3×3 stem, no stem pooling), the two networks of de Putter & Corporaal (2022)."""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models.layers import Layers
from bnnkit.models.registry import register_model
from bnnkit.nn import BatchNorm2d, GlobalAvgPool
from bnnkit.nn.batchnorm import plus_residual
from bnnkit.recipe import Recipe


def _one(modules: list[nn.Module]) -> nn.Module:
    """The modules as one: a lone module as itself, so that the baseline's parameter
    names stay those of earlier checkpoints."""
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _binary_conv(layers: Layers, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    """A binary conv, behind a BatchNorm under the recipe's feature_norm."""
    return _one([*layers.feature_norm(cin), layers.conv(cin, cout, kernel, stride)])


def _shortcut(layers: Layers, cin: int, cout: int, stride: int) -> nn.Module:
    """Identity where the shape stays; else a binary 1×1 strided conv → BN, or (recipe
    downsample "fp", Bi-Real Net) a 2×2 average pool → full-precision 1×1 conv → BN,
    which keeps the real-valued stream's information through the downsampling."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    if layers.recipe.downsample == "binary":
        return nn.Sequential(_binary_conv(layers, cin, cout, 1, stride), BatchNorm2d(cout))
    pool = [nn.AvgPool2d(stride)] if stride > 1 else []
    return nn.Sequential(*pool, nn.Conv2d(cin, cout, 1, bias=False), BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two binary 3×3 convolutions, each followed by BN (and the recipe's activation).

    The residual stream stays real-valued; each binary conv binarizes its own input. The
    recipe's ``residual`` places the shortcuts: ``"block"``, one around both convs;
    ``"double"`` (Bi-Real Net), one around each, so every conv's real-valued input
    reaches the stream past its sign.
    """

    def __init__(self, layers: Layers, cin: int, cout: int, stride: int):
        super().__init__()
        # Not ``self.double``, which would hide nn.Module.double() (the cast to float64).
        self.double_shortcut = layers.recipe.residual == "double"
        self.conv1 = _binary_conv(layers, cin, cout, 3, stride)
        self.bn1 = _one(layers.norm(cout))
        self.conv2 = _binary_conv(layers, cout, cout, 3)
        self.bn2 = _one(layers.norm(cout))
        self.shortcut = _shortcut(layers, cin, cout, stride)

    @property
    def residual_adds(self) -> int:
        """Additions per output value, for bnnkit.cost."""
        return 2 if self.double_shortcut else 1

    def sole_reader_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(maker, reader) pairs where the reader alone reads the maker's output
        (bnnkit.nn.batchnorm.link_bfloat16_maps): each convolution and its norm; the first norm and
        the second convolution, unless a shortcut reads that norm's output too."""
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        return pairs if self.double_shortcut else [*pairs, (self.bn1, self.conv2)]

    def sign_sharing_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(maker, reader) pairs where the reader and one other module read the maker's output
        (bnnkit.nn.batchnorm.link_bfloat16_maps): under double residual, the first norm (its
        output plus the shortcut) and the second convolution, beside the second addition."""
        return [(self.bn1, self.conv2)] if self.double_shortcut else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each addition of a shortcut joins the BatchNorm before it (plus_residual: the same bits).
        if self.double_shortcut:
            out = plus_residual(self.bn1, self.conv1(x), self.shortcut(x))
            return plus_residual(self.bn2, self.conv2(out), out)
        return plus_residual(self.bn2, self.conv2(self.bn1(self.conv1(x))), self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, layers: Layers, in_channels: int, num_classes: int, widths: list[int], blocks: list[int]):
        super().__init__()
        self.stem = nn.Sequential(layers.first_conv(in_channels, widths[0], 3), *layers.norm(widths[0]))
        stages = []
        cin = widths[0]
        for i, (cout, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(layers, cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.Sequential(GlobalAvgPool(), nn.Flatten())
        self.classifier = layers.classifier(cin, num_classes)

    def sign_sharing_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(maker, reader) pairs where the reader and one other module read the maker's output
        (bnnkit.nn.batchnorm.link_bfloat16_maps): each block's input, made by the stem or the
        last norm of the block before, and read by the block's first convolution and its shortcut."""
        blocks = [block for block in self.blocks if isinstance(block, BasicBlock)]  # all of them
        makers = [self.stem, *(block.bn2 for block in blocks[:-1])]
        return [(maker, block.conv1) for maker, block in zip(makers, blocks, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


def _resnet(
    model: str,
    recipe: Recipe,
    in_shape: tuple,
    num_classes: int,
    widths: list[int],
    blocks: list[int],
    width_mult: float,
) -> ResNet:
    """The model option ``width_mult`` and the recipe's multiply the base widths."""
    if width_mult <= 0:
        raise BnnkitError(f"{model} needs width_mult > 0, got {width_mult}")
    layers = Layers(recipe)
    return ResNet(layers, in_shape[0], num_classes, [layers.width(w * width_mult) for w in widths], blocks)


@register_model("residual")
def resnet20(num_classes: int, in_shape: tuple, recipe: Recipe, *, width_mult: float = 1.0) -> nn.Module:
    """ResNet-20 for CIFAR: 16/32/64 channels × 3 basic blocks (about 0.27 M parameters)."""
    return _resnet("resnet20", recipe, in_shape, num_classes, [16, 32, 64], [3, 3, 3], width_mult)


@register_model("residual")
def resnet18(num_classes: int, in_shape: tuple, recipe: Recipe, *, width_mult: float = 1.0) -> nn.Module:
    """ResNet-18, CIFAR variant: 64/128/256/512 channels × 2 basic blocks (about 11 M parameters)."""
    return _resnet("resnet18", recipe, in_shape, num_classes, [64, 128, 256, 512], [2, 2, 2, 2], width_mult)
