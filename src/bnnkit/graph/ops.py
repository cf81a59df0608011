"""The op table: one ``OpDef`` per op kind, and the tables in which every backend registers
against it.

An ``OpDef`` says what an op accepts (input types, attributes, parameters and their dtypes),
its family, how the type and shape of its output follow from its inputs (``infer``, the one
place output sizes are computed: ``out_size``), what it costs on a device (``cost``: the
operation counts of ``bnnkit profile``) and what the NumPy reference spends on it for one
image (``work``: the resource limits bound it). What each op *means* is its NumPy kernel in
``bnnkit.runtime.numpy_ref``, the specification.

A backend (the NumPy reference, the C generator, the fast host kernels, the SAT encoder)
holds an ``OpTable``: per op kind an implementation, or a ``Refusal`` that says why it has
none. ``conformance()`` lists what is missing; tests/test_op_table.py fails on any line of it,
so an op added here without its backends cannot go unnoticed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from bnnkit.errors import BnnkitError

if TYPE_CHECKING:
    from bnnkit.graph.core import Op

TensorType = tuple[str, tuple[int, ...]]  # (type, shape) of one tensor, per sample
TYPES = ("u8", "bits", "i32", "f32", "i8", "q32")
DTYPES = {
    "bits": np.dtype(bool),
    "i32": np.dtype(np.int32),
    "f32": np.dtype(np.float32),
    "i8": np.dtype(np.int8),
    "q32": np.dtype(np.int32),
}
"""The NumPy dtype of a parameter (and of an ``i32``/``f32``/``q32`` tensor) of each type."""


class Family(enum.Enum):
    """What kind of step an op is, for the code that asks that rather than which op it is."""

    PRODUCER = "producer"  # bits or pixels times packed ±1 weights -> i32 sums
    THRESHOLD = "threshold"  # i32 sums -> bits
    POOL = "pool"  # a window reduction of a (C, H, W) map, no padding
    ELEMENTWISE = "elementwise"  # value by value (per-channel parameters at most)
    VIEW = "view"  # a reshape: moves no data
    HEAD = "head"  # the class scores -> the label; the last op of every graph


class PadMode(enum.Enum):
    """What a binary convolution reads outside its input map: the value of a padded tap."""

    ZERO = 0  # nothing: the sum runs over the valid taps only
    MINUS_ONE = -1
    PLUS_ONE = 1

    @property
    def mode(self) -> str:
        """The spelling in a graph file's ``pad`` attribute."""
        return self.name.lower()

    @classmethod
    def parse(cls, mode: str) -> PadMode:
        """The mode a (validated) ``pad`` attribute names."""
        return cls[mode.upper()]


PAD_MODES = tuple(p.mode for p in PadMode)


def pad_of(op: Op) -> PadMode:
    """The pad mode of ``op``: its ``pad`` attribute, else ZERO (a dense layer or an image
    input pads nothing, or with a black pixel, 0)."""
    return PadMode.parse(op.attrs["pad"]) if "pad" in op.attrs else PadMode.ZERO


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """An int or a 2-sequence (a kernel, stride or padding attribute) as (rows, cols)."""
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    return int(a), int(b)


