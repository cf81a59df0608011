"""Trained ``nn.Module`` → integer ``Graph``.

The exporter walks the model's layers in order (nested ``nn.Sequential``s flattened)
and keeps, between two binary layers, the *real-valued chain* that turns an integer
accumulator into the next layer's input: the layer's own scale and bias, a max-pool,
a BatchNorm. Where the next layer binarizes that value, the whole chain collapses into
one ``threshold`` per channel:

* The threshold is not derived by algebra. Every integer the accumulator can take is
  pushed through the model's own float32 modules (scale, bias, BN, the next layer's
  sign), and the exported threshold reproduces that table exactly. γ < 0 shows up as a
  decreasing table (``flip``), γ = 0 as a constant one; anything non-monotone is refused.
* A max-pool inside the chain moves past the threshold: max then an increasing map is
  OR of the bits; where the part of the chain after the pool is decreasing (γ < 0), the
  max becomes a min, i.e. AND (``min_channels``).
* Zero padding stays exact (``pad='zero'``, valid taps only); ±1 padding is kept as such.
* An explicit quantizer module (recipe ``pool_order = "bn_sign_pool"``) ends the chain
  the same way; a max-pool of its bits is their OR, and the layer after it must take
  those bits as they are.

The last binary layer's chain becomes an ``affine`` on the integer scores (float32,
so those agree in top-1 rather than bit for bit). Anything else — a full-precision
conv or linear, a residual block, an activation the graph has no op for — is refused
naming the layer. A model from ``create_model`` carries its recipe; repair methods that
the catalogue marks as not exportable are refused up front, by name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, OPS, Graph, Op, PadMode, pair
from bnnkit.nn import BinaryConv2d, BinaryLinear, IntegerPixels, RPReLU
from bnnkit.quant import Quantizer
from bnnkit.recipe import METHODS, Recipe

_NO_INPUT_QUANTIZER = "a layer without an input quantizer is only exported as the first layer (integer pixels)"
_APPROX_SIGN = "ste_sign"  # the sign used where --allow-approx binarizes a full-precision layer
# Integers pushed through the float chain at once: bounds memory for wide layers.
_CHUNK = 1 << 16

BinaryLayer = BinaryConv2d | BinaryLinear


@dataclass
class _Chain:
    """An integer accumulator and the float modules applied to it since."""

    tensor: str
    layer: BinaryLayer  # the binary layer that produced it (its scale and bias come first)
    bound: int  # |accumulator| <= bound
    before_pool: list[nn.Module] = field(default_factory=list)
    pool: nn.MaxPool2d | None = None
    after_pool: list[nn.Module] = field(default_factory=list)
    flatten: str = ""  # name of a Flatten met after the chain: applied to its bits

    def double(self) -> _Chain:
        for m in [self.layer, *self.before_pool, *self.after_pool]:
            m.double()
        return self

    def add(self, module: nn.Module) -> None:
        (self.after_pool if self.pool is not None else self.before_pool).append(module)

    @property
    def channels(self) -> int:
        return self.layer.out_channels if isinstance(self.layer, BinaryConv2d) else self.layer.out_features

    def values(self, a: torch.Tensor, modules: list[nn.Module], scaled: bool) -> torch.Tensor:
        """The chain's float32 values for integer accumulators ``a`` of shape (L, C), laid
        out the way the model's own tensors are (N, C, H, W for conv maps)."""
        x = a.t().reshape(1, self.channels, -1, 1) if isinstance(self.layer, BinaryConv2d) else a
        if scaled:
            x = self.layer._scaled_plus_bias(x)
        for m in modules:
            x = m(x)
        return x.reshape(self.channels, -1).t() if isinstance(self.layer, BinaryConv2d) else x


