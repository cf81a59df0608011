"""A float32-stream graph → its fixed-point twin, for cores without an FPU (the Cortex-M3).

Graph side only (no torch): ``to_fixed`` reads a graph whose real-valued stream is ``f32`` and
writes the same network with that stream in ``q32`` (``bnnkit.graph.ops``: int32 raw values of
raw * 2**-F). One fraction F serves the whole graph, so a residual ``add_q`` adds raw values as
they are. It is the largest F (at most ``MAX_FRACTION``) for which every ``f32`` tensor's largest
magnitude on the calibration images, times ``HEADROOM``, and every bias stays below 2**31; an
image that goes beyond saturates (the ops clamp to +-(2**31 - 1)) instead of wrapping.

Op by op (everything else is copied):

* ``affine`` → ``affine_q``: per channel ``mult / 2**shift`` ≈ scale * 2**(F - F_in), with the
  largest shift that keeps |mult| < 2**31 (F_in = F for a q32 input, 0 for pixels and sums);
  the bias rounded to nearest at 2**-F;
* ``add`` of ``f32`` → ``add_q``; ``meanpool``, ``maxpool``, ``flatten``, ``argmax`` as they are;
* ``sign`` → ``threshold``: x >= t is raw >= ceil(t * 2**F), exact on the q32 values;
* ``prelu`` → ``prelu_q`` (slope as mult and shift; an i32 input first goes onto the stream by an
  ``affine_q`` of scale 1, exact);
* ``conv2d_f32`` / ``dense_f32`` → ``conv2d_q`` / ``dense_q``: per output channel the weights
  rounded at 2**-Fw with the largest Fw that the int64 bound of the shape rule admits, shift
  F_in + Fw - F.

Where the twin differs from the float32 graph is rounding: the float graph rounds every step to
float32 (24 bits), the twin rounds weights and scales to about 31 significant bits and values to
2**-F; labels differ where two class scores are that close (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.graph import Q32_MAX, Graph, Op
from bnnkit.graph.ops import Q_PRODUCT_LIMIT, Q_SHIFT
from bnnkit.runtime import numpy_ref

HEADROOM = 4.0  # how far beyond the calibration images' largest value the stream still fits
MAX_FRACTION = 30
INT32_MIN = -(2**31)


def choose_fraction(graph: Graph, images: np.ndarray, batch: int = 200) -> tuple[int, float]:
    """F for ``graph`` (module doc) from uint8 ``images``, and the largest |value| it was set by."""
    real = [name for name, (kind, _) in graph.types.items() if kind == "f32"]
    if not real:
        raise BnnkitError("the graph has no float32 stream to put in fixed point")
    if len(images) == 0:
        raise BnnkitError("fixed point needs at least one calibration image")
    peak = 0.0
    for i in range(0, len(images), batch):
        env = numpy_ref.execute(graph, images[i : i + batch], keep=True)
        peak = max(peak, *(float(np.abs(env[name]).max(initial=0)) for name in real))
    # a bias is added in int64 but stored as an int32 raw value: it must fit without headroom
    biases = [float(np.abs(op.params["bias"]).max(initial=0)) for op in graph.ops
              if "bias" in op.params and graph.types[op.output][0] == "f32"]  # fmt: skip
    need = max(peak * HEADROOM, *biases)
    if need >= Q32_MAX:
        raise BnnkitError(f"the float32 stream reaches {need:.3g} (with headroom {HEADROOM:g}): beyond what q32 holds")
    fraction = math.floor(math.log2(Q32_MAX / need)) if need > 0 else MAX_FRACTION
    return min(fraction, MAX_FRACTION), peak


def _mult_shift(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (mult, shift) with mult / 2**shift the nearest to ``ratio`` that int32 mult
    and a shift in Q_SHIFT give: the largest shift keeping |mult| <= 2**31 - 1."""
    ratio = np.asarray(ratio, np.float64)
    mult, shift = np.zeros(len(ratio), np.int64), np.zeros(len(ratio), np.int64)
    for c, r in enumerate(ratio):
        if r == 0:
            continue
        s = min(Q_SHIFT[1], math.floor(math.log2(Q32_MAX / abs(r))))
        while s >= 0 and abs(round(r * 2.0**s)) > Q32_MAX:  # log2 rounded up at a power of two
            s -= 1
        if s < 0:
            raise ValueError(f"a scale of {r:.3g} per raw unit does not fit a q32 multiplier")
        mult[c], shift[c] = round(r * 2.0**s), s
    return mult.astype(np.int32), shift.astype(np.int32)


def _raw(values: np.ndarray, fraction: int) -> np.ndarray:
    """Real values as q32 raw values at 2**-fraction, rounded to nearest, saturated."""
    return np.clip(np.round(np.asarray(values, np.float64) * 2.0**fraction), -Q32_MAX, Q32_MAX).astype(np.int32)