def out_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Output positions along one axis of a window op (floor: a window that does not fit is dropped)."""
    n = (size + 2 * pad - kernel) // stride + 1
    if kernel < 1 or stride < 1 or pad < 0 or n < 1:
        raise ValueError(f"window {kernel}, stride {stride}, padding {pad} do not fit size {size}")
    return n


class Cost(NamedTuple):
    """Operations of one op per inference, by the classes ``bnnkit.cost.graph_cost`` prices."""

    binary_macs: int = 0
    int_ops: int = 0
    fp_ops: int = 0


class Work(NamedTuple):
    """What the NumPy reference spends on one op for one image: multiply-accumulates (and
    pool window taps), and the arrays it makes beyond the tensors, as (values, what)."""

    macs: int = 0
    arrays: tuple[tuple[int, str], ...] = ()


Infer = Callable[["Op", list[TensorType]], TensorType]
CostRule = Callable[["Op", list[TensorType], TensorType], Cost]
WorkRule = Callable[["Op", list[TensorType], TensorType], Work]


def _no_work(op: Op, ins: list[TensorType], out: TensorType) -> Work:
    return Work()


@dataclass(frozen=True)
class OpDef:
    """One op kind: what it accepts (allowed types per input, attribute names, parameters
    and their types, ``bits``/``i32``/``f32``), its family and its rules."""

    kind: str
    family: Family
    inputs: tuple[tuple[str, ...], ...]
    infer: Infer
    cost: CostRule | None = None  # None only in a table under construction: conformance() reports it
    attrs: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict)
    optional_params: tuple[str, ...] = ()  # bits, like every flag vector
    work: WorkRule = _no_work
    doc: str = ""

    def param_type(self, name: str) -> str:
        return self.params.get(name, "bits")

    @property
    def reads_pixels(self) -> bool:
        """Takes the u8 image itself (the first layer), not binary activations."""
        return self.inputs[0] == ("u8",)


# --- shape rules ------------------------------------------------------------------------


def _conv_shape(op: Op, ins: list[TensorType]) -> TensorType:
    (_, shape), w = ins[0], op.params["weight"]
    if len(shape) != 3 or w.ndim != 4 or w.shape[1] != shape[0]:
        raise ValueError(f"weight {w.shape} does not match input {shape}")
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    if ph > w.shape[2] or pw > w.shape[3]:  # whole output rows of padding alone: no trained layer has them
        raise ValueError(f"padding {(ph, pw)} is larger than the kernel {w.shape[2:]}")
    return "i32", (w.shape[0], out_size(shape[1], w.shape[2], sh, ph), out_size(shape[2], w.shape[3], sw, pw))


def _dense_shape(op: Op, ins: list[TensorType]) -> TensorType:
    (_, shape), w = ins[0], op.params["weight"]
    if len(shape) != 1 or w.ndim != 2 or w.shape[1] != shape[0]:
        raise ValueError(f"weight {w.shape} does not match input {shape}")
    return "i32", (w.shape[0],)


def _per_channel_shape(out_type: str) -> Infer:
    def infer(op: Op, ins: list[TensorType]) -> TensorType:
        shape = ins[0][1]
        for name in OPS[op.kind].params:
            if op.params[name].shape != (shape[0],):
                raise ValueError(f"{name} has shape {op.params[name].shape}, expected ({shape[0]},)")
        return out_type, shape

    return infer


def _add_shape(op: Op, ins: list[TensorType]) -> TensorType:
    if ins[0] != ins[1]:
        raise ValueError(f"inputs differ: {ins[0]} vs {ins[1]}")
    return ins[0]


def _pool_shape(op: Op, ins: list[TensorType]) -> TensorType:
    (t, shape), p = ins[0], op.params
    if len(shape) != 3:
        raise ValueError(f"pooling needs (C,H,W), got {shape}")
    if "min_channels" in p and (t != "bits" or p["min_channels"].shape != (shape[0],)):
        raise ValueError("min_channels is one flag per channel of a bits input")
    (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
    return t, (shape[0], out_size(shape[1], kh, sh), out_size(shape[2], kw, sw))


def _fp_conv_shape(op: Op, ins: list[TensorType]) -> TensorType:
    _, (o, ho, wo) = _conv_shape(op, ins)
    if op.params["bias"].shape != (o,):
        raise ValueError(f"bias has shape {op.params['bias'].shape}, expected ({o},)")
    return "f32", (o, ho, wo)


def _fp_dense_shape(op: Op, ins: list[TensorType]) -> TensorType:
    _, (o,) = _dense_shape(op, ins)
    if op.params["bias"].shape != (o,):
        raise ValueError(f"bias has shape {op.params['bias'].shape}, expected ({o},)")
    return "f32", (o,)


def _flatten_shape(op: Op, ins: list[TensorType]) -> TensorType:
    t, shape = ins[0]
    return t, (math.prod(shape),)


def _argmax_shape(op: Op, ins: list[TensorType]) -> TensorType:
    if len(ins[0][1]) != 1:
        raise ValueError(f"argmax needs a vector, got {ins[0][1]}")
    return "index", ()


# --- cost rules (per inference on a device) and work rules (the NumPy reference, per image) ---


def _producer_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    macs = math.prod(out[1]) * math.prod(op.params["weight"].shape[1:])
    return Cost(binary_macs=macs) if ins[0][0] == "bits" else Cost(int_ops=macs)  # XNOR-popcount on bits only


def _pool_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(int_ops=math.prod(out[1]) * (math.prod(pair(op.attrs["kernel"])) - 1))


def _per_value_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(int_ops=math.prod(out[1]))  # one comparison or addition per value


def _affine_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(fp_ops=2 * math.prod(out[1]))


def _fp_producer_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    macs = math.prod(out[1]) * math.prod(op.params["weight"].shape[1:])
    return Cost(fp_ops=2 * macs + math.prod(out[1]))  # a multiply and an add per tap, then the bias


def _mean_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    n = math.prod(out[1]) * math.prod(pair(op.attrs["kernel"]))  # the adds and one division
    return Cost(fp_ops=n) if out[0] == "f32" else Cost(int_ops=n)


def _fp_compare_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(fp_ops=math.prod(out[1]))


def _argmax_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(int_ops=math.prod(ins[0][1]) - 1)


def _no_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost()


def _conv_work(op: Op, ins: list[TensorType], out: TensorType) -> Work:
    (c, h, w), (kh, kw) = ins[0][1], op.params["weight"].shape[2:]
    ph, pw = pair(op.attrs["padding"])
    window = out[1][1] * out[1][2] * c * kh * kw  # one row per output pixel, one column per tap
    return Work(window * out[1][0], ((c * (h + 2 * ph) * (w + 2 * pw), "padded input"), (window, "window matrix")))


def _dense_work(op: Op, ins: list[TensorType], out: TensorType) -> Work:
    return Work(math.prod(op.params["weight"].shape))


def _pool_work(op: Op, ins: list[TensorType], out: TensorType) -> Work:
    window = math.prod(out[1]) * math.prod(pair(op.attrs["kernel"]))
    return Work(window, ((window, "window matrix"),))


# --- int8 ops (the baseline that a BNN is measured against) ----------------------------------

INT8_ACC_LIMIT = 2**31 - 1
"""An int8 layer's accumulator, 128 * 128 per tap plus the bias, must stay within int32 so that
no runtime's sum can overflow; the shape rule refuses a fan-in or bias that could."""
REQUANT_SHIFT = (1, 62)  # acc * multiplier < 2**62 and the rounding half 2**61: int64 never overflows


