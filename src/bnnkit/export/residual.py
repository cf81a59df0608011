"""Residual networks (``bnnkit.models.resnet``) → ``Graph``, on a real-valued stream.

A ResNet's shortcuts carry real values past the signs, so its graph has a float32 path
beside the binary one (the ops' float32 semantics are in ``bnnkit.graph.ops``):

* A binary layer's accumulator and the float modules after it (its scale and bias, BN,
  PReLU/RPReLU) stay a *chain* while nothing but a sign reads them. The sign of a chain
  is the exact integer ``threshold`` of the sequential exporter (every accumulator value
  pushed through the model's own float32 modules), so a block's inner sign agrees with
  PyTorch bit for bit.
* Where a chain meets the stream (an ``add``, a pool, a full-precision conv), it becomes
  float32: runs of per-channel affine modules (scale, bias, BN, RPReLU's shifts, the input
  normalisation) fold into one ``affine`` measured in float64 and stored as float32;
  PReLU slopes become ``prelu``. The sign of a stream value is ``sign`` (x >= t, with t
  RSign's learned threshold or 0). These differ from PyTorch's float32 by roundings, so
  the graph agrees with the module in top-1 rather than bit for bit.
* Full-precision layers (Bi-Real downsampling's 1×1 conv, a float first or last layer)
  are ``conv2d_f32``/``dense_f32``; average pools are ``meanpool``.

Anything else is refused naming the module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from bnnkit.export.exporter import BinaryLayer, Exporter, _Chain, _check_methods
from bnnkit.graph import OPS, Graph, pair
from bnnkit.graph.ops import TensorType
from bnnkit.models.resnet import BasicBlock, ResNet
from bnnkit.nn import BinaryConv2d, BinaryLinear, InputNorm, IntegerPixels, LearnableThreshold, RPReLU
from bnnkit.quant import MultiBaseActivations, MultiBaseWeights, Quantizer

_AFFINE = (nn.BatchNorm1d, nn.BatchNorm2d, InputNorm)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """What a model takes: the graph's u8 pixels as values in [0, 1]."""
    return x / 255


_ACTIVATIONS = (nn.PReLU, RPReLU)


@dataclass
class _Value:
    """A graph tensor and the per-channel float modules still to apply to it, in order."""

    tensor: str
    layer: BinaryLayer | None = None  # the binary layer whose i32 sums ``tensor`` holds (a chain)
    bound: int = 0  # |sum| <= bound, for a chain
    modules: list[Any] = field(default_factory=list)  # nn.Modules and per-channel callables
    real: str | None = None  # the tensor once made float32 (emitted once)
    flatten: str = ""  # a Flatten met on the way (its name), applied after the signs or the float32 map

    def then(self, m: Any) -> _Value:
        return replace(self, modules=[*self.modules, m], real=None)


def needs_real_path(model: nn.Module) -> bool:
    """A residual network, or a layer with ABC-Net's multiple bases: a sum of binary products."""
    return any(
        isinstance(m, ResNet)
        or isinstance(getattr(m, "kernel_quantizer", None), MultiBaseWeights)
        or isinstance(getattr(m, "input_quantizer", None), MultiBaseActivations)
        for m in model.modules()
    )