class _Converter:
    """The twin's ops, op by op of the float graph: ``CONVERT`` holds, per op kind, the method for
    an op that reads or writes the float32 stream; every other op is copied."""

    def __init__(self, graph: Graph, fraction: int):
        self.g, self.f = graph, fraction
        self.ops: list[Op] = []

    def frac(self, tensor: str) -> int:
        """The fraction of a tensor of the float graph in the twin: F on the stream, 0 elsewhere."""
        return self.f if self.g.types[tensor][0] == "f32" else 0

    def emit(self, kind: str, op: Op, inputs: list[str] | None = None, output: str | None = None, **params) -> str:
        out = output or op.output
        attrs = dict(op.attrs) if "stride" in op.attrs else {}  # a conv's geometry; no other op here has attrs
        self.ops.append(Op(kind, inputs or list(op.inputs), out, attrs, params, op.name))
        return out

    def convert(self, i: int, op: Op) -> None:
        on_stream = any(self.g.types[t][0] == "f32" for t in (*op.inputs, op.output))
        method = self.CONVERT.get(op.kind) if on_stream else None
        try:
            # meanpool, maxpool, flatten, argmax take q32 as they are, and binary layers stay binary
            if method:
                method(self, op)
            else:
                self.ops.append(replace(op))
        except ValueError as e:
            raise BnnkitError(f"op {i} ({op.kind}{' from ' + op.name if op.name else ''}): {e}") from None

    def affine(self, op: Op) -> None:
        mult, shift = _mult_shift(op.params["scale"] * 2.0 ** (self.f - self.frac(op.inputs[0])))
        self.emit("affine_q", op, mult=mult, shift=shift, bias=_raw(op.params["bias"], self.f))

    def add(self, op: Op) -> None:
        self.emit("add_q", op)

    def sign(self, op: Op) -> None:
        t = np.ceil(op.params["thresh"].astype(np.float64) * 2.0**self.f)
        # beyond the stream's range a channel is constant: INT32_MIN, with flip for "never"
        never, always = t > Q32_MAX, t <= -Q32_MAX
        thresh = np.where(never | always, INT32_MIN, np.clip(t, -Q32_MAX, Q32_MAX)).astype(np.int32)
        self.emit("threshold", op, thresh=thresh, flip=never)

    def prelu(self, op: Op) -> None:
        x = op.inputs[0]
        if self.g.types[x][0] == "i32":  # onto the stream first: x * 2**F, exact
            c = self.g.types[x][1][0]
            mult, shift = _mult_shift(np.full(c, 2.0**self.f))
            x = self.emit("affine_q", op, output=f"{op.output}.q", mult=mult, shift=shift, bias=np.zeros(c, np.int32))
        mult, shift = _mult_shift(op.params["slope"])
        self.emit("prelu_q", op, [x], mult=mult, shift=shift)

    def producer(self, op: Op) -> None:
        w = op.params["weight"].astype(np.float64)
        f_in = self.frac(op.inputs[0])
        fan_in = math.prod(w.shape[1:])
        limit = min(Q32_MAX, Q_PRODUCT_LIMIT // (fan_in * (255 if f_in == 0 else 2**31)))
        peak = np.abs(w.reshape(len(w), -1)).max(axis=1)
        weight, shift = np.zeros(w.shape, np.int32), np.zeros(len(w), np.int32)
        for o in range(len(w)):
            if peak[o] == 0:
                continue
            fw = math.floor(math.log2(limit / peak[o]))
            fw = min(fw, Q_SHIFT[1] + self.f - f_in)  # the shift F_in + Fw - F may not pass 62
            while np.abs(np.round(w[o] * 2.0**fw)).max() > limit:
                fw -= 1
            if f_in + fw - self.f < 0:
                raise ValueError(f"weights up to {peak[o]:.3g} do not fit a q32 layer")
            weight[o], shift[o] = np.round(w[o] * 2.0**fw), f_in + fw - self.f
        kind = "conv2d_q" if w.ndim == 4 else "dense_q"
        self.emit(kind, op, weight=weight, bias=_raw(op.params["bias"], self.f), shift=shift)

    CONVERT = {
        "affine": affine,
        "add": add,
        "sign": sign,
        "prelu": prelu,
        "conv2d_f32": producer,
        "dense_f32": producer,
    }


def to_fixed(graph: Graph, calibration: np.ndarray, fraction: int | None = None) -> Graph:
    """The fixed-point twin of ``graph`` (module doc), F chosen on uint8 ``calibration`` images
    unless ``fraction`` is given; ``meta`` gains ``q32_fraction`` and ``q32_peak``."""
    calibration = numpy_ref.check_input(graph, calibration)
    peak = float("nan")
    if fraction is None:
        fraction, peak = choose_fraction(graph, calibration)
    elif not 0 <= fraction <= MAX_FRACTION:
        raise BnnkitError(f"the fraction must be 0..{MAX_FRACTION}, got {fraction}")
    conv = _Converter(graph, fraction)
    for i, op in enumerate(graph.ops):
        conv.convert(i, op)
    meta = {**graph.meta, "real": "fixed", "q32_fraction": fraction}
    if not math.isnan(peak):
        meta["q32_peak"] = peak
    return Graph(graph.input_shape, conv.ops, graph.input, meta)