def _requant_params(op: Op, channels: int) -> None:
    """The per-channel requantization parameters of an int8 op, checked against ``channels``."""
    for name in ("bias", "multiplier", "shift", "relu"):
        if name in op.params and op.params[name].shape != (channels,):
            raise ValueError(f"{name} has shape {op.params[name].shape}, expected ({channels},)")
    m, s = op.params["multiplier"], op.params["shift"]
    if m.size and m.min() < 0:
        raise ValueError("multiplier must be >= 0")
    if s.size and (s.min() < REQUANT_SHIFT[0] or s.max() > REQUANT_SHIFT[1]):
        raise ValueError(f"shift must lie in {REQUANT_SHIFT[0]}..{REQUANT_SHIFT[1]}")


def _int8_accumulator(op: Op, inner: Infer, ins: list[TensorType]) -> TensorType:
    """The i32 accumulator of an int8 conv or dense layer (``inner``: the binary layer's shape rule),
    its weights int8 and its bias bounded so that the sum fits int32."""
    t, shape = inner(op, ins)
    fan_in, bias = math.prod(op.params["weight"].shape[1:]), op.params["bias"]
    if bias.shape != (shape[0],):
        raise ValueError(f"bias has shape {bias.shape}, expected ({shape[0]},)")
    worst = 128 * 128 * fan_in + (int(np.abs(bias.astype(np.int64)).max()) if bias.size else 0)
    if worst > INT8_ACC_LIMIT:
        raise ValueError(f"fan-in {fan_in} and bias could overflow the int32 accumulator ({worst:,} > 2**31 - 1)")
    return t, shape


def _int8_conv_shape(op: Op, ins: list[TensorType]) -> TensorType:
    _, shape = _int8_accumulator(op, _conv_shape, ins)
    _requant_params(op, shape[0])
    return "i8", shape


def _int8_dense_shape(op: Op, ins: list[TensorType]) -> TensorType:
    return _int8_accumulator(op, _dense_shape, ins)


def _requantize_shape(op: Op, ins: list[TensorType]) -> TensorType:
    _requant_params(op, ins[0][1][0])
    return "i8", ins[0][1]


