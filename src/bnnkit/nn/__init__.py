"""Binary layers and the small blocks that repair methods add."""

from bnnkit.nn.layers import BinaryConv2d, BinaryLinear, InputNorm, binary_layers, clip_latent_weights_

__all__ = ["BinaryConv2d", "BinaryLinear", "InputNorm", "binary_layers", "clip_latent_weights_"]
