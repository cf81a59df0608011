"""The NumPy reference interpreter: the specification of every graph op.

Written for clarity, not speed. Activations carry a leading batch axis. ``bits`` are
bool arrays (True ⇔ +1); binary arithmetic is done on their ±1 values, so each op reads
as its formula. Integer sums are computed with float matrix products (BLAS), which are
exact while every partial sum stays below 2**24 in float32 or 2**53 in float64:
``_exact_dtype`` picks the smaller type that is exact for the worst case of the layer.
Results are converted back to int32 at once.

Every kernel is registered in ``KERNELS``, the NumPy backend's entry per op kind of the op
table (``bnnkit.graph.ops``); ``KERNELS[kind](op, *inputs)`` runs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from bnnkit.errors import BnnkitError
from bnnkit.graph import DTYPES, INT32_MIN, Q32_MAX, Graph, Op, OpTable, out_size, pad_of, pair, resources
from bnnkit.progress import progress as bar

KERNELS = OpTable("numpy")
# What one batch of ``predict`` may hold: graph.MAX_ELEMENTS bounds one image, this the batch.
BATCH_BYTES = 2**29


def pm1(bits: np.ndarray, dtype: type[np.floating[Any]] = np.float64) -> np.ndarray:
    """bits (True ⇔ +1) → ±1."""
    return np.where(bits, 1.0, -1.0).astype(dtype, copy=False)


def _exact_dtype(max_abs_input: int, fan_in: int) -> type[np.floating[Any]]:
    return np.float32 if max_abs_input * fan_in < 2**24 else np.float64


def _to_i32(x: np.ndarray) -> npt.NDArray[np.int32]:
    if np.abs(x).max(initial=0) >= 2**31:
        raise BnnkitError("an integer sum overflowed int32")
    return x.astype(np.int32)


def _conv(
    x: np.ndarray, w: np.ndarray, stride: int | Sequence[int], padding: int | Sequence[int], pad_value: float
) -> npt.NDArray[np.int32]:
    """x (N,C,H,W), w (O,C,kh,kw) ±1, both of an exact float type → (N,O,Ho,Wo) sums."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    # Channels last, so that copying the patches moves runs of C values, not of kw: 2-4x faster
    # on 32 channels. The sums are exact in ``x``'s type, so their order does not matter.
    x = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    win = sliding_window_view(x, w.shape[2:], axis=(1, 2))[:, ::sh, ::sw]  # N,Ho,Wo,C,kh,kw
    n, ho, wo = win.shape[:3]
    patches = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, -1)  # one row per output pixel
    out = patches @ w.transpose(0, 2, 3, 1).reshape(len(w), -1).T
    return _to_i32(out.reshape(n, ho, wo, len(w)).transpose(0, 3, 1, 2))


def _fan_in(op: Op) -> int:
    return int(np.prod(op.params["weight"].shape[1:]))