def _same_shape(out_type: str) -> Infer:
    def infer(op: Op, ins: list[TensorType]) -> TensorType:
        return out_type, ins[0][1]

    return infer


def _int8_producer_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    # an 8-bit multiply and a 32-bit add per MAC, and the requantization per value where there is one
    macs = math.prod(out[1]) * math.prod(op.params["weight"].shape[1:])
    return Cost(int_ops=2 * macs + (3 * math.prod(out[1]) if "multiplier" in op.params else 0))


def _requantize_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(int_ops=3 * math.prod(out[1]))  # a 64-bit multiply-add, a shift and the clamp per value


_REQUANT = {"multiplier": "i32", "shift": "i32"}
_REQUANT_DOC = (
    "requantized: y = clamp((acc * multiplier[o] + 2**(shift[o]-1)) >> shift[o], lo, 127) in int64 "
    "(round half up), lo = 0 where the optional bits relu[o] is set (a fused ReLU), else -128"
)


# --- fixed-point ops: the real-valued stream on cores without an FPU ---------------------------

Q32_MAX = 2**31 - 1
"""A ``q32`` value is an int32 ``raw`` standing for ``raw * 2**-F`` (F: the graph's fraction,
``meta["q32_fraction"]``, chosen by ``bnnkit.export.fixed``); its ops saturate to +-Q32_MAX, never
INT32_MIN, which stays ``threshold``'s constant-channel marker."""
Q_SHIFT = (0, 62)  # a rounding shift: with |product| <= 2**62 and its half 2**61 int64 never overflows
Q_PRODUCT_LIMIT = 2**62
_Q_INPUT_MAX = {"u8": 255, "i32": 2**31, "q32": 2**31}  # the largest |x| of an input type
_Q_ROUND = (
    "rnd(v, s) = (v + (2**s >> 1)) >> s (arithmetic shift: round half up), sat(v) = clamp(v, -(2**31-1), 2**31-1)"
)


def _q_params(op: Op, channels: int) -> None:
    """The per-channel parameters of a fixed-point op, checked against ``channels`` (a conv's
    weight apart), with every ``shift`` in ``Q_SHIFT``."""
    for name in OPS[op.kind].params:
        if name != "weight" and op.params[name].shape != (channels,):
            raise ValueError(f"{name} has shape {op.params[name].shape}, expected ({channels},)")
    s = op.params["shift"]
    if s.size and (s.min() < Q_SHIFT[0] or s.max() > Q_SHIFT[1]):
        raise ValueError(f"shift must lie in {Q_SHIFT[0]}..{Q_SHIFT[1]}")


def _q_elementwise_shape(op: Op, ins: list[TensorType]) -> TensorType:
    _q_params(op, ins[0][1][0])
    return "q32", ins[0][1]


def _q_producer(inner: Infer) -> Infer:
    """The shape rule of a fixed-point conv or dense layer (``inner``: the binary layer's), its
    int64 sum bounded: fan-in * max |x| * max |w| <= 2**62."""

    def infer(op: Op, ins: list[TensorType]) -> TensorType:
        _, shape = inner(op, ins)
        _q_params(op, shape[0])
        w = op.params["weight"]
        fan_in, w_max = math.prod(w.shape[1:]), int(np.abs(w.astype(np.int64)).max(initial=0))
        if fan_in * _Q_INPUT_MAX[ins[0][0]] * w_max > Q_PRODUCT_LIMIT:
            raise ValueError(f"fan-in {fan_in} and weights up to {w_max} could overflow the int64 sum")
        return "q32", shape

    return infer


def _q_scale_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    return Cost(int_ops=3 * math.prod(out[1]))  # a 64-bit multiply-add, the shift and the clamp per value


def _q_producer_cost(op: Op, ins: list[TensorType], out: TensorType) -> Cost:
    macs = math.prod(out[1]) * math.prod(op.params["weight"].shape[1:])
    return Cost(int_ops=2 * macs + 3 * math.prod(out[1]))  # a 64-bit multiply-add per tap, then rnd, bias, sat


# --- the table ------------------------------------------------------------------------------


def _table(*defs: OpDef) -> dict[str, OpDef]:
    return {d.kind: d for d in defs}


_WEIGHT = {"weight": "bits"}
_CONV_ATTRS = ("stride", "padding")
_WINDOW = ("kernel", "stride")

