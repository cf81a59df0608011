"""The C runtime's generator: portable C99 for a ``Graph``.

The generated ``{prefix}.c`` holds the weights as ``static const`` packed words, one
``static`` arena placed by ``bnnkit.graph.plan`` and the kernels the graph uses, copied
from ``c_kernels/kernels.c`` (``bnnkit.runtime.c_library``); ``{prefix}_infer`` calls them
in order with the layer's constants. This module writes only those tables and calls. No
malloc, no libm. The layout of every activation is the one ``plan`` documents (bits HWC in
32-bit words, each pixel word-padded or, for a narrow map, bit-dense; integers and floats CHW);
the header repeats what a caller needs. A kernel reading or writing ``bits`` is told each
map's bits per pixel (``pb``).

Binary dot products are XOR-popcounts, ``n_valid - 2 * popcount(x ^ w)``, with the unused
bits of every word 0 in activations and weights alike, so channel counts that are not
multiples of 32 need no masks. A dense layer is generated as a convolution whose kernel
covers its input's layout, which is how the graph's CHW ``flatten`` order is kept on an
HWC-packed map: the weights are permuted here, the data never moves (and a map with no unused
bits between its pixels, bit-dense or of whole words, is the patch itself).

``bnnkit.runtime.host`` compiles the sources for this machine, ``bnnkit.runtime.cortex_m``
for a Cortex-M; both through ``bnnkit.runtime.toolchain``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write, created_dir
from bnnkit.graph import INT32_MIN, OPS, Graph, Op, OpTable, PadMode, check_name, pad_of, pair
from bnnkit.graph.plan import MemoryPlan, Step, pixel_bits, plan_memory
from bnnkit.runtime.c_library import kernel_sources

# What reaches the generated C as text: this prefix, op names (graph.NAME, checked again
# where they are quoted) and numbers formatted from validated ints and floats; tensor names
# and meta never do.
PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# The popcount implementations the generated C can use: define BNNKIT_POPCOUNT_<name>.
POPCOUNT_VARIANTS = ("SWAR", "SHIFTS", "TABLE", "BUILTIN")


# --- parameters as C arrays -----------------------------------------------------------


def pack_words(bits: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """bool (..., n) -> uint32 (or uint64) (..., ceil(n/word_bits)): bit i in bit
    i % word_bits of word i // word_bits, unused bits 0."""
    bits = np.asarray(bits, dtype=bool)
    n = bits.shape[-1]
    if n % word_bits:
        padded = np.zeros(bits.shape[:-1] + (-(-n // word_bits) * word_bits,), dtype=bool)
        padded[..., :n] = bits
        bits = padded
    packed = np.ascontiguousarray(np.packbits(bits, axis=-1, bitorder="little"))  # a view's may not be
    little_endian = packed.view(f"<u{word_bits // 8}")
    # the bytes are already the words on a little-endian machine: no copy there (training's
    # popcount forward packs a map every step)
    return little_endian.astype(f"u{word_bits // 8}", copy=False)


def _array(ctype: str, name: str, values: Sequence[str]) -> str:
    rows = [", ".join(values[i : i + 8]) for i in range(0, len(values), 8)]
    return f"static const {ctype} {name}[{len(values)}] = {{\n    " + ",\n    ".join(rows) + "\n};"


def _words(name: str, words: np.ndarray) -> str:
    return _array("uint32_t", name, [f"0x{int(w):08x}u" for w in words.ravel()])


def _i32(v: int) -> str:
    # the literal 2147483648 does not fit an int, so INT32_MIN is spelled as an expression
    return "(-2147483647 - 1)" if v == INT32_MIN else str(v)


# A fused sum within +-THRESH16_BOUND meets a threshold clamped to int16 as it meets the int32
# one: beyond the bound every bit is decided the same way, and +-32767 are beyond it.
THRESH16_BOUND = 2**15 - 2
THRESH16_DEFINE = "#define SIGN_THRESH_16 /* every fused sum within +-32766: int16 thresholds */"


def _sum_bound(producer: Op) -> int:
    """The largest |sum| of a producer with +-1 weights: its taps, each a bit (+-1) or a pixel (<= 255)."""
    taps = int(np.prod(np.shape(producer.params["weight"])[1:]))
    return taps * (255 if OPS[producer.kind].reads_pixels else 1)


def _f32(v: np.float32) -> str:
    if not np.isfinite(v):
        raise BnnkitError(f"float parameter {v} is not finite; the C runtime takes finite floats only")
    mantissa, exponent = float(v).hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"  # exact: C99 hexadecimal float


# --- the generator --------------------------------------------------------------------

_CTYPES = {"u8": "uint8_t", "i32": "int32_t", "i8": "int8_t", "q32": "int32_t"}  # the C element type of a tensor type
_KERNEL_TYPE = {"q32": "i32"}  # a kernel on int32 values is named for i32 where q32 shares its meaning (max, argmax)


class _Emitter:
    """The tables and calls of one graph's C, step by step of its memory plan. ``EMIT`` is the
    C backend's table: per op kind the method that emits a step starting with that op."""

    EMIT = OpTable("c")

    def __init__(self, graph: Graph, prefix: str):
        self.g, self.p = graph, prefix
        self.plan: MemoryPlan = plan_memory(graph)
        self.used: set[str] = set()
        self.data: list[str] = []
        self.calls: list[str] = []
        self.int8_patch: tuple[int, int] | None = None  # the int8 convolutions' scratch: (index in data, words)
        self.patch_words = 0  # the largest patch of one output pixel (c_kernels: struct patch)
        fused = [graph.ops[s.ops[0]] for s in self.plan.steps if len(s.ops) > 1]  # producers with a threshold
        self.thresh16 = bool(fused) and all(_sum_bound(op) <= THRESH16_BOUND for op in fused)

    def buf(self, tensor: str, ctype: str) -> str:
        name = self.plan.buffer_of[tensor]
        if name == self.g.input:
            return "input"
        at = f"{self.p}_arena + {self.plan.offsets[name] // 4}"
        return at if ctype == "uint32_t" else f"({ctype} *)({at})"

    def pixel_bits(self, tensor: str) -> int:
        """Bits per pixel of a ``bits`` tensor in its C layout (``plan.pixel_bits``)."""
        return pixel_bits(self.plan.layout[tensor])

    def call(self, step: Step, text: str) -> None:
        ops = [self.g.ops[i] for i in step.ops]
        # checked again here: an Op is mutable after its graph was validated
        names = ", ".join(dict.fromkeys(check_name(op.name, f"op {i} name") for i, op in zip(step.ops, ops) if op.name))
        kinds = " + ".join(op.kind for op in ops)
        where = f"op {step.ops[0]}" if len(ops) == 1 else f"ops {step.ops[0]}-{step.ops[-1]}"
        self.calls.append(f"    /* {where}: {kinds}{' (' + names + ')' if names else ''} */\n    {text};")

    def conv(self, i: int, op: Op) -> tuple[str, str]:
        """The ``struct conv`` of producer op ``i``; returns its name and the kernel family."""
        c, h, w = self.plan.layout[op.inputs[0]]
        weight = np.asarray(op.params["weight"], dtype=bool)
        if weight.ndim == 2:  # dense: a conv whose kernel covers the input's layout
            weight = weight.reshape(weight.shape[0], c, h, w)
            kh, kw, (sh, sw), (ph, pw) = h, w, (1, 1), (0, 0)
        else:
            kh, kw = weight.shape[2:]
            (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
        o = weight.shape[0]
        out = self.g.types[op.output][1]
        _, ho, wo = out if len(out) == 3 else (o, 1, 1)
        family = "input" if OPS[op.kind].reads_pixels else "binary"
        # a kernel covering the unpadded map reads it in place where its layout is the patch's
        whole_map = (kh, kw, ph, pw) == (h, w, 0, 0)
        pb = 0  # bits per input pixel: binary maps only
        if family == "input":
            words = pack_words(weight.reshape(o, -1))
            patch = 0 if whole_map else -(-c * kh * kw // 4)  # the pixels as bytes
        else:
            words = pack_words(weight.transpose(0, 2, 3, 1).reshape(o, -1))  # densely, tap then channel
            pb = self.pixel_bits(op.inputs[0])
            # with pad 'zero' the kernel's general path writes a mask of the bits that count after the patch
            patch = 0 if whole_map and pb == c else words.shape[1] * (2 if pad_of(op) is PadMode.ZERO else 1)
        self.patch_words = max(self.patch_words, patch)
        self.data.append(_words(f"op{i}_weight", words))
        pad = "NULL"
        if pad_of(op) is not PadMode.ZERO:
            self.data.append(_words(f"op{i}_pad", pack_words(np.full(c, pad_of(op) is PadMode.PLUS_ONE))))
            pad = f"op{i}_pad"
        self.data.append(
            f"static const struct conv op{i}_conv = {{\n"
            f"    .C = {c}, .H = {h}, .W = {w}, .pb = {pb}, .O = {o}, .KH = {kh}, .KW = {kw},\n"
            f"    .SH = {sh}, .SW = {sw}, .PH = {ph}, .PW = {pw}, .Ho = {ho}, .Wo = {wo},\n"
            f"    .wpo = {words.shape[1]}, .w = op{i}_weight, .pad = {pad},\n"
            f"    .patch = {f'{self.p}_patch' if patch else 'NULL'}\n}};"
        )
        return f"op{i}_conv", family

    def thresh(self, i: int, op: Op, fused: bool = False) -> tuple[str, str]:
        """A threshold's tables; those of a fused one (``struct sign``) as int16 where they can be
        (``thresh16``: clamped beyond every sum, each decides as before)."""
        t = op.params["thresh"]
        if fused and self.thresh16:
            self.data.append(_array("int16_t", f"op{i}_thresh", [str(int(v)) for v in np.clip(t, -(2**15), 2**15 - 1)]))
        else:
            self.data.append(_array("int32_t", f"op{i}_thresh", [_i32(int(v)) for v in t]))
        self.data.append(_words(f"op{i}_flip", pack_words(op.params["flip"])))
        return f"op{i}_thresh", f"op{i}_flip"

    def min_channels(self, i: int, op: Op) -> str:
        if "min_channels" not in op.params:
            return "NULL"
        self.data.append(_words(f"op{i}_min", pack_words(op.params["min_channels"])))
        return f"op{i}_min"

    def step(self, step: Step) -> None:
        self.EMIT[self.g.ops[step.ops[0]].kind](self, step)

    # --- per op kind: a step that starts with it ----------------------------------------

    def inputs(self, op: Op) -> list[str]:
        """The buffers ``op`` reads, each as a pointer of its C type."""
        return [self.buf(n, _CTYPES.get(self.g.types[n][0], "uint32_t")) for n in op.inputs]

    def output(self, step: Step) -> str:
        """The buffer ``step`` writes."""
        out_type = self.g.types[self.g.ops[step.ops[-1]].output][0]
        return self.buf(self.g.ops[step.ops[-1]].output, _CTYPES.get(out_type, "uint32_t"))

    @EMIT.register("input_conv2d", "input_dense", "binary_conv2d", "binary_dense")
    def producer(self, step: Step) -> None:
        """A conv or dense layer, alone (-> i32) or fused with its threshold and a max-pool (-> bits)."""
        ops = [self.g.ops[i] for i in step.ops]
        first, last, i = ops[0], ops[-1], step.ops[0]
        x, out = self.inputs(first), self.output(step)
        conv, family = self.conv(i, first)
        if len(ops) == 1:
            self.used.add(f"{family}_conv")
            self.call(step, f"{family}_conv(&{conv}, {x[0]}, {out})")
            return
        t, flip = self.thresh(step.ops[1], ops[1], fused=True)
        pool = last if len(ops) == 3 else None  # the plan fuses a maxpool as the third op
        (pkh, pkw), (psh, psw) = (pair(pool.attrs["kernel"]), pair(pool.attrs["stride"])) if pool else ((1, 1), (1, 1))
        mins = self.min_channels(step.ops[-1], pool) if pool else "NULL"
        _, ho, wo = self.plan.layout[last.output]
        dense = int(last.output in self.plan.dense)
        self.data.append(
            f"static const struct sign op{i}_sign = {{\n"
            f"    .thresh = {t}, .flip = {flip}, .KH = {pkh}, .KW = {pkw}, .SH = {psh}, .SW = {psw},\n"
            f"    .min = {mins}, .Ho = {ho}, .Wo = {wo}, .dense = {dense}\n}};"
        )
        # maps of whole words a pixel have a kernel of their own, which narrow models need not carry
        kernel = f"{family}_conv_sign" + (
            "_words" if family == "binary" and self.plan.layout[first.inputs[0]][0] % 32 == 0 else ""
        )
        self.used.add(kernel)
        self.call(step, f"{kernel}(&{conv}, &op{i}_sign, {x[0]}, {out})")

    @EMIT.register("threshold")
    def threshold(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        t, flip = self.thresh(i, op)
        pb = self.pixel_bits(op.output)
        self.used.add("threshold")
        self.call(step, f"threshold({self.inputs(op)[0]}, {c}, {h * w}, {pb}, {t}, {flip}, {self.output(step)})")

    def pool(self, step: Step, fn: str, extra: str = "") -> None:
        op = self.g.ops[step.ops[0]]
        (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
        c, h, w = self.plan.layout[op.inputs[0]]
        self.used.add(fn)
        x, out = self.inputs(op)[0], self.output(step)
        self.call(step, f"{fn}({x}, {c}, {h}, {w}, {kh}, {kw}, {sh}, {sw}, {extra}{out})")

    @EMIT.register("maxpool")
    def maxpool(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type = self.g.types[op.inputs[0]][0]
        if in_type == "bits":
            pbs = f"{self.pixel_bits(op.inputs[0])}, {self.pixel_bits(op.output)}"
            self.pool(step, "maxpool_bits", f"{pbs}, {self.min_channels(i, op)}, ")
        else:
            self.pool(step, f"maxpool_{_KERNEL_TYPE.get(in_type, in_type)}")

    @EMIT.register("avgpool")
    def avgpool(self, step: Step) -> None:
        self.pool(step, "avgpool")

    @EMIT.register("add")
    def add(self, step: Step) -> None:
        op = self.g.ops[step.ops[0]]
        in_type, (c, h, w), x = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]], self.inputs(op)
        self.used.add(f"add_{in_type}")
        self.call(step, f"add_{in_type}({x[0]}, {x[1]}, {c * h * w}, {self.output(step)})")

    @EMIT.register("affine")
    def affine(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type, (c, h, w) = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]]
        for name in ("scale", "bias"):
            values = np.asarray(op.params[name], np.float32)
            self.data.append(_array("float", f"op{i}_{name}", [_f32(v) for v in values]))
        self.used.add(f"affine_{in_type}")
        x, out = self.inputs(op)[0], self.output(step)
        self.call(step, f"affine_{in_type}({x}, {c}, {h * w}, op{i}_scale, op{i}_bias, {out})")

    def floats(self, name: str, values: np.ndarray) -> str:
        """A float table of the generated C, exact (hexadecimal literals)."""
        self.data.append(_array("float", name, [_f32(v) for v in np.asarray(values, np.float32).ravel()]))
        return name

    @EMIT.register("sign")
    def sign(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        t = self.floats(f"op{i}_thresh", op.params["thresh"])
        pb = self.pixel_bits(op.output)
        self.used.add("sign_f32")
        self.call(step, f"sign_f32({self.inputs(op)[0]}, {c}, {h * w}, {pb}, {t}, {self.output(step)})")

    @EMIT.register("prelu")
    def prelu(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type, (c, h, w) = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]]
        slope = self.floats(f"op{i}_slope", op.params["slope"])
        self.used.add(f"prelu_{in_type}")
        self.call(step, f"prelu_{in_type}({self.inputs(op)[0]}, {c}, {h * w}, {slope}, {self.output(step)})")

    @EMIT.register("meanpool")
    def meanpool(self, step: Step) -> None:
        q32 = self.g.types[self.g.ops[step.ops[0]].inputs[0]][0] == "q32"
        self.pool(step, "meanpool_q" if q32 else "meanpool")

    def conv_geometry(self, op: Op) -> str:
        """The shape fields of ``struct fconv`` and ``struct qconv`` for a real-valued conv, or a
        dense layer as a 1x1 conv over its F inputs."""
        in_shape, weight = self.g.types[op.inputs[0]][1], op.params["weight"]
        if weight.ndim == 2:
            (c, h, w), (o, kh, kw) = (in_shape[0], 1, 1), (len(weight), 1, 1)
            (sh, sw), (ph, pw), (ho, wo) = (1, 1), (0, 0), (1, 1)
        else:
            (c, h, w), (o, _, kh, kw) = in_shape, weight.shape
            (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
            _, ho, wo = self.g.types[op.output][1]
        return (
            f"    .C = {c}, .H = {h}, .W = {w}, .O = {o}, .KH = {kh}, .KW = {kw},\n"
            f"    .SH = {sh}, .SW = {sw}, .PH = {ph}, .PW = {pw}, .Ho = {ho}, .Wo = {wo},\n"
        )

    @EMIT.register("conv2d_f32", "dense_f32")
    def fconv(self, step: Step) -> None:
        """A full-precision conv, or a dense layer as a 1x1 conv over its F inputs (the
        flattened map is CHW memory: the graph's flatten order)."""
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type = self.g.types[op.inputs[0]][0]
        self.floats(f"op{i}_w", op.params["weight"])
        self.floats(f"op{i}_bias", op.params["bias"])
        self.data.append(
            f"static const struct fconv op{i}_fconv = {{\n{self.conv_geometry(op)}"
            f"    .w = op{i}_w, .bias = op{i}_bias\n}};"
        )
        self.used.add(f"fconv_{in_type}")
        self.call(step, f"fconv_{in_type}(&op{i}_fconv, {self.inputs(op)[0]}, {self.output(step)})")

    @EMIT.register("argmax")
    def argmax(self, step: Step) -> None:
        op = self.g.ops[step.ops[0]]
        in_type, (c, h, w) = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]]
        fn = f"argmax_{_KERNEL_TYPE.get(in_type, in_type)}"
        self.used.add(fn)
        self.call(step, f"return {fn}({self.inputs(op)[0]}, {c * h * w}, scores)")

    # --- int8 ops (kernels in c_kernels/int8.c) ---------------------------------------------

    def int8_weights(self, i: int, op: Op, taps: tuple[int, ...] = (0, 1, 2, 3)) -> int:
        """Op ``i``'s int8 weights as words, four taps each in the byte order ``taps``, rows
        padded to whole words; returns the words per output channel."""
        w = np.asarray(op.params["weight"], np.int8).reshape(len(op.params["weight"]), -1)
        w = np.pad(w, ((0, 0), (0, -w.shape[1] % 4)))
        w = w.reshape(len(w), -1, 4)[:, :, list(taps)].reshape(len(w), -1)
        words = np.ascontiguousarray(w).view("<u4")
        self.data.append(_words(f"op{i}_weight", words))
        self.data.append(_array("int32_t", f"op{i}_bias", [_i32(int(v)) for v in op.params["bias"]]))
        return int(words.shape[1])

    def requant(self, i: int, op: Op) -> None:
        """The tables ``op{i}_mult``, ``op{i}_shift`` and ``op{i}_lo`` (the clamp's lower bound)."""
        for name, values in (("mult", op.params["multiplier"]), ("shift", op.params["shift"])):
            self.data.append(_array("int32_t", f"op{i}_{name}", [_i32(int(v)) for v in values]))
        relu = op.params.get("relu", np.zeros(len(op.params["shift"]), bool))
        self.data.append(_array("int8_t", f"op{i}_lo", ["0" if r else "-128" for r in relu]))

    def int8_scratch(self, words: int) -> str:
        """One scratch buffer for every int8 convolution's patch (int16 values), as large as the
        largest needs."""
        name, line = f"{self.p}_int8_patch", f"static int16_t {self.p}_int8_patch[{words}];"
        if self.int8_patch is None:
            self.int8_patch = (len(self.data), words)
            self.data.append(line)
        elif words > self.int8_patch[1]:
            self.int8_patch = (self.int8_patch[0], words)
            self.data[self.int8_patch[0]] = line
        return name

    @EMIT.register("quantize_input")
    def quantize_input(self, step: Step) -> None:
        op = self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        self.used.add("quantize_input")
        self.call(step, f"quantize_input({self.inputs(op)[0]}, {c * h * w}, {self.output(step)})")

    @EMIT.register("int8_conv2d")
    def int8_conv2d(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        o, _, kh, kw = op.params["weight"].shape
        (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
        _, ho, wo = self.g.types[op.output][1]
        wpo = self.int8_weights(i, op, (0, 2, 1, 3))  # the pairs (t0, t1), (t2, t3) of the int16 patch
        self.requant(i, op)
        patch = self.int8_scratch(4 * wpo)
        self.data.append(
            f"static const struct conv8 op{i}_conv = {{\n"
            f"    .C = {c}, .H = {h}, .W = {w}, .O = {o}, .KH = {kh}, .KW = {kw},\n"
            f"    .SH = {sh}, .SW = {sw}, .PH = {ph}, .PW = {pw}, .Ho = {ho}, .Wo = {wo},\n"
            f"    .wpo = {wpo}, .w = op{i}_weight, .bias = op{i}_bias, .mult = op{i}_mult,\n"
            f"    .shift = op{i}_shift, .lo = op{i}_lo, .patch = {patch}\n}};"
        )
        self.used.add("int8_conv")
        self.call(step, f"int8_conv(&op{i}_conv, {self.inputs(op)[0]}, {self.output(step)})")

    @EMIT.register("int8_dense")
    def int8_dense(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        wpo = self.int8_weights(i, op)
        x = self.buf(op.inputs[0], "uint32_t")  # whole words: the weights' zero padding covers the bytes past F
        self.used.add("int8_dense")
        o = len(op.params["weight"])
        self.call(step, f"int8_dense({x}, {wpo}, {o}, op{i}_weight, op{i}_bias, {self.output(step)})")

    @EMIT.register("requantize")
    def requantize(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        self.requant(i, op)
        self.used.add("requantize")
        x, out = self.inputs(op)[0], self.output(step)
        self.call(step, f"requantize({x}, {c}, {h * w}, op{i}_mult, op{i}_shift, op{i}_lo, {out})")

    # --- fixed-point ops (kernels in c_kernels/fixed.c) -------------------------------------

    def ints(self, name: str, values: np.ndarray) -> str:
        """An int32 table of the generated C."""
        self.data.append(_array("int32_t", name, [_i32(int(v)) for v in np.asarray(values).ravel()]))
        return name

    @EMIT.register("affine_q")
    def affine_q(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type, (c, h, w) = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]]
        tables = ", ".join(self.ints(f"op{i}_{name}", op.params[name]) for name in ("mult", "shift", "bias"))
        fn = "affine_q_u8" if in_type == "u8" else "affine_q_i32"  # i32 sums and q32 values alike
        self.used.add(fn)
        self.call(step, f"{fn}({self.inputs(op)[0]}, {c}, {h * w}, {tables}, {self.output(step)})")

    @EMIT.register("add_q")
    def add_q(self, step: Step) -> None:
        op = self.g.ops[step.ops[0]]
        (c, h, w), x = self.plan.layout[op.inputs[0]], self.inputs(op)
        self.used.add("add_q")
        self.call(step, f"add_q({x[0]}, {x[1]}, {c * h * w}, {self.output(step)})")

    @EMIT.register("prelu_q")
    def prelu_q(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        tables = ", ".join(self.ints(f"op{i}_{name}", op.params[name]) for name in ("mult", "shift"))
        self.used.add("prelu_q")
        self.call(step, f"prelu_q({self.inputs(op)[0]}, {c}, {h * w}, {tables}, {self.output(step)})")

    @EMIT.register("conv2d_q", "dense_q")
    def qconv(self, step: Step) -> None:
        """A fixed-point conv, or a dense layer as a 1x1 conv over its F inputs (CHW memory is the
        graph's flatten order), as ``fconv`` lays out the float ones."""
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        in_type = self.g.types[op.inputs[0]][0]
        for name in ("weight", "bias", "shift"):
            self.ints(f"op{i}_{name}", op.params[name])
        self.data.append(
            f"static const struct qconv op{i}_qconv = {{\n{self.conv_geometry(op)}"
            f"    .w = op{i}_weight, .bias = op{i}_bias, .shift = op{i}_shift\n}};"
        )
        fn = "qconv_u8" if in_type == "u8" else "qconv_q32"
        self.used.add(fn)
        self.call(step, f"{fn}(&op{i}_qconv, {self.inputs(op)[0]}, {self.output(step)})")

    @EMIT.register("flatten")
    def flatten(self, step: Step) -> None:
        """Never called: the plan makes a flatten a view of its input, which no step runs."""
        raise RuntimeError("internal error: the memory plan runs no flatten step")


def generate_c(graph: Graph, prefix: str = "bnn", *, layer_marks: bool = False) -> dict[str, str]:
    """The sources ``{prefix}.h`` and ``{prefix}.c`` of ``graph``. With ``layer_marks`` each
    step is preceded by a call of ``bnnkit_layer_mark()``, which the caller defines (the
    Cortex-M harness does, for per-layer instruction counts)."""
    if not (isinstance(prefix, str) and PREFIX.fullmatch(prefix)):
        raise BnnkitError(f"prefix {prefix!r} is not a C identifier (a letter, then at most 63 letters, digits and _)")
    e = _Emitter(graph, prefix)
    for step in e.plan.steps:
        e.step(step)
    if layer_marks:
        e.calls = [call.replace("\n    ", "\n    bnnkit_layer_mark();\n    ", 1) for call in e.calls]
    plan, up = e.plan, prefix.upper()
    c, h, w = graph.input_shape
    header = f"""\
/* Generated by bnnkit: a binarized network, {len(graph.ops)} graph ops. Portable C99, no
   malloc, no libm. Build with -ffp-contract=off (floats are rounded as the reference does).

   int {prefix}_infer(const uint8_t *input, float *scores)
     input   {up}_INPUT_SIZE bytes, the image as uint8 in CHW order ({c} x {h} x {w});
     scores  {up}_NUM_CLASSES floats, written unless NULL;
     returns the index of the first maximal score (the label).
   uint8_t *{prefix}_input_buffer(void)
     the input's slot in the arena: an image written there and passed to {prefix}_infer
     needs no RAM of the caller's (an image elsewhere works too; the slot then goes unused).
   Not reentrant: activations live in one static arena of {up}_ARENA_BYTES bytes, the
   input's {plan.input_bytes} included.

   Conventions: a binary value is one bit, 1 <=> +1 and 0 <=> -1, sign(0) = +1. Binary
   activations are stored HWC in 32-bit words, pixel p's channel c at bit p * pb + c (bit b
   in bit b % 32 of word b / 32), unused bits 0, where pb = C for a map stored bit-dense
   (C < 32, where that saves words) and else 32 * ceil(C/32); integer and float activations
   are CHW. Binary weights are packed densely (a dense layer's weights permuted to its
   input's HWC order). Define one of BNNKIT_POPCOUNT_SWAR, _SHIFTS,
   _TABLE or _BUILTIN to choose the popcount (default: the builtin where the core has an
   instruction, SWAR on Cortex-M). */
#ifndef {up}_H
#define {up}_H

#include <stdint.h>

#define {up}_INPUT_C {c}
#define {up}_INPUT_H {h}
#define {up}_INPUT_W {w}
#define {up}_INPUT_SIZE {c * h * w}
#define {up}_NUM_CLASSES {graph.num_classes}
#define {up}_ARENA_BYTES {plan.arena_bytes}

int {prefix}_infer(const uint8_t *input, float *scores);
uint8_t *{prefix}_input_buffer(void);

#endif
"""
    source = "\n\n".join(
        [f'/* Generated by bnnkit; see {prefix}.h. */\n#include <stddef.h>\n#include "{prefix}.h"']
        + ([THRESH16_DEFINE] if e.thresh16 else [])
        + kernel_sources(e.used)
        + ([f"static uint32_t {prefix}_patch[{e.patch_words}];"] if e.patch_words else [])
        + e.data
        + (["void bnnkit_layer_mark(void);"] if layer_marks else [])
        + [
            f"static uint32_t {prefix}_arena[{max(plan.arena_bytes // 4, 1)}];",
            f"int {prefix}_infer(const uint8_t *input, float *scores)\n{{\n" + "\n".join(e.calls) + "\n}",
            f"uint8_t *{prefix}_input_buffer(void)\n{{\n"
            f"    return (uint8_t *)({prefix}_arena + {plan.offsets[graph.input] // 4});\n}}",
        ]
    )
    return {f"{prefix}.h": header, f"{prefix}.c": source + "\n"}


def write_sources(
    graph: Graph, out_dir: str | Path, prefix: str = "bnn", *, scratch: bool = False, layer_marks: bool = False
) -> list[Path]:
    """Write ``{prefix}.h`` and ``{prefix}.c`` into ``out_dir``; returns their paths. Each
    file is written atomically, unless ``scratch``: a build directory that is thrown away
    needs no fsync per file (the random-graph tests build over a thousand). ``layer_marks``
    as for ``generate_c``."""
    # a bad prefix or graph creates no directory
    sources = generate_c(graph, prefix, layer_marks=True) if layer_marks else generate_c(graph, prefix)
    paths = []
    with created_dir(out_dir, "output directory") as out:  # a full disk leaves no empty directory
        for name, text in sources.items():
            if scratch:
                (out / name).write_text(text)
            else:
                atomic_write(out / name, text)
            paths.append(out / name)
    return paths


def __getattr__(name: str) -> Any:
    # The host build lived here until it moved to bnnkit.runtime.host, and the flags to
    # bnnkit.runtime.toolchain; these names stay importable from here for existing callers.
    if name in ("HostModel", "build_host", "build_hosts"):
        from bnnkit.runtime import host

        return getattr(host, name)
    if name in ("CFLAGS", "SANITIZE"):
        from bnnkit.runtime import toolchain

        return getattr(toolchain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