@KERNELS.register("input_conv2d")
def input_conv2d(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    # A padded pixel is 0 (black), so it adds nothing to the sum.
    dt = _exact_dtype(255, _fan_in(op))
    return _conv(x.astype(dt), pm1(op.params["weight"], dt), op.attrs["stride"], op.attrs["padding"], 0.0)


@KERNELS.register("binary_conv2d")
def binary_conv2d(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    # 'zero' pads with 0, which is exactly "sum over the valid taps only".
    dt = _exact_dtype(1, _fan_in(op))
    pad = float(pad_of(op).value)
    return _conv(pm1(x, dt), pm1(op.params["weight"], dt), op.attrs["stride"], op.attrs["padding"], pad)


@KERNELS.register("input_dense")
def input_dense(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    dt = _exact_dtype(255, _fan_in(op))
    return _to_i32(x.astype(dt) @ pm1(op.params["weight"], dt).T)


@KERNELS.register("binary_dense")
def binary_dense(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    dt = _exact_dtype(1, _fan_in(op))
    return _to_i32(pm1(x, dt) @ pm1(op.params["weight"], dt).T)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) → broadcastable against (N, C, ...) of ``ndim`` dims."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@KERNELS.register("threshold")
def threshold(op: Op, x: np.ndarray) -> npt.NDArray[np.bool_]:
    t = _per_channel(op.params["thresh"].astype(np.int64), x.ndim)
    flip = _per_channel(op.params["flip"], x.ndim)
    # INT32_MIN: x >= t always holds and x <= t never does, because no sum reaches
    # INT32_MIN (_to_i32 refuses |x| >= 2**31): a contract the C runtime relies on too.
    if x.min(initial=0) <= INT32_MIN:
        raise BnnkitError("an integer sum reached INT32_MIN, the constant-channel marker")
    return np.where(flip, x <= t, x >= t)


@KERNELS.register("affine")
def affine(op: Op, x: np.ndarray) -> npt.NDArray[np.float32]:
    scale = _per_channel(op.params["scale"], x.ndim)
    bias = _per_channel(op.params["bias"], x.ndim)
    # float32 throughout: two roundings, product then sum (the C code is built without FMA).
    y: npt.NDArray[np.float32] = (x.astype(np.float32) * scale).astype(np.float32) + bias
    return y


@KERNELS.register("add")
def add(op: Op, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _to_i32(a.astype(np.int64) + b) if a.dtype == np.int32 else (a + b).astype(np.float32)


def _windows(op: Op, x: np.ndarray) -> np.ndarray:
    (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
    ho, wo = out_size(x.shape[2], kh, sh), out_size(x.shape[3], kw, sw)
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
    return win.reshape(win.shape[:4] + (-1,))


@KERNELS.register("maxpool")
def maxpool(op: Op, x: np.ndarray) -> np.ndarray:
    win = _windows(op, x)
    if win.dtype == np.float32:  # the first maximal value: of +0.0 and -0.0, whichever comes first
        out: np.ndarray = win[..., 0]
        for t in range(1, win.shape[-1]):
            out = np.where(win[..., t] > out, win[..., t], out)
        return out
    out = win.max(axis=-1)  # on bool: OR
    if "min_channels" in op.params:
        mins = _per_channel(op.params["min_channels"], 4)
        out = np.where(mins, win.min(axis=-1), out)  # on bool: AND
    return out


@KERNELS.register("avgpool")
def avgpool(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    return _to_i32(_windows(op, x).astype(np.int64).sum(axis=-1))


# --- the real-valued path: float32, one rounding per written step, in the order the op's doc says ---


@KERNELS.register("sign")
def sign(op: Op, x: np.ndarray) -> npt.NDArray[np.bool_]:
    return x >= _per_channel(op.params["thresh"], x.ndim)


@KERNELS.register("prelu")
def prelu(op: Op, x: np.ndarray) -> npt.NDArray[np.float32]:
    xf = x.astype(np.float32)
    return np.where(xf >= 0, xf, (xf * _per_channel(op.params["slope"], x.ndim)).astype(np.float32))


@KERNELS.register("meanpool")
def meanpool(op: Op, x: np.ndarray) -> np.ndarray:
    win = _windows(op, x)
    if win.dtype == np.int32:  # q32: the exact sum, then the mean rounded half up (floor division)
        n = np.int64(win.shape[-1])
        mean: npt.NDArray[np.int32] = ((2 * win.astype(np.int64).sum(axis=-1) + n) // (2 * n)).astype(np.int32)
        return mean
    acc = np.zeros(win.shape[:-1], np.float32)
    for t in range(win.shape[-1]):  # left to right, each sum rounded (NumPy's sum would pair the terms)
        acc = (acc + win[..., t]).astype(np.float32)
    return (acc / np.float32(win.shape[-1])).astype(np.float32)


@KERNELS.register("conv2d_f32")
def conv2d_f32(op: Op, x: np.ndarray) -> npt.NDArray[np.float32]:
    w, bias = op.params["weight"], op.params["bias"]
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    # a padded tap reads +0.0: its product is ±0, which leaves the (never -0.0) sum unchanged,
    # exactly as skipping it does
    xp = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, (o, c, kh, kw) = len(x), w.shape
    ho, wo = out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)
    acc = np.zeros((n, o, ho, wo), np.float32)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                tap = xp[:, ci, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                acc = (acc + (tap[:, None] * _per_channel(w[:, ci, i, j], 4)).astype(np.float32)).astype(np.float32)
    y: npt.NDArray[np.float32] = (acc + _per_channel(bias, 4)).astype(np.float32)
    return y


@KERNELS.register("dense_f32")
def dense_f32(op: Op, x: np.ndarray) -> npt.NDArray[np.float32]:
    w, xf = op.params["weight"], x.astype(np.float32)
    acc = np.zeros((len(x), len(w)), np.float32)
    for f in range(w.shape[1]):
        acc = (acc + (xf[:, f : f + 1] * w[None, :, f]).astype(np.float32)).astype(np.float32)
    y: npt.NDArray[np.float32] = (acc + op.params["bias"][None]).astype(np.float32)
    return y


@KERNELS.register("flatten")
def flatten(op: Op, x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


@KERNELS.register("argmax")
def argmax(op: Op, x: np.ndarray) -> npt.NDArray[np.intp]:
    labels: npt.NDArray[np.intp] = np.argmax(x, axis=1)  # first maximum wins
    return labels


# --- int8 ops: integers throughout, in int64 (exact: the shape rules bound every sum) ---------


@KERNELS.register("quantize_input")
def quantize_input(op: Op, x: np.ndarray) -> npt.NDArray[np.int8]:
    return (x >> 1).astype(np.int8)


def requantize_values(acc: np.ndarray, op: Op) -> npt.NDArray[np.int8]:
    """i32 accumulators (N, C, ...) -> i8 by ``op``'s per-channel multiplier, shift and relu flags:
    ``(acc * m + 2**(s-1)) >> s`` (an arithmetic shift: round half up), clamped to [lo, 127]."""
    m = _per_channel(op.params["multiplier"].astype(np.int64), acc.ndim)
    s = _per_channel(op.params["shift"].astype(np.int64), acc.ndim)
    y = (acc.astype(np.int64) * m + (np.int64(1) << (s - 1))) >> s
    relu = op.params.get("relu", np.zeros(acc.shape[1], bool))
    lo = _per_channel(np.where(relu, 0, -128), acc.ndim)
    out: npt.NDArray[np.int8] = np.clip(y, lo, 127).astype(np.int8)
    return out


def int8_sum(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    """bias + x · w of an int8 conv or dense layer, as int32 (float64 products: exact, the shape
    rule bounds every sum below 2**31)."""
    w = op.params["weight"].astype(np.float64)
    xf = x.astype(np.float64)
    if w.ndim == 4:
        acc = _conv(xf, w, op.attrs["stride"], op.attrs["padding"], 0.0)
    else:
        acc = _to_i32(xf @ w.T)
    return _to_i32(acc.astype(np.int64) + _per_channel(op.params["bias"].astype(np.int64), acc.ndim))


@KERNELS.register("int8_conv2d")
def int8_conv2d(op: Op, x: np.ndarray) -> npt.NDArray[np.int8]:
    return requantize_values(int8_sum(op, x), op)


@KERNELS.register("int8_dense")
def int8_dense(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    return int8_sum(op, x)


@KERNELS.register("requantize")
def requantize(op: Op, x: np.ndarray) -> npt.NDArray[np.int8]:
    return requantize_values(x, op)


# --- fixed-point ops (q32): integers in int64, every rounding rnd, every result sat ---------


def rnd(v: np.ndarray, shift: np.ndarray) -> npt.NDArray[np.int64]:
    """int64 ``v`` shifted right by ``shift`` (>= 0), rounded half up: ``(v + (2**shift >> 1)) >> shift``."""
    s = shift.astype(np.int64)
    out: npt.NDArray[np.int64] = (v + ((np.int64(1) << s) >> 1)) >> s
    return out


def saturate(v: np.ndarray) -> npt.NDArray[np.int32]:
    """int64 -> int32 clamped to +-Q32_MAX (never INT32_MIN: ``threshold``'s marker)."""
    out: npt.NDArray[np.int32] = np.clip(v, -Q32_MAX, Q32_MAX).astype(np.int32)
    return out


@KERNELS.register("affine_q")
def affine_q(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    p = {name: _per_channel(v.astype(np.int64), x.ndim) for name, v in op.params.items()}
    return saturate(rnd(x.astype(np.int64) * p["mult"], p["shift"]) + p["bias"])


@KERNELS.register("add_q")
def add_q(op: Op, a: np.ndarray, b: np.ndarray) -> npt.NDArray[np.int32]:
    return saturate(a.astype(np.int64) + b)


@KERNELS.register("prelu_q")
def prelu_q(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    mult, shift = (_per_channel(op.params[name].astype(np.int64), x.ndim) for name in ("mult", "shift"))
    return np.where(x >= 0, x, saturate(rnd(x.astype(np.int64) * mult, shift)))


def _int64_sum(op: Op, x: np.ndarray) -> npt.NDArray[np.int64]:
    """x . w of a fixed-point conv or dense layer, in int64 (exact: the shape rule bounds every
    partial sum by 2**62), padded taps 0. Tap by tap, as integers: a float product is not exact."""
    w, xi = op.params["weight"].astype(np.int64), x.astype(np.int64)
    if w.ndim == 2:
        acc2: npt.NDArray[np.int64] = np.zeros((len(x), len(w)), np.int64)
        for f in range(w.shape[1]):
            acc2 += xi[:, f : f + 1] * w[None, :, f]
        return acc2
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    xp = np.pad(xi, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    (o, c, kh, kw) = w.shape
    ho, wo = out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)
    acc: npt.NDArray[np.int64] = np.zeros((len(x), o, ho, wo), np.int64)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                tap = xp[:, ci, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                acc += tap[:, None] * _per_channel(w[:, ci, i, j], 4)
    return acc


@KERNELS.register("conv2d_q", "dense_q")
def fixed_producer(op: Op, x: np.ndarray) -> npt.NDArray[np.int32]:
    acc = _int64_sum(op, x)
    shift, bias = (_per_channel(op.params[name].astype(np.int64), acc.ndim) for name in ("shift", "bias"))
    return saturate(rnd(acc, shift) + bias)


def check_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.shape[1:] != graph.input_shape:
        raise BnnkitError(
            f"graph input must be uint8 of shape (N, {', '.join(map(str, graph.input_shape))}), got {x.dtype} {x.shape}"
        )
    return x


def execute(graph: Graph, x: np.ndarray, keep: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on a batch of uint8 images (N, C, H, W). Returns the graph's scores and
    labels, and with ``keep=True`` every intermediate tensor by name."""
    env = {graph.input: check_input(graph, x)}
    for op in graph.ops:
        env[op.output] = KERNELS[op.kind](op, *(env[name] for name in op.inputs))
    if keep:
        return env
    return {graph.scores: env[graph.scores], graph.ops[-1].output: env[graph.ops[-1].output]}


def no_predictions(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """What ``predict`` returns for 0 images: (0, classes) scores of the graph's score type
    and (0,) int64 labels. The ops are not run on an empty batch: reshapes to (0, -1) are
    ambiguous."""
    return np.zeros((0, graph.num_classes), DTYPES[graph.types[graph.scores][0]]), np.zeros(0, np.int64)


def predict(
    graph: Graph, x: np.ndarray, batch_size: int = 100, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N, classes) and labels (N,) for a set of images (N may be 0), a batch of at
    most ``batch_size`` at a time, fewer where a batch would hold more than ``BATCH_BYTES``."""
    x = check_input(graph, x)
    if len(x) == 0:
        return no_predictions(graph)
    use = resources(graph)  # its largest array as float64 for the matrix products, every tensor kept at <= 4 bytes
    batch_size = max(1, min(batch_size, BATCH_BYTES // (8 * use["largest"] + 4 * use["activations"])))
    scores, labels = [], []
    starts = range(0, len(x), batch_size)
    for i in bar(starts, desc="numpy runtime", unit="batch", enabled=progress):
        env = execute(graph, x[i : i + batch_size])
        scores.append(env[graph.scores])
        labels.append(env[graph.ops[-1].output])
    return np.concatenate(scores), np.concatenate(labels)