OPS: dict[str, OpDef] = _table(
    OpDef(
        "input_conv2d",
        Family.PRODUCER,
        (("u8",),),
        _conv_shape,
        _producer_cost,
        _CONV_ATTRS,
        _WEIGHT,
        work=_conv_work,
        doc="u8 (C,H,W) * ±1 weight (O,C,kh,kw) -> i32; padded pixels are 0 and add nothing",
    ),
    OpDef(
        "input_dense",
        Family.PRODUCER,
        (("u8",),),
        _dense_shape,
        _producer_cost,
        (),
        _WEIGHT,
        work=_dense_work,
        doc="u8 (F,) * ±1 weight (O,F) -> i32 (O,)",
    ),
    OpDef(
        "binary_conv2d",
        Family.PRODUCER,
        (("bits",),),
        _conv_shape,
        _producer_cost,
        (*_CONV_ATTRS, "pad"),
        _WEIGHT,
        work=_conv_work,
        doc="±1 (C,H,W) * ±1 weight (O,C,kh,kw) -> i32; pad 'zero' counts only valid taps, "
        "'minus_one'/'plus_one' pad with that constant",
    ),
    OpDef(
        "binary_dense",
        Family.PRODUCER,
        (("bits",),),
        _dense_shape,
        _producer_cost,
        (),
        _WEIGHT,
        work=_dense_work,
        doc="±1 (F,) * ±1 weight (O,F) -> i32 (O,) = F - 2*popcount(x xor w)",
    ),
    OpDef(
        "threshold",
        Family.THRESHOLD,
        (("i32", "q32"),),
        _per_channel_shape("bits"),
        _per_value_cost,
        (),
        {"thresh": "i32", "flip": "bits"},
        doc="i32 or q32 (C,...) -> bits: x >= thresh[c], or x <= thresh[c] where flip[c]; "
        "thresh = INT32_MIN makes a constant channel (1 without flip, 0 with flip)",
    ),
    OpDef(
        "affine",
        Family.ELEMENTWISE,
        (("u8", "i32", "f32"),),  # u8: a float first layer's input normalisation
        _per_channel_shape("f32"),
        _affine_cost,
        (),
        {"scale": "f32", "bias": "f32"},
        doc="(C,...) -> f32: float32(x) * scale[c] + bias[c], each step rounded to float32 (no FMA)",
    ),
    OpDef(
        "add",
        Family.ELEMENTWISE,
        (("i32", "f32"), ("i32", "f32")),
        _add_shape,
        _per_value_cost,
        doc="elementwise sum of two tensors of one type and shape",
    ),
    OpDef(
        "maxpool",
        Family.POOL,
        (("i32", "bits", "i8", "f32", "q32"),),  # f32: IEEE max, the first of equal values
        _pool_shape,
        _pool_cost,
        _WINDOW,
        {},
        ("min_channels",),
        work=_pool_work,
        doc="window max, no padding (floor); on bits max = OR, and channels marked in the optional "
        "bits param min_channels take the minimum (AND): a max-pool moved past a decreasing threshold",
    ),
    OpDef(
        "avgpool",
        Family.POOL,
        (("i32",),),
        _pool_shape,
        _pool_cost,
        _WINDOW,
        work=_pool_work,
        doc="window SUM of i32, no padding; the consumer folds the 1/(kh*kw)",
    ),
    # --- the real-valued path (float32; every step rounded to float32, no FMA) ---
    OpDef(
        "sign",
        Family.ELEMENTWISE,
        (("f32",),),
        _per_channel_shape("bits"),
        _fp_compare_cost,
        (),
        {"thresh": "f32"},
        doc="f32 (C,...) -> bits: x >= thresh[c] (IEEE compare: -0.0 >= 0.0 holds, NaN gives 0); "
        "RSign's sign(x - v) is x >= v exactly",
    ),
    OpDef(
        "prelu",
        Family.ELEMENTWISE,
        (("i32", "f32"),),
        _per_channel_shape("f32"),
        _fp_compare_cost,
        (),
        {"slope": "f32"},
        doc="(C,...) -> f32: float32(x) if float32(x) >= 0 else float32(x) * slope[c] (one rounding)",
    ),
    OpDef(
        "meanpool",
        Family.POOL,
        (("f32", "q32"),),
        _pool_shape,
        _mean_cost,
        _WINDOW,
        work=_pool_work,
        doc="window mean, no padding (floor). f32: s = +0.0, s = s + x over the taps row by row, "
        "each sum rounded to float32, then s / float32(kh*kw) (one division); q32: the exact int64 sum s "
        "of the n = kh*kw taps, then floor((2*s + n) / (2*n)) (round half up)",
    ),
    OpDef(
        "conv2d_f32",
        Family.PRODUCER,
        (("u8", "f32"),),
        _fp_conv_shape,
        _fp_producer_cost,
        _CONV_ATTRS,
        {"weight": "f32", "bias": "f32"},
        work=_conv_work,
        doc="u8 or f32 (C,H,W) * f32 weight (O,C,kh,kw) -> f32: s = +0.0, s = s + float32(x) * w over the "
        "taps inside the map, c then i then j, product and sum each rounded to float32, then s + bias[o]",
    ),
    OpDef(
        "dense_f32",
        Family.PRODUCER,
        (("u8", "f32"),),
        _fp_dense_shape,
        _fp_producer_cost,
        (),
        {"weight": "f32", "bias": "f32"},
        work=_dense_work,
        doc="u8 or f32 (F,) * f32 weight (O,F) -> f32 (O,): s = +0.0, s = s + float32(x[f]) * w[o,f] for f "
        "in order, each step rounded to float32, then s + bias[o]",
    ),
    OpDef(
        "flatten",
        Family.VIEW,
        (("u8", "bits", "i32", "f32", "i8", "q32"),),
        _flatten_shape,
        _no_cost,
        doc="(C,H,W) -> (C*H*W,) in C order",
    ),
    OpDef(
        "argmax",
        Family.HEAD,
        (("i32", "f32", "q32"),),
        _argmax_shape,
        _argmax_cost,
        doc="(C,) -> index of the first maximum (type 'index', shape ())",
    ),
    OpDef(
        "quantize_input",
        Family.ELEMENTWISE,
        (("u8",),),
        _same_shape("i8"),
        _per_value_cost,
        doc="u8 pixels -> i8: y = x >> 1 (0..127, the image at scale 2/255: pixel/255 ~ y * 2/255)",
    ),
    OpDef(
        "int8_conv2d",
        Family.PRODUCER,
        (("i8",),),
        _int8_conv_shape,
        _int8_producer_cost,
        _CONV_ATTRS,
        {"weight": "i8", "bias": "i32", **_REQUANT},
        ("relu",),
        work=_conv_work,
        doc="i8 (C,H,W) * i8 weight (O,C,kh,kw) -> i8: acc = bias[o] + sum of x*w over the taps, padded "
        "values 0; " + _REQUANT_DOC,
    ),
    OpDef(
        "int8_dense",
        Family.PRODUCER,
        (("i8",),),
        _int8_dense_shape,
        _int8_producer_cost,
        (),
        {"weight": "i8", "bias": "i32"},
        work=_dense_work,
        doc="i8 (F,) * i8 weight (O,F) -> i32 (O,): bias[o] + sum of x*w (class scores, or a requantize follows)",
    ),
    OpDef(
        "requantize",
        Family.ELEMENTWISE,
        (("i32",),),
        _requantize_shape,
        _requantize_cost,
        (),
        dict(_REQUANT),
        ("relu",),
        doc="i32 (C,...) acc -> i8, " + _REQUANT_DOC,
    ),
    # --- fixed point (q32): integers throughout, products and sums in int64 ---
    OpDef(
        "affine_q",
        Family.ELEMENTWISE,
        (("u8", "i32", "q32"),),
        _q_elementwise_shape,
        _q_scale_cost,
        (),
        {"mult": "i32", "shift": "i32", "bias": "i32"},
        doc="(C,...) -> q32: sat(rnd(x * mult[c], shift[c]) + bias[c]); " + _Q_ROUND,
    ),
    OpDef(
        "add_q",
        Family.ELEMENTWISE,
        (("q32",), ("q32",)),
        _add_shape,
        _per_value_cost,
        doc="q32 + q32 -> q32: sat(a + b) in int64 (the residual shortcut); " + _Q_ROUND,
    ),
    OpDef(
        "prelu_q",
        Family.ELEMENTWISE,
        (("q32",),),
        _q_elementwise_shape,
        _per_value_cost,
        (),
        {"mult": "i32", "shift": "i32"},
        doc="q32 (C,...) -> q32: x if x >= 0 else sat(rnd(x * mult[c], shift[c])); " + _Q_ROUND,
    ),
    OpDef(
        "conv2d_q",
        Family.PRODUCER,
        (("u8", "q32"),),
        _q_producer(_conv_shape),
        _q_producer_cost,
        _CONV_ATTRS,
        {"weight": "i32", "bias": "i32", "shift": "i32"},
        work=_conv_work,
        doc="u8 or q32 (C,H,W) * i32 weight (O,C,kh,kw) -> q32: acc = the int64 sum of x*w over the taps "
        "inside the map, then sat(rnd(acc, shift[o]) + bias[o]); " + _Q_ROUND,
    ),
    OpDef(
        "dense_q",
        Family.PRODUCER,
        (("u8", "q32"),),
        _q_producer(_dense_shape),
        _q_producer_cost,
        (),
        {"weight": "i32", "bias": "i32", "shift": "i32"},
        work=_dense_work,
        doc="u8 or q32 (F,) * i32 weight (O,F) -> q32 (O,): acc = the int64 sum of x*w, then "
        "sat(rnd(acc, shift[o]) + bias[o]); " + _Q_ROUND,
    ),
)


