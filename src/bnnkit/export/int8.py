"""Post-training quantization to int8: the baseline that a binary network is measured against.

The float model is the full-precision twin of a bnnkit architecture (``twin_recipe``: every
quantizer an identity, BN → ReLU → max-pool), trained as any run. ``quantize_model`` turns it
into a graph of the int8 ops of ``bnnkit.graph.ops``:

* the image: ``quantize_input``, pixel >> 1, so the input scale is 2/255;
* every conv or linear layer with the BatchNorm after it folded in: weights symmetric int8 per
  output channel (``max |w| / 127``), bias int32 at the accumulator's scale (input scale ×
  weight scale), activations symmetric int8 per tensor (``max |a| / 127`` over calibration
  images, taken after BN and ReLU), the accumulator brought to the output scale by a fixed-point
  multiplier and shift (``requant``), the ReLU a clamp at 0 in the same step;
* max-pool and flatten on int8 as they are (a max commutes with the monotone requantization);
* the classifier: one weight scale for the whole layer and no requantization, so the int32
  class scores share one scale and their argmax is the float model's up to rounding.

The rounding is round half up everywhere the graph rounds (the requantization); weights and
biases are rounded to nearest here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op, pair
from bnnkit.graph.ops import REQUANT_SHIFT
from bnnkit.nn import BinaryConv2d, BinaryLinear, InputNorm, IntegerPixels, Prequantized
from bnnkit.quant.multibit import Identity
from bnnkit.recipe import BASELINE, Recipe
from bnnkit.runtime import numpy_ref
from bnnkit.training.loop import full_precision_recipe, predict_labels
from bnnkit.training.run import RunConfig, load_run

MAX_CALIBRATION = 60_000
INPUT_SCALE = 2 / 255  # quantize_input: pixel >> 1, and a model sees pixel / 255 (pixel itself after IntegerPixels)


def twin_recipe(recipe: Recipe = BASELINE) -> Recipe:
    """The float twin of ``recipe``'s binary network that is quantized to int8: full precision
    (as distillation's teacher), BN → ReLU → max-pool, the ordering of an int8 CNN."""
    twin = full_precision_recipe(recipe, f"{recipe.name}-fp-twin")
    # fp_first_layer off: the first layer (full-precision weights all the same) sees the integer
    # pixels and pads with a black pixel, as the int8 graph does; a normalised input would pad
    # with the mean, which zero padding of int8 pixels cannot express.
    return twin.with_(latent_clip=0.0, pool_order="bn_sign_pool", activation="relu", fp_first_layer=False,
                      fp_last_layer=True)  # fmt: skip


@dataclass
class _Layer:
    """A conv or linear layer with what follows it up to the next layer: BN, ReLU."""

    name: str
    module: nn.Module
    bn: nn.Module | None = None
    relu: bool = False
    modules: list[nn.Module] = field(default_factory=list)  # everything applied, in order

    @property
    def conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def _is_identity(q: nn.Module | None) -> bool:
    return q is None or isinstance(q, Identity) or (isinstance(q, Prequantized) and q.bits >= 32)


def _check_layer(name: str, m: nn.Module) -> None:
    if isinstance(m, (BinaryConv2d, BinaryLinear)):
        if not (_is_identity(m.input_quantizer) and _is_identity(m.kernel_quantizer)):
            raise BnnkitError(f"{name}: a binary layer; int8 quantization takes a full-precision twin (twin_recipe)")
        if m.weight_scale != "none" or m.activation_scale != "none":
            raise BnnkitError(f"{name}: weight or activation scaling is not supported by the int8 quantizer")
        if isinstance(m, BinaryConv2d) and m.pad_value != 0.0:
            raise BnnkitError(f"{name}: pad_value {m.pad_value:g}; the int8 convolution pads with 0")
    if isinstance(m, nn.Conv2d) and (m.groups != 1 or pair(m.dilation) != (1, 1) or m.padding_mode != "zeros"):
        raise BnnkitError(f"{name}: grouped, dilated or non-zero-padded convolutions are not supported")
    if isinstance(m, nn.Conv2d) and isinstance(m.padding, str):
        raise BnnkitError(f"{name}: padding {m.padding!r}; the int8 quantizer takes numeric padding")


def _plain_pool(m: nn.Module) -> bool:
    return isinstance(m, nn.MaxPool2d) and m.padding == 0 and m.dilation == 1 and not m.ceil_mode


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in order, with their names."""
    out = []
    for name, m in model.named_children():
        out += [(f"{name}.{n}", c) for n, c in _leaves(m)] if isinstance(m, nn.Sequential) else [(name, m)]
    return out


def _parse(model: nn.Module) -> list[_Layer | tuple[str, nn.Module]]:
    """The model as int8 steps: ``_Layer``s, and max-pools and flattens as (name, module)."""
    if not isinstance(model, nn.Sequential):
        raise BnnkitError(f"int8 quantization takes an nn.Sequential model, got {type(model).__name__}")
    steps: list[_Layer | tuple[str, nn.Module]] = []
    for name, m in _leaves(model):
        last = steps[-1] if steps and isinstance(steps[-1], _Layer) else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _check_layer(name, m)
            steps.append(_Layer(name, m, modules=[m]))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and last is not None and last.bn is None and not last.relu:
            last.bn = m
            last.modules.append(m)
        elif isinstance(m, nn.ReLU) and last is not None and not last.relu:
            last.relu = True
            last.modules.append(m)
        elif isinstance(m, IntegerPixels) and not steps:
            steps.append((name, m))
        elif isinstance(m, InputNorm):
            raise BnnkitError(
                f"{name}: a normalised input pads with its mean, which int8 zero padding cannot; "
                "train the twin with bnnkit.export.int8.twin_recipe (fp_first_layer = false)"
            )
        elif _is_identity(m):
            continue  # the twin's quantizer before a max-pool: nothing
        elif isinstance(m, nn.Flatten) or _plain_pool(m):
            steps.append((name, m))
        else:
            raise BnnkitError(f"{name}: {type(m).__name__} here is not supported by the int8 quantizer")
    if not steps or not isinstance(steps[-1], _Layer) or steps[-1].conv or steps[-1].bn or steps[-1].relu:
        raise BnnkitError("int8 quantization needs a model that ends in a plain linear classifier")
    return steps


def _values(t: object, default: np.ndarray) -> np.ndarray:
    """A parameter or buffer as float64, or ``default`` where the module has none (no bias, no affine BN)."""
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else default


def _folded(layer: _Layer) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weight and bias with its BatchNorm folded in, float64."""
    w = _values(layer.module.weight, np.zeros(0))
    o = w.shape[0]
    b = _values(layer.module.bias, np.zeros(o))
    if layer.bn is not None:
        bn = layer.bn
        k = _values(bn.weight, np.ones(o)) / np.sqrt(_values(bn.running_var, np.ones(o)) + bn.eps)
        w = w * k.reshape((o,) + (1,) * (w.ndim - 1))
        b = (b - _values(bn.running_mean, np.zeros(o))) * k + _values(bn.bias, np.zeros(o))
    return w, b


def requant(scale: float) -> tuple[int, int]:
    """(multiplier, shift) with multiplier / 2**shift closest to ``scale``: a 31-bit mantissa,
    the shift within the graph's bounds (a tiny scale loses mantissa bits instead)."""
    if not (scale > 0 and math.isfinite(scale)):
        raise BnnkitError(f"requantization scale {scale} is not a positive number")
    mantissa, exponent = math.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    m, shift = round(mantissa * 2**31), 31 - exponent
    if m == 2**31:
        m, shift = m // 2, shift - 1
    if shift > REQUANT_SHIFT[1]:
        m, shift = round(m / 2 ** (shift - REQUANT_SHIFT[1])), REQUANT_SHIFT[1]
    if shift < REQUANT_SHIFT[0]:
        raise BnnkitError(f"requantization scale {scale:g} is too large for an int8 layer")
    return m, shift


def _int8(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values / scale), -127, 127).astype(np.int8)