class Exporter:
    def __init__(self, model: nn.Module, in_shape: tuple[int, int, int], allow_approx: bool = False):
        self.model = model.eval()
        c, h, w = in_shape  # a run's config hands a JSON list
        self.in_shape = (c, h, w)
        self.allow_approx = allow_approx
        self.ops: list[Op] = []
        self.notes: list[str] = []  # approximations made under allow_approx

    # --- helpers -------------------------------------------------------------------

    def _emit(
        self,
        kind: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
        name: str = "",
    ) -> str:
        out = f"t{len(self.ops)}_{kind}"
        self.ops.append(Op(kind, inputs, out, attrs or {}, params or {}, name))
        return out

    def _refuse(self, name: str, why: str) -> NoReturn:
        raise BnnkitError(f"cannot export layer {name!r}: {why}")

    def _weight_bits(self, name: str, layer: BinaryLayer) -> tuple[np.ndarray, torch.Tensor]:
        """The layer's binary weights as bits, and the positive per-output-channel factor
        its kernel quantizer puts on them (1 for a plain sign)."""
        if layer.kernel_quantizer is None:
            self._refuse(name, "its weights are not quantized (no kernel_quantizer)")
        with torch.no_grad():
            wq = layer.kernel_quantizer(layer.weight).flatten(1)
        magnitude = wq.abs().amax(dim=1)
        if not bool(torch.all(wq.abs() == magnitude[:, None])) or bool(torch.any(magnitude == 0)):
            self._refuse(name, "its kernel quantizer is not a sign (times a positive per-channel scale)")
        return (wq > 0).reshape(layer.weight.shape).numpy(), magnitude

    # --- the walk ------------------------------------------------------------------

    def export(self) -> Graph:
        _check_methods(getattr(self.model, "recipe", None))
        modules = list(_layers(self.model))
        if not modules or not isinstance(modules[0][1], IntegerPixels):
            first = modules[0][0] if modules else "<empty>"
            self._refuse(
                first,
                "the first layer works on normalised real pixels (recipe fp_first_layer=true); "
                "the integer graph needs a binary first layer on integer pixels: train with --recipe embedded",
            )
        # kind: what cur holds (u8 pixels or bits) while no chain is open; while one is, cur is its sums
        cur, kind = "input", "u8"
        chain: _Chain | None = None
        for i, (name, m) in enumerate(modules[1:], start=1):
            last = i == len(modules) - 1
            if type(m) is nn.Linear and last and self.allow_approx:
                m = self._approx_classifier(name, m)
            if isinstance(m, (BinaryConv2d, BinaryLinear)):
                if chain is not None:
                    if m.input_quantizer is None:
                        self._refuse(name, _NO_INPUT_QUANTIZER)
                    cur, kind = self._threshold(chain, m.input_quantizer, name, name + ".input_quantizer"), "bits"
                    if chain.flatten:
                        cur = self._emit("flatten", [cur], name=chain.flatten)
                elif kind == "bits":
                    self._check_takes_bits(name, m)
                chain = self._binary_layer(name, m, cur, kind)
                cur = chain.tensor
            elif isinstance(m, Quantizer):
                if chain is None or chain.flatten:
                    self._refuse(name, "an explicit quantizer is exported only on a binary layer's chain")
                cur, kind, chain = self._threshold(chain, m, name, name), "bits", None
            elif isinstance(m, nn.MaxPool2d) and chain is None and kind == "bits":
                self._check_pool(name, m)
                cur = self._emit("maxpool", [cur], {"kernel": pair(m.kernel_size), "stride": pair(m.stride)}, name=name)
            elif isinstance(m, nn.MaxPool2d):
                if chain is None or chain.pool is not None or chain.flatten:
                    self._refuse(
                        name, "a max-pool is exported only on a binary layer's sums or signs, once between two layers"
                    )
                self._check_pool(name, m)
                chain.pool = m
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU, RPReLU)):
                if chain is None or chain.flatten:
                    self._refuse(name, f"{type(m).__name__} must follow a binary layer")
                chain.add(m)  # an activation joins the float chain that the threshold tabulates
            elif isinstance(m, nn.Flatten):
                if chain is not None:  # flatten the bits once the next layer has binarized them
                    chain.flatten = name
                else:
                    cur = self._emit("flatten", [cur], name=name)
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                continue
            else:
                hint = (
                    " (--allow-approx binarizes a full-precision classifier)" if type(m) is nn.Linear and last else ""
                )
                self._refuse(name, f"{type(m).__name__} has no exact integer form{hint}")
        if chain is None or chain.flatten:
            self._refuse("<output>", "the model must end with a binary layer (and its BatchNorm)")
        scores = self._affine(chain)
        self._emit("argmax", [scores], name="argmax")
        return Graph(self.in_shape, self.ops, meta={"approximations": self.notes})

    def _check_pool(self, name: str, m: nn.MaxPool2d) -> None:
        if m.padding not in (0, (0, 0)) or m.dilation not in (1, (1, 1)) or m.ceil_mode:
            self._refuse(name, "only max-pools without padding, dilation or ceil_mode are exported")

    def _approx_classifier(self, name: str, m: nn.Linear) -> BinaryLinear:
        """XNOR-Net's approximation of a full-precision classifier: binarized input (the sign
        of what the model feeds it) times sign(W), scaled by mean|W| per class."""
        approx = BinaryLinear(
            m.in_features,
            m.out_features,
            bias=m.bias is not None,
            input_quantizer=_APPROX_SIGN,
            weight_scale="mean_abs",
        )
        approx.load_state_dict(m.state_dict())
        self.notes.append(f"{name}: full-precision classifier replaced by sign(input) x sign(W) x mean|W| + bias")
        return approx

    @torch.no_grad()
    def _check_takes_bits(self, name: str, m: BinaryLayer) -> None:
        """A layer whose input an explicit quantizer already binarized must keep ±1 as is."""
        q = m.input_quantizer
        signs = torch.ones((2, m.in_channels, 1, 1) if isinstance(m, BinaryConv2d) else (2, m.in_features))
        signs[0] = -1.0
        if q is None or not torch.equal(q(signs), signs):
            self._refuse(
                name, "its input is already binary, and its input quantizer does not pass ±1 through unchanged"
            )

    def _binary_layer(
        self, name: str, m: BinaryLayer, cur: str, kind: str, bits: np.ndarray | None = None, op_name: str = ""
    ) -> _Chain:
        """The layer's producer op on ``cur`` (its kernel quantizer's signs, or one base's ``bits``)."""
        if m.activation_scale != "none":
            self._refuse(
                name, "its activation scale (xnor_activation_scale) multiplies each output by a real-valued map"
            )
        if m.input_quantizer is None and kind != "u8":
            self._refuse(name, _NO_INPUT_QUANTIZER)
        if m.input_quantizer is not None and kind != "bits":
            self._refuse(name, "its input is not binarized by a preceding threshold")
        if isinstance(m, BinaryConv2d) and (m.groups != 1 or m.dilation != (1, 1)):
            self._refuse(name, "grouped or dilated binary convolutions are not exported")
        if bits is None:
            bits, magnitude = self._weight_bits(name, m)
            if not bool(torch.all(magnitude == 1)):
                # sign(w)·s_c inside the product: the model sums float products, which an
                # integer sum times s_c matches only up to rounding. weight_scale is exact.
                self._refuse(
                    name, "its kernel quantizer scales the weights inside the product; use weight_scale instead"
                )
        fan_in = int(np.prod(bits.shape[1:]))
        if m.input_quantizer is None:
            op = "input_conv2d" if isinstance(m, BinaryConv2d) else "input_dense"
            bound = 255 * fan_in
        else:
            op = "binary_conv2d" if isinstance(m, BinaryConv2d) else "binary_dense"
            bound = fan_in
        attrs: dict[str, Any] = {}
        if isinstance(m, BinaryConv2d):
            attrs = {"stride": tuple(m.stride), "padding": tuple(m.padding)}
            if "pad" in OPS[op].attrs:
                attrs["pad"] = PadMode(m.pad_value).mode
            elif m.padding != (0, 0) and m.pad_value != 0.0:
                self._refuse(name, "the first layer pads integer pixels with 0 (a black pixel) only")
        tensor = self._emit(op, [cur], attrs, {"weight": bits}, op_name or name)
        return _Chain(tensor, m, bound)

    @torch.no_grad()
    def _threshold(self, chain: _Chain, q: nn.Module, name: str, op_name: str) -> str:
        """Collapse ``chain`` followed by the sign ``q`` (the next layer's input quantizer,
        or an explicit one) into one threshold per channel named ``op_name``, and its
        max-pool into a pool of bits."""
        params = self._threshold_params(chain, q, name)
        if params is None:
            self._refuse(name, "the float32 chain before its sign is not monotone in the integer sum")
        thresh, flip = params
        out = self._emit("threshold", [chain.tensor], {}, {"thresh": thresh, "flip": flip}, op_name)
        if chain.pool is None:
            return out
        pool_params = {}
        if chain.after_pool:
            decreasing = self._after_pool_decreasing(chain)
            if decreasing.any():
                pool_params["min_channels"] = decreasing
        attrs = {"kernel": pair(chain.pool.kernel_size), "stride": pair(chain.pool.stride)}
        return self._emit("maxpool", [out], attrs, pool_params, name + ".pool")

    @torch.no_grad()
    def _threshold_params(
        self, chain: _Chain, q: Callable[[torch.Tensor], torch.Tensor], name: str
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The integer threshold and flip per channel that reproduce ``q`` of ``chain`` for every
        accumulator value, or None where some channel is not monotone in the sum."""
        c = chain.channels
        bits = []
        for lo in range(-chain.bound, chain.bound + 1, _CHUNK):
            a = torch.arange(lo, min(lo + _CHUNK, chain.bound + 1), dtype=torch.float32)
            v = q(chain.values(a[:, None].expand(-1, c), chain.before_pool + chain.after_pool, scaled=True))
            if not bool(torch.all(v.abs() == 1)):
                self._refuse(name, f"its input quantizer {type(q).__name__} does not output ±1")
            bits.append(v > 0)
        table = torch.cat(bits).numpy()  # (values, C): bit for accumulator value -bound + row
        thresh = np.empty(c, np.int32)
        flip = np.zeros(c, bool)
        for ch in range(c):
            col = table[:, ch]
            rising = np.flatnonzero(np.diff(col.astype(np.int8)) > 0)
            falling = np.flatnonzero(np.diff(col.astype(np.int8)) < 0)
            if len(rising) + len(falling) == 0:  # a constant channel (γ = 0, or beyond reach)
                thresh[ch], flip[ch] = INT32_MIN, not col[0]
            elif len(rising) == 1 and not len(falling):
                thresh[ch] = rising[0] + 1 - chain.bound
            elif len(falling) == 1 and not len(rising):
                thresh[ch], flip[ch] = falling[0] - chain.bound, True
            else:
                return None
        return thresh, flip

    @torch.no_grad()
    def _after_pool_decreasing(self, chain: _Chain) -> np.ndarray:
        """Per channel: is the chain after the pool decreasing? (max before it = min after)."""
        probe = torch.tensor([[-1.0], [1.0]]).expand(-1, chain.channels)
        v = chain.values(probe, chain.after_pool, scaled=False)
        return (v[1] < v[0]).numpy()

    @torch.no_grad()
    def _affine(self, chain: _Chain) -> str:
        """The last chain, on the class scores: scale and bias of the (affine) chain,
        measured in float64 on copies of its modules, then stored as float32."""
        if chain.pool is not None:
            self._refuse("<output>", "a max-pool before the scores is not exported")
        if not all(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in chain.before_pool):
            self._refuse("<output>", "an activation on the class scores is not exported")
        exact = copy.deepcopy(chain).double()
        v = exact.values(
            torch.tensor([[0.0], [1.0]], dtype=torch.float64).expand(-1, chain.channels), exact.before_pool, True
        )
        scale, bias = (v[1] - v[0]).numpy(), v[0].numpy()
        return self._emit(
            "affine", [chain.tensor], {}, {"scale": scale.astype(np.float32), "bias": bias.astype(np.float32)}, "scores"
        )


def _check_methods(recipe: Recipe | None) -> None:
    """Refuse, by name, the repair methods of the model's recipe that the catalogue says
    the integer graph cannot express. (The walk refuses their modules too; this names them.)"""
    if recipe is None:
        return
    blocked = [m.name for m in METHODS.values() if not m.exportable and m.used_by(recipe)]
    if blocked:
        raise BnnkitError(
            f"cannot export recipe {recipe.name!r}: repair method(s) {', '.join(blocked)} have no exact integer form"
        )


def _layers(module: nn.Module, prefix: str = ""):
    """(name, module) in execution order, nested ``nn.Sequential``s opened; anything else
    (a binary layer, a residual block) is one layer."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _layers(child, full + ".")
        else:
            yield full, child
