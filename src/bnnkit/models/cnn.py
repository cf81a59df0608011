"""Plain (non-residual) binary CNNs: the eBNN conv-pool nets, a small VGG-like net for
28×28 images, and the VGG-small of the BNN literature for CIFAR."""

from __future__ import annotations

from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models.layers import Layers
from bnnkit.models.registry import register_model
from bnnkit.recipe import Recipe


def _spatial_after_pools(in_shape: tuple, pools: int, model: str) -> tuple[int, int]:
    h, w = in_shape[1], in_shape[2]
    if h >> pools < 1 or w >> pools < 1:
        raise BnnkitError(f"{model}: input {h}x{w} is too small for {pools} 2x2 max-pools")
    return h >> pools, w >> pools


@register_model("pooling")
def ebnn_cnn(
    num_classes: int, in_shape: tuple, recipe: Recipe, *, channels: tuple = (16, 32), kernel: int = 3
) -> nn.Module:
    """eBNN (McDanel et al., 2017) blocks: conv → 2×2 max-pool → BN, one block per entry
    of ``channels``, then the classifier.

    Pooling before BN keeps every stored feature map binary on the device: the pool takes
    the max of integer conv sums, and BN → sign becomes one threshold per channel.
    """
    channels = tuple(channels)
    if not channels or min(channels) < 1:
        raise BnnkitError(f"ebnn_cnn needs at least one block with >= 1 channel, got channels={channels}")
    layers = Layers(recipe)
    blocks: list[nn.Module] = []
    cin = in_shape[0]
    for i, cout in enumerate(map(layers.width, channels)):
        conv = layers.first_conv(cin, cout, kernel) if i == 0 else layers.conv(cin, cout, kernel)
        blocks += [conv, *layers.pooled_norm(cout)]
        cin = cout
    h, w = _spatial_after_pools(in_shape, len(channels), "ebnn_cnn")
    blocks += [nn.Flatten(), layers.classifier(cin * h * w, num_classes, channels=cin)]
    return nn.Sequential(*blocks)


def _vgg(layers: Layers, cin: int, plan: list) -> tuple[list[nn.Module], int]:
    """Conv layers from a VGG plan: an int is a 3×3 conv → BN, an "M" after it a 2×2
    max-pool placed as the recipe's pool_order says (conv → pool → BN in BinaryNet)."""
    blocks: list[nn.Module] = []
    for i, item in enumerate(plan):
        if item == "M":
            continue
        conv = layers.first_conv(cin, item) if i == 0 else layers.conv(cin, item)
        pooled = plan[i + 1 : i + 2] == ["M"]
        blocks += [conv, *(layers.pooled_norm(item) if pooled else layers.norm(item))]
        cin = item
    return blocks, cin


@register_model("pooling")
def small_cnn(num_classes: int, in_shape: tuple, recipe: Recipe, *, width: int = 32, hidden: int = 256) -> nn.Module:
    """A VGG-like binary CNN for 28×28 inputs: 2×(w) – pool – 2×(2w) – pool – FC(hidden) – FC."""
    if width < 1 or hidden < 1:
        raise BnnkitError(f"small_cnn needs width >= 1 and hidden >= 1, got width={width}, hidden={hidden}")
    layers = Layers(recipe)
    w1, w2, hidden = layers.width(width), layers.width(2 * width), layers.width(hidden)
    blocks, cout = _vgg(layers, in_shape[0], [w1, w1, "M", w2, w2, "M"])
    h, w = _spatial_after_pools(in_shape, 2, "small_cnn")
    blocks += [nn.Flatten(), layers.linear(cout * h * w, hidden, channels=cout), *layers.norm(hidden, dims=1)]
    blocks.append(layers.classifier(hidden, num_classes))
    return nn.Sequential(*blocks)


@register_model("pooling")
def vgg_small(num_classes: int, in_shape: tuple, recipe: Recipe, *, width_mult: float = 1.0) -> nn.Module:
    """VGG-small for CIFAR (the BinaryNet convolution stack, one classifier layer as in
    LQ-Nets): 2×128 – pool – 2×256 – pool – 2×512 – pool – FC."""
    if width_mult <= 0:
        raise BnnkitError(f"vgg_small needs width_mult > 0, got {width_mult}")
    layers = Layers(recipe)
    c = [layers.width(base * width_mult) for base in (128, 256, 512)]
    blocks, cout = _vgg(layers, in_shape[0], [c[0], c[0], "M", c[1], c[1], "M", c[2], c[2], "M"])
    h, w = _spatial_after_pools(in_shape, 3, "vgg_small")
    blocks += [nn.Flatten(), layers.classifier(cout * h * w, num_classes, channels=cout)]
    return nn.Sequential(*blocks)