def _calibrate(steps: list, images: np.ndarray, batch: int = 500) -> list[float]:
    """Per ``_Layer``, the largest |output| over ``images`` (uint8 N,C,H,W) in the float model."""
    peaks = [0.0] * sum(isinstance(s, _Layer) for s in steps)
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).float() / 255
            i = 0
            for s in steps:
                if isinstance(s, _Layer):
                    for m in s.modules:
                        x = m(x)
                    peaks[i] = max(peaks[i], float(x.abs().max()))
                    i += 1
                else:
                    x = s[1](x)
    return peaks


def quantize_model(model: nn.Module, in_shape: tuple[int, int, int], calibration: np.ndarray) -> Graph:
    """The int8 graph of a float twin (see the module doc); ``calibration``: uint8 training
    images (N, C, H, W) whose activations set the per-tensor scales."""
    model = model.eval().cpu()
    steps = _parse(model)
    calibration = np.asarray(calibration, np.uint8)
    if calibration.ndim != 4 or calibration.shape[1:] != tuple(in_shape) or len(calibration) == 0:
        raise BnnkitError(f"calibration images must be uint8 (N, {', '.join(map(str, in_shape))}) with N >= 1")
    peaks = iter(_calibrate(steps, calibration))
    ops = [Op("quantize_input", ["input"], "q_input", name="input")]
    t, scale = "q_input", INPUT_SCALE
    for s in steps:
        if isinstance(s, _Layer):
            t, scale = _layer_ops(s, t, scale, next(peaks), s is steps[-1], ops)
        elif isinstance(s[1], IntegerPixels):
            scale *= 255  # the model's input is the pixel value itself
        else:
            name, m = s
            if isinstance(m, nn.MaxPool2d):
                kind, attrs = "maxpool", {"kernel": pair(m.kernel_size), "stride": pair(m.stride)}
            else:
                kind, attrs = "flatten", {}
            ops.append(Op(kind, [t], f"t{len(ops)}", attrs, name=name))
            t = ops[-1].output
    ops.append(Op("argmax", [t], "label"))
    return Graph(in_shape, ops, meta={"quantization": "int8 post-training (bnnkit.export.int8)"})


