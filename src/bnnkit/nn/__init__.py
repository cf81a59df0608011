"""Binary layers (quantizers from ``bnnkit.quant`` on their inputs and weights), the
building blocks that repair methods add, and the helpers the trainer applies to them."""

from bnnkit.nn import bf16
from bnnkit.nn.batchnorm import BatchNorm2d
from bnnkit.nn.blocks import LearnableThreshold, Prequantized, RPReLU, StandardizedWeights
from bnnkit.nn.layers import (
    BinaryConv2d,
    BinaryLinear,
    InputNorm,
    IntegerPixels,
    binary_layers,
    clip_latent_weights_,
    clip_weights_,
    latent_weights,
    set_weight_binarization,
)
from bnnkit.nn.pool import GlobalAvgPool, MaxPool2x2

__all__ = [
    "BatchNorm2d",
    "BinaryConv2d",
    "BinaryLinear",
    "GlobalAvgPool",
    "InputNorm",
    "IntegerPixels",
    "LearnableThreshold",
    "MaxPool2x2",
    "Prequantized",
    "RPReLU",
    "StandardizedWeights",
    "bf16",
    "binary_layers",
    "clip_latent_weights_",
    "clip_weights_",
    "latent_weights",
    "set_weight_binarization",
]