class ResidualExporter(Exporter):
    """``Exporter`` for models with residual blocks: a walk of the module tree (see the module doc)."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, int, int], allow_approx: bool = False):
        super().__init__(model, in_shape, allow_approx)
        self.types: dict[str, TensorType] = {"input": ("u8", self.in_shape)}
        self.signs: dict[tuple[Any, ...], str] = {}

    def _emit(self, kind: str, inputs: list[str], attrs=None, params=None, name: str = "") -> str:
        out = super()._emit(kind, inputs, attrs, params, name)
        op = self.ops[-1]
        try:
            self.types[out] = OPS[kind].infer(op, [self.types[i] for i in inputs])
        except ValueError as exc:
            self._refuse(name or out, f"{kind}: {exc}")
        return out

    def export(self) -> Graph:
        _check_methods(getattr(self.model, "recipe", None))
        v = self._apply(self.model, _Value("input", modules=[_pixels]), "")
        scores = v.tensor if self.types[v.tensor][0] == "i32" and not v.modules else self._real(v, "scores")
        if len(self.types[scores][1]) != 1:
            self._refuse("<output>", f"the scores have shape {self.types[scores][1]}, not one value per class")
        self._emit("argmax", [scores], name="argmax")
        c, h, w = self.in_shape
        return Graph((c, h, w), self.ops, meta={"approximations": self.notes})

    # --- the walk ------------------------------------------------------------------------

    def _apply(self, m: nn.Module, v: _Value, name: str) -> _Value:
        if isinstance(m, (nn.Sequential, ResNet)):  # ResNet.forward runs its children in order
            for child, sub in m.named_children():
                v = self._apply(sub, v, f"{name}.{child}" if name else child)
            return v
        if isinstance(m, BasicBlock):
            return self._block(m, v, name)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return v
        if isinstance(m, (IntegerPixels, InputNorm)) and v.modules != [_pixels]:
            self._refuse(name, f"{type(m).__name__} is exported only on the input pixels")
        if isinstance(m, IntegerPixels):
            return _Value(v.tensor)  # the graph's input is the integer pixels themselves
        if isinstance(m, (*_AFFINE, *_ACTIVATIONS)):
            return v.then(m)
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            return self._binary(m, v, name)
        if type(m) is nn.Conv2d:
            return self._fp_conv(m, v, name)
        if type(m) is nn.Linear:
            return _Value(self._fp_dense(m, self._vector(v, name), name))
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return _Value(self._meanpool(m, self._real(v, name), name))
        if isinstance(m, nn.MaxPool2d):
            self._check_pool(name, m)
            x = v.tensor if self._is_bits(v) else self._real(v, name)
            return _Value(
                self._emit("maxpool", [x], {"kernel": pair(m.kernel_size), "stride": pair(m.stride)}, name=name)
            )
        if isinstance(m, nn.Flatten):
            if v.flatten:
                self._refuse(name, "a second Flatten")
            # a sign after it stays per channel of the map: flattened once the signs are taken
            return (
                replace(v, flatten=name, real=None)
                if v.modules or v.layer is not None
                else _Value(self._vector(v, name))
            )
        if isinstance(m, Quantizer):  # an explicit sign (recipe pool_order "bn_sign_pool")
            return _Value(self._sign(v, m, name))
        self._refuse(name, f"{type(m).__name__} has no graph form")
        raise AssertionError  # _refuse raises

    def _block(self, m: BasicBlock, x: _Value, name: str) -> _Value:
        out = self._apply(m.bn1, self._apply(m.conv1, x, f"{name}.conv1"), f"{name}.bn1")
        if m.residual_adds == 2:  # Bi-Real's double residual
            out = self._add(out, self._apply(m.shortcut, x, f"{name}.shortcut"), f"{name}.add1")
            return self._add(out, self._apply(m.bn2, self._apply(m.conv2, out, f"{name}.conv2"), f"{name}.bn2"), name)
        inner = self._apply(m.bn2, self._apply(m.conv2, out, f"{name}.conv2"), f"{name}.bn2")
        return self._add(inner, self._apply(m.shortcut, x, f"{name}.shortcut"), name)

    def _add(self, a: _Value, b: _Value, name: str) -> _Value:
        return _Value(self._emit("add", [self._real(a, name), self._real(b, name)], name=f"{name}.add"))

    def _binary(self, m: Any, v: _Value, name: str) -> _Value:
        kind = self.types[v.tensor][0]
        if m.input_quantizer is None:
            if kind != "u8" or v.modules:
                self._refuse(name, "a layer without an input quantizer is only exported on the integer pixels")
            cur = v.tensor
        elif self._is_bits(v):
            self._check_takes_bits(name, m)
            cur, kind = v.tensor, "bits"
        elif isinstance(m.input_quantizer, MultiBaseActivations):
            return self._multibase(m, self._activation_bases(m, v, name), name)
        else:
            cur, kind = self._sign(v, m.input_quantizer, name), "bits"
        if isinstance(m, BinaryLinear) and len(self.types[cur][1]) != 1:
            cur = self._emit("flatten", [cur], name=f"{name}.flatten")
        if isinstance(m.kernel_quantizer, MultiBaseWeights):
            return self._multibase(m, [(cur, 1.0)], name)
        chain = self._binary_layer(name, m, cur, kind)
        return _Value(chain.tensor, m, chain.bound)

    def _is_bits(self, v: _Value) -> bool:
        return self.types[v.tensor][0] == "bits" and not v.modules

    @torch.no_grad()
    def _activation_bases(self, m: Any, v: _Value, name: str) -> list[tuple[str, float]]:
        """ABC-Net's input Σ_j β_j·b(x − v_j): each base's signs (x >= v_j, all channels) and β_j."""
        q = m.input_quantizer
        if isinstance(m, BinaryConv2d) and any(m.padding) and m.pad_value != 0.0:
            self._refuse(name, "multiple activation bases pad their sum, not each base, with ±1")
        out = []
        for j, (beta, shift) in enumerate(zip(q.beta.tolist(), q.shift.tolist())):

            def base(x: torch.Tensor, shift: float = shift) -> torch.Tensor:
                return q.base(x - shift)

            signs = self._sign(v, base, f"{name}.base{j}", _f32(q.shift[j : j + 1]))
            if isinstance(m, BinaryLinear) and len(self.types[signs][1]) != 1:
                signs = self._emit("flatten", [signs], name=f"{name}.base{j}.flatten")
            out.append((signs, beta))
        return out

    @torch.no_grad()
    def _multibase(self, m: Any, inputs: list[tuple[str, float]], name: str) -> _Value:
        """ABC-Net: the layer's product as a sum over (activation base j, weight base k) of
        β_j·α_k·(binary product of base j's signs and base k's weights), each scaled in an
        ``affine``, summed in float32, then the layer's scale and bias."""
        kq = m.kernel_quantizer
        if isinstance(kq, MultiBaseWeights):
            bases, alphas = kq._bases(m.weight), kq.alpha.detach().double()
            if not bool(torch.all(bases.abs() == 1)):
                self._refuse(name, "its weight bases are not signs")
            weights = [((b > 0).numpy(), a) for b, a in zip(bases, alphas)]
        else:
            bits, magnitude = self._weight_bits(name, m)
            if not bool(torch.all(magnitude == 1)):
                self._refuse(name, "its kernel quantizer scales the weights inside the product; use weight_scale")
            weights = [(bits, torch.ones(m.weight.shape[0], dtype=torch.float64))]
        total = None
        for j, (signs, beta) in enumerate(inputs):
            for k, (bits, alpha) in enumerate(weights):
                # named as the layer where its input is one set of signs: the export check compares them
                first = j == 0 and k == 0 and len(inputs) == 1
                kind, op_name = self.types[signs][0], name if first else f"{name}.base{j}.{k}"
                chain = self._binary_layer(name, m, signs, kind, bits, op_name)
                term = self._affine_run(
                    chain.tensor, [_per_channel(alpha.numpy() * beta, "scale")], f"{name}.base{j}.{k}"
                )
                total = term if total is None else self._emit("add", [total, term], name=f"{name}.bases")
        assert total is not None
        return _Value(total, modules=[copy.deepcopy(m).double()._scaled_plus_bias])

    def _fp_conv(self, m: nn.Conv2d, v: _Value, name: str) -> _Value:
        if m.groups != 1 or pair(m.dilation) != (1, 1) or isinstance(m.padding, str) or m.padding_mode != "zeros":
            self._refuse(name, "only ungrouped, undilated full-precision convolutions with zero padding are exported")
        weight = m.weight.detach()
        if v.modules == [_pixels]:  # the first layer: / 255 into the weights (a padded 0 stays 0)
            x, weight = v.tensor, weight.double() / 255
        else:
            x = self._real(v, name)
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
        params = {"weight": _f32(weight), "bias": _f32(bias)}
        attrs = {"stride": pair(m.stride), "padding": pair(m.padding)}
        return _Value(self._emit("conv2d_f32", [x], attrs, params, name))

    def _fp_dense(self, m: nn.Linear, x: str, name: str) -> str:
        bias = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
        return self._emit("dense_f32", [x], {}, {"weight": _f32(m.weight), "bias": _f32(bias)}, name)

    def _meanpool(self, m: nn.Module, x: str, name: str) -> str:
        _, (_, h, w) = self.types[x]
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)):
                self._refuse(name, "only a global adaptive average pool (output size 1) is exported")
            kernel = stride = (h, w)
        else:
            if not isinstance(m, nn.AvgPool2d) or m.padding not in (0, (0, 0)) or m.ceil_mode:
                self._refuse(name, "only average pools without padding or ceil_mode are exported")
            kernel, stride = pair(m.kernel_size), pair(m.stride)
        return self._emit("meanpool", [x], {"kernel": kernel, "stride": stride}, name=name)

    def _vector(self, v: _Value, name: str) -> str:
        x = self._real(v, name) if v.modules or self.types[v.tensor][0] == "i32" else v.tensor
        return x if len(self.types[x][1]) == 1 else self._emit("flatten", [x], name=f"{name}.flatten")

    # --- signs and the float32 stream ---------------------------------------------------------

    def _sign(self, v: _Value, q: Callable, name: str, thresh: np.ndarray | None = None) -> str:
        """``q`` of ``v`` as bits: an exact integer threshold on a chain, else ``sign`` of the
        stream (at ``thresh``, one value for every channel, where q is a shifted sign)."""
        if v.flatten:
            bits = self._sign(replace(v, flatten="", real=None), q, name, thresh)
            return self._emit("flatten", [bits], name=v.flatten)
        if v.layer is not None:
            chain = _Chain(v.tensor, v.layer, v.bound, before_pool=list(v.modules))
            params = self._threshold_params(chain, q, name)
            if params is not None:
                key: tuple[Any, ...] = (v.tensor, "threshold", params[0].tobytes(), params[1].tobytes())
                if key not in self.signs:
                    self.signs[key] = self._emit(
                        "threshold", [v.tensor], {}, {"thresh": params[0], "flip": params[1]}, f"{name}.input_quantizer"
                    )
                return self.signs[key]
        x = self._real(v, name)
        c = self._channels(x)
        thresh = self._real_threshold(q, c, name) if thresh is None else np.broadcast_to(thresh, (c,)).copy()
        key = (x, "sign", thresh.tobytes())
        if key not in self.signs:
            self.signs[key] = self._emit("sign", [x], {}, {"thresh": thresh}, f"{name}.input_quantizer")
        return self.signs[key]

    @torch.no_grad()
    def _real_threshold(self, q: Any, channels: int, name: str) -> np.ndarray:
        """t per channel with q(x) = +1 exactly where x >= t: 0 for a sign, RSign's shift v
        (x - v >= 0 holds in float32 exactly where x >= v)."""
        base, shift = q, torch.zeros(channels)
        if isinstance(q, LearnableThreshold):
            base, shift = q.quantizer, q.shift.detach()
        probe = torch.tensor([-1.0, -1e-38, -0.0, 0.0, 1e-38, 1.0])
        if not torch.equal(base(probe), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0])):
            self._refuse(name, f"its input quantizer {type(q).__name__} is not a sign of a real value")
        if len(shift) != channels:
            self._refuse(name, f"its threshold has {len(shift)} channels, its input {channels}")
        return _f32(shift)

    def _real(self, v: _Value, name: str) -> str:
        """``v`` as a float32 tensor: each run of affine modules one ``affine``, PReLU ``prelu``."""
        if v.real is not None:
            return v.real
        if v.flatten:
            v.real = self._emit("flatten", [self._real(replace(v, flatten=""), name)], name=v.flatten)
            return v.real
        x, run = v.tensor, list[Any]()
        if v.layer is not None:
            layer = copy.deepcopy(v.layer).double()
            run.append(layer._scaled_plus_bias)
        for m in v.modules:
            if isinstance(m, RPReLU):
                shift_in, slope, shift_out = (_f32(p).astype(np.float64) for p in (m.shift_in, m.slope, m.shift_out))
                run.append(_per_channel(-shift_in, "shift"))
                x, run = self._prelu(self._affine_run(x, run, name), slope, name), [_per_channel(shift_out, "shift")]
            elif isinstance(m, nn.PReLU):
                x, run = self._prelu(self._affine_run(x, run, name), _f32(m.weight).astype(np.float64), name), []
            else:
                run.append(copy.deepcopy(m).double() if isinstance(m, nn.Module) else m)
        x = self._affine_run(x, run, name)
        if self.types[x][0] != "f32":
            x = self._affine_run(x, [lambda t: t], name)
        v.real = x
        return x

    def _channels(self, x: str) -> int:
        return self.types[x][1][0]

    def _affine_run(self, x: str, run: list[Callable], name: str) -> str:
        """One ``affine`` for a run of per-channel affine maps, measured in float64."""
        if not run:
            return x
        c, spatial = self.types[x][1][0], len(self.types[x][1]) == 3
        probe = torch.tensor([0.0, 1.0], dtype=torch.float64)[:, None].expand(-1, c)
        probe = probe[:, :, None, None] if spatial else probe
        with torch.no_grad():
            for f in run:
                probe = f(probe)
        v = probe.reshape(2, c)
        scale, bias = (v[1] - v[0]).numpy(), v[0].numpy()
        return self._emit("affine", [x], {}, {"scale": scale.astype(np.float32), "bias": bias.astype(np.float32)}, name)

    def _prelu(self, x: str, slope: np.ndarray, name: str) -> str:
        c = self.types[x][1][0]
        if slope.size not in (1, c):
            self._refuse(name, f"PReLU has {slope.size} slopes for {c} channels")
        return self._emit("prelu", [x], {}, {"slope": np.broadcast_to(slope, (c,)).astype(np.float32)}, name)


def _per_channel(by: np.ndarray, how: str) -> Callable:
    """x + by[c] (``shift``) or x * by[c] (``scale``) over dim 1, in float64."""
    t = torch.from_numpy(np.asarray(by, np.float64))

    def f(x: torch.Tensor) -> torch.Tensor:
        v = t.view((1, -1) + (1,) * (x.ndim - 2))
        return x + v if how == "shift" else x * v

    return f


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy().copy()


__all__ = ["ResidualExporter", "needs_real_path"]