def _layer_ops(layer: _Layer, x: str, in_scale: float, peak: float, last: bool, ops: list[Op]) -> tuple[str, float]:
    """Append the ops of one layer reading tensor ``x`` at ``in_scale``; returns its output and scale."""
    w, b = _folded(layer)
    o = len(w)
    flat = np.abs(w.reshape(o, -1))
    # the classifier: one weight scale, so that the class scores share one scale
    w_scale = np.full(o, flat.max()) if last else flat.max(axis=1)
    w_scale = np.where(w_scale > 0, w_scale, 1.0) / 127
    acc_scale = in_scale * w_scale
    params = {"weight": _int8(w, w_scale.reshape((o,) + (1,) * (w.ndim - 1))), "bias": _bias(b, acc_scale, layer)}
    out, name = f"t{len(ops)}", layer.name
    if last:
        ops.append(Op("int8_dense", [x], out, {}, params, name=name))
        return out, float("nan")
    out_scale = max(peak, 1e-8) / 127
    mult, shift = zip(*(requant(a / out_scale) for a in acc_scale))
    q = {"multiplier": np.array(mult, np.int32), "shift": np.array(shift, np.int32)}
    if layer.relu:
        q["relu"] = np.ones(o, bool)
    if layer.conv:
        m = layer.module
        assert isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)  # _check_layer refused the rest
        attrs = {"stride": pair(m.stride), "padding": pair(m.padding)}
        ops.append(Op("int8_conv2d", [x], out, attrs, {**params, **q}, name=name))
    else:
        ops.append(Op("int8_dense", [x], out, {}, params, name=name))
        ops.append(Op("requantize", [out], f"t{len(ops)}", {}, q, name=name))
        out = ops[-1].output
    return out, out_scale


def _bias(b: np.ndarray, acc_scale: np.ndarray, layer: _Layer) -> np.ndarray:
    q = np.round(b / acc_scale)
    if np.abs(q).max(initial=0) >= 2**30:
        raise BnnkitError(f"{layer.name}: the bias does not fit the int32 accumulator at its scale")
    return q.astype(np.int32)


def quantize_run(
    run_dir: str | Path, calibration: int = 2000, data_dir: str | None = None
) -> tuple[Graph, nn.Module, RunConfig]:
    """The int8 graph of the float twin trained in ``run_dir``, calibrated on its dataset's
    first ``calibration`` training images; with the model and the run's configuration."""
    if not 1 <= calibration <= MAX_CALIBRATION:
        raise BnnkitError(f"--calibration must be 1..{MAX_CALIBRATION} images, got {calibration}")
    model, config = load_run(run_dir)
    train = load_dataset(config.dataset, "train", data_dir or config.data_dir)
    c, h, w = config.to_dict()["in_shape"]
    graph = quantize_model(model, (c, h, w), train.x[:calibration])
    graph.meta.update(model=config.model, dataset=config.dataset, recipe=config.recipe.name, run=str(run_dir),
                      calibration_images=min(calibration, len(train.x)))  # fmt: skip
    return graph, model, config


def quantize_and_check(
    run_dir: str | Path, output: str | Path, calibration: int = 2000, check: int = 1000, data_dir: str | None = None
) -> dict:
    """``bnnkit quantize``: write the int8 graph of a float twin's run, then score the float
    model and the graph (NumPy reference) on the first ``check`` test images."""
    if check < 0:
        raise BnnkitError(f"--check must be >= 0, got {check}")
    graph, model, config = quantize_run(run_dir, calibration, data_dir)
    graph.save(output)
    result = {"output": str(output), "ops": len(graph.ops), "calibration_images": graph.meta["calibration_images"]}
    if not check:
        return {**result, "n": 0}
    test = load_dataset(config.dataset, "test", data_dir or config.data_dir)
    checked = test.part(slice(0, check))
    x, y = checked.x, checked.y
    fp = predict_labels(model, checked)
    _, labels = numpy_ref.predict(graph, x)
    return {
        **result,
        "n": len(x),
        "float_accuracy": float((fp == y).mean()),
        "int8_accuracy": float((labels == y).mean()),
        "top1_agreement": float((fp == labels).mean()),
    }