# --- backends ---------------------------------------------------------------------------------

BACKENDS = {
    "numpy": "bnnkit.runtime.numpy_ref",
    "c": "bnnkit.runtime.c",
    "fast": "bnnkit.runtime.fast",
    "sat": "bnnkit.analysis.robustness",
}
"""Every op kind needs an entry in each of these backends' tables (by the module that fills it)."""

TABLES: dict[str, OpTable] = {}
"""The backend tables created so far (a backend's module creates its table on import)."""


@dataclass(frozen=True)
class Refusal:
    """A backend's registered decision not to run an op kind, with the reason its users read."""

    reason: str


class OpTable:
    """One backend's entry per op kind: an implementation (whatever the backend calls) or a
    ``Refusal``. Filled at import by ``register``/``refuse``; ``table[kind]`` is the
    implementation, or one error line when there is none."""

    def __init__(self, backend: str):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.entries: dict[str, Any] = {}
        TABLES[backend] = self  # a module imported again (tests drop them from sys.modules) starts afresh

    def _add(self, kind: str, entry: Any) -> None:
        if kind not in OPS or kind in self.entries:
            raise ValueError(f"{self.backend}: {kind!r} is not an op of the table or is registered twice")
        self.entries[kind] = entry

    def register(self, *kinds: str) -> Callable[[Any], Any]:
        """A decorator: the decorated function or class is the entry of each of ``kinds``."""

        def add(entry: Any) -> Any:
            for kind in kinds:
                self._add(kind, entry)
            return entry

        return add

    def refuse(self, kind: str, reason: str) -> None:
        self._add(kind, Refusal(reason))

    def find(self, kind: str) -> Any:
        """The entry of ``kind``: an implementation or a ``Refusal``."""
        if kind not in self.entries:
            raise BnnkitError(f"the {self.backend} backend has no entry for op {kind!r} (tests/test_op_table.py)")
        return self.entries[kind]

    def __getitem__(self, kind: str) -> Any:
        entry = self.find(kind)
        if isinstance(entry, Refusal):
            raise BnnkitError(f"the {self.backend} backend does not run {kind}: {entry.reason}")
        return entry

    def kinds(self) -> tuple[str, ...]:
        """The op kinds this backend implements (refusals left out), in table order."""
        return tuple(k for k in OPS if k in self.entries and not isinstance(self.entries[k], Refusal))


def conformance(ops: dict[str, OpDef] | None = None, tables: dict[str, OpTable] | None = None) -> list[str]:
    """What the op table lacks, one line each: a backend without a table, an op kind without a
    cost rule or without an entry (implementation or ``Refusal``) in some backend's table."""
    ops, tables = OPS if ops is None else ops, TABLES if tables is None else tables
    problems = [f"no {name} table: import {module}" for name, module in BACKENDS.items() if name not in tables]
    for kind, d in ops.items():
        if d.cost is None:
            problems.append(f"{kind}: no cost rule")
        problems += [
            f"{kind}: no {name} entry" for name in BACKENDS if name in tables and kind not in tables[name].entries
        ]
    return problems
