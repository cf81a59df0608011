"""The C runtime: a generator of portable C99 for a ``Graph`` and a host build that runs it.

The generated ``{prefix}.c`` holds the weights as ``static const`` packed words, one
``static`` arena placed by ``bnnkit.graph.plan`` and one small function per op kind the
graph uses; ``{prefix}_infer`` calls them in order with the layer's constants. No malloc,
no libm. The layout of every activation is the one ``plan`` documents (bits HWC-packed in
32-bit words, integers and floats CHW); the header repeats what a caller needs.

Binary dot products are XOR-popcounts, ``n_valid - 2 * popcount(x ^ w)``, with the unused
bits of every word 0 in activations and weights alike, so channel counts that are not
multiples of 32 need no masks. A dense layer is generated as a convolution whose kernel
covers its input's layout, which is how the graph's CHW ``flatten`` order is kept on an
HWC-packed map: the weights are permuted here, the data never moves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write, created_dir, make_dir
from bnnkit.graph import INT32_MIN, OPS, Graph, Op, OpTable, PadMode, check_name, pad_of, pair
from bnnkit.graph.plan import MemoryPlan, Step, plan_memory
from bnnkit.runtime.numpy_ref import check_input

# What reaches the generated C as text: this prefix, op names (graph.NAME, checked again
# where they are quoted) and numbers formatted from validated ints and floats; tensor names
# and meta never do.
PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-ffp-contract=off")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")
# The popcount implementations the generated C can use: define BNNKIT_POPCOUNT_<name>.
POPCOUNT_VARIANTS = ("SWAR", "SHIFTS", "TABLE", "BUILTIN")

# --- the C functions, emitted only when used ----------------------------------------
# name -> (source, the helpers it calls)

_HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bit_at": (
        """\
static int bit_at(const uint32_t *v, int i)
{
    return (int)((v[i >> 5] >> (i & 31)) & 1u);
}""",
        (),
    ),
    # Variants, chosen at compile time (benchmarks/mcu_popcount.py measures them):
    # BNNKIT_POPCOUNT_SWAR     bit-parallel sums, one multiply (the default without an instruction)
    # BNNKIT_POPCOUNT_SHIFTS   bit-parallel sums, shifts and adds only (for cores with slow multiply)
    # BNNKIT_POPCOUNT_TABLE    four lookups in a 256-byte table
    # BNNKIT_POPCOUNT_BUILTIN  the compiler's builtin (an instruction on x86/Arm-A, libgcc's table on M)
    "popcount": (
        """\
/* No Cortex-M has a popcount instruction: there the builtin is a libgcc table lookup. */
#if !defined(BNNKIT_POPCOUNT_SWAR) && !defined(BNNKIT_POPCOUNT_SHIFTS) && !defined(BNNKIT_POPCOUNT_TABLE) && \
    !defined(BNNKIT_POPCOUNT_BUILTIN)
#if (defined(__GNUC__) || defined(__clang__)) && !(defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M')
#define BNNKIT_POPCOUNT_BUILTIN
#else
#define BNNKIT_POPCOUNT_SWAR
#endif
#endif
#if defined(BNNKIT_POPCOUNT_BUILTIN)
#define POPCOUNT(v) __builtin_popcountl((unsigned long)(v))
#elif defined(BNNKIT_POPCOUNT_TABLE)
static const uint8_t popcount_table[256] = {
    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7, 4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8,
};
#define POPCOUNT(v) (popcount_table[(v) & 0xffu] + popcount_table[((v) >> 8) & 0xffu] + \
                     popcount_table[((v) >> 16) & 0xffu] + popcount_table[(v) >> 24])
#else
static int popcount32(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0fu;
#if defined(BNNKIT_POPCOUNT_SHIFTS)
    v = v + (v >> 8);
    v = v + (v >> 16);
    return (int)(v & 0x3fu);
#else
    return (int)((v * 0x01010101u) >> 24);
#endif
}
#define POPCOUNT(v) popcount32(v)
#endif""",
        (),
    ),
    # f32 activations live in the uint32_t arena as their bit patterns; a union is the
    # C99 way to reinterpret them without breaking strict aliasing
    "f32_bits": (
        """\
static uint32_t f32_bits(float f)
{
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
}""",
        (),
    ),
    "f32_of": (
        """\
static float f32_of(uint32_t u)
{
    union { float f; uint32_t u; } v;
    v.u = u;
    return v.f;
}""",
        (),
    ),
    "input_acc": (
        """\
/* One accumulator of a u8 convolution: padded pixels are 0 and add nothing, so only the
   taps inside the image are summed. Weight bit k = (c * KH + i) * KW + j. */
static int32_t input_acc(const struct conv *L, const uint8_t *x, const uint32_t *w, int y, int xo)
{
    int y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW;
    int i0 = y0 < 0 ? -y0 : 0, i1 = L->H - y0 < L->KH ? L->H - y0 : L->KH;
    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;
    int32_t acc = 0;
    int c, i, j;
    for (c = 0; c < L->C; c++)
        for (i = i0; i < i1; i++) {
            const uint8_t *row = x + (c * L->H + y0 + i) * L->W + x0;
            int k = (c * L->KH + i) * L->KW;
            for (j = j0; j < j1; j++) {
                int32_t v = row[j], neg = bit_at(w, k + j) - 1; /* 0 for +1, -1 for -1 */
                acc += (v ^ neg) - neg;
            }
        }
    return acc;
}""",
        ("bit_at",),
    ),
    "binary_acc": (
        """\
/* One accumulator of a binary convolution: n - 2 * popcount(x ^ w) over the taps that
   count. A kernel row's taps inside the map are one run of words (HWC). A tap outside
   reads L->pad (the constant padded pixel) or, when that is NULL (pad 'zero'), is
   skipped. Weights: per tap (i, j), the input's words per pixel. */
static int32_t binary_acc(const struct conv *L, const uint32_t *x, const uint32_t *w, int y, int xo)
{
    int cw = (L->C + 31) / 32, y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW;
    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;
    int32_t n = 0, ones = 0;
    int i, j, k;
    for (i = 0; i < L->KH; i++, w += L->KW * cw) {
        int iy = y0 + i, lo = L->KW, hi = L->KW;
        if (iy >= 0 && iy < L->H && j0 < j1) {
            const uint32_t *p = x + (iy * L->W + x0 + j0) * cw, *q = w + j0 * cw;
            lo = j0;
            hi = j1;
            for (k = 0; k < (hi - lo) * cw; k++)
                ones += POPCOUNT(p[k] ^ q[k]);
            n += (hi - lo) * L->C;
        }
        if (L->pad != NULL)
            for (j = 0; j < L->KW; j++)
                if (j < lo || j >= hi) {
                    for (k = 0; k < cw; k++)
                        ones += POPCOUNT(L->pad[k] ^ w[j * cw + k]);
                    n += L->C;
                }
    }
    return n - 2 * ones;
}""",
        ("popcount",),
    ),
    "threshold": (
        """\
/* i32 CHW -> bits HWC. thresh INT32_MIN needs no case of its own: no sum reaches it. */
static void threshold(const int32_t *x, int C, int HW, const int32_t *thresh, const uint32_t *flip, uint32_t *out)
{
    int cw = (C + 31) / 32, p, c;
    for (p = 0; p < HW; p++, out += cw) {
        for (c = 0; c < cw; c++)
            out[c] = 0;
        for (c = 0; c < C; c++) {
            int32_t v = x[c * HW + p];
            int b = bit_at(flip, c) ? v <= thresh[c] : v >= thresh[c];
            out[c >> 5] |= (uint32_t)b << (c & 31);
        }
    }
}""",
        ("bit_at",),
    ),
    "maxpool_bits": (
        """\
/* Window OR per word; channels set in min (may be NULL) take the window AND instead. */
static void maxpool_bits(const uint32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW,
                         const uint32_t *min, uint32_t *out)
{
    int cw = (C + 31) / 32, Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, y, xo, k, i, j;
    for (y = 0; y < Ho; y++)
        for (xo = 0; xo < Wo; xo++)
            for (k = 0; k < cw; k++) {
                uint32_t any = 0, all = 0xffffffffu, m = min != NULL ? min[k] : 0;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        uint32_t v = x[((y * SH + i) * W + xo * SW + j) * cw + k];
                        any |= v;
                        all &= v;
                    }
                *out++ = (any & ~m) | (all & m);
            }
}""",
        (),
    ),
    "maxpool_i32": (
        """\
static void maxpool_i32(const int32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                int32_t m = x[y * SH * W + xo * SW];
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        int32_t v = x[(y * SH + i) * W + xo * SW + j];
                        m = v > m ? v : m;
                    }
                *out++ = m;
            }
}""",
        (),
    ),
    "avgpool": (
        """\
/* The window SUM: the consumer folds the 1/(KH*KW). */
static void avgpool(const int32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                int32_t s = 0;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++)
                        s += x[(y * SH + i) * W + xo * SW + j];
                *out++ = s;
            }
}""",
        (),
    ),
    "add_i32": (
        """\
static void add_i32(const int32_t *a, const int32_t *b, int n, int32_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}""",
        (),
    ),
    "add_f32": (
        """\
static void add_f32(const uint32_t *a, const uint32_t *b, int n, uint32_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = f32_bits(f32_of(a[i]) + f32_of(b[i]));
}""",
        ("f32_bits", "f32_of"),
    ),
    "argmax_i32": (
        """\
/* The first maximum wins. */
static int argmax_i32(const int32_t *x, int n, float *scores)
{
    int i, best = 0;
    for (i = 0; i < n; i++) {
        if (scores != NULL)
            scores[i] = (float)x[i];
        if (x[i] > x[best])
            best = i;
    }
    return best;
}""",
        (),
    ),
    "argmax_f32": (
        """\
/* The first maximum wins. */
static int argmax_f32(const uint32_t *x, int n, float *scores)
{
    int i, best = 0;
    for (i = 0; i < n; i++) {
        if (scores != NULL)
            scores[i] = f32_of(x[i]);
        if (f32_of(x[i]) > f32_of(x[best]))
            best = i;
    }
    return best;
}""",
        ("f32_of",),
    ),
}

_AFFINE = """\
/* float(x) * scale[c], rounded to float, then + bias[c]: the volatile product cannot be
   contracted into an FMA whatever -ffp-contract says. */
static void affine_{t}(const {xtype} *x, int C, int HW, const float *scale, const float *bias, uint32_t *out)
{{
    int c, p;
    for (c = 0; c < C; c++)
        for (p = 0; p < HW; p++) {{
            volatile float prod = {load} * scale[c];
            *out++ = f32_bits(prod + bias[c]);
        }}
}}"""
_HELPERS["affine_i32"] = (_AFFINE.format(t="i32", xtype="int32_t", load="(float)x[c * HW + p]"), ("f32_bits",))
_HELPERS["affine_f32"] = (_AFFINE.format(t="f32", xtype="uint32_t", load="f32_of(x[c * HW + p])"), ("f32_bits", "f32_of"))

_CONV_I32 = """\
/* -> i32 CHW */
static void {kind}(const struct conv *L, const {xtype} *x, int32_t *out)
{{
    int o, y, xo;
    for (o = 0; o < L->O; o++)
        for (y = 0; y < L->Ho; y++)
            for (xo = 0; xo < L->Wo; xo++)
                *out++ = {acc}(L, x, L->w + o * L->wpo, y, xo);
}}"""

_CONV_SIGN = """\
/* Fused with its threshold and a max-pool (1x1 when there is none) -> bits HWC; the i32
   map is never stored. A pooled OR stops at the first 1, an AND (min channel) at the first 0. */
static void {kind}_sign(const struct conv *L, const struct sign *S, const {xtype} *x, uint32_t *out)
{{
    int ow = (L->O + 31) / 32, py, px, o, i, j;
    for (py = 0; py < S->Ho; py++)
        for (px = 0; px < S->Wo; px++, out += ow) {{
            for (o = 0; o < ow; o++)
                out[o] = 0;
            for (o = 0; o < L->O; o++) {{
                const uint32_t *w = L->w + o * L->wpo;
                int32_t t = S->thresh[o];
                int flip = bit_at(S->flip, o), init = S->min != NULL && bit_at(S->min, o), b = init;
                for (i = 0; i < S->KH && b == init; i++)
                    for (j = 0; j < S->KW && b == init; j++) {{
                        int32_t acc = {acc}(L, x, w, py * S->SH + i, px * S->SW + j);
                        b = flip ? acc <= t : acc >= t;
                    }}
                out[o >> 5] |= (uint32_t)b << (o & 31);
            }}
        }}
}}"""

for _kind, _xtype in (("input", "uint8_t"), ("binary", "uint32_t")):
    _HELPERS[f"{_kind}_conv"] = (_CONV_I32.format(kind=f"{_kind}_conv", xtype=_xtype, acc=f"{_kind}_acc"), (f"{_kind}_acc",))
    _HELPERS[f"{_kind}_conv_sign"] = (
        _CONV_SIGN.format(kind=f"{_kind}_conv", xtype=_xtype, acc=f"{_kind}_acc"),
        (f"{_kind}_acc", "bit_at"),
    )

_STRUCTS = """\
/* A convolution; a dense layer is one whose kernel covers its whole input. */
struct conv {
    int C, H, W;              /* input layout */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo;               /* output */
    int wpo;                  /* weight words per output channel */
    const uint32_t *w;
    const uint32_t *pad;      /* binary input: the padded pixel, NULL to count valid taps only */
};

/* A threshold fused after a conv, then a max-pool (1x1, stride 1 when none). */
struct sign {
    const int32_t *thresh;
    const uint32_t *flip;
    int KH, KW, SH, SW;
    const uint32_t *min;      /* pooled channels taking the minimum (AND), or NULL */
    int Ho, Wo;               /* output */
};"""


def _closure(names: set[str]) -> list[str]:
    """``names`` and every helper they call, in ``_HELPERS`` order (callees first)."""
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(_HELPERS[name][1])
    return [name for name in _HELPERS if name in needed]


# --- parameters as C arrays -----------------------------------------------------------


def pack_words(bits: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """bool (..., n) -> uint32 (or uint64) (..., ceil(n/word_bits)): bit i in bit
    i % word_bits of word i // word_bits, unused bits 0."""
    bits = np.asarray(bits, dtype=bool)
    n = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (-(-n // word_bits) * word_bits,), dtype=bool)
    padded[..., :n] = bits
    little_endian = np.packbits(padded, axis=-1, bitorder="little").view(f"<u{word_bits // 8}")
    return little_endian.astype(f"u{word_bits // 8}")


def _array(ctype: str, name: str, values: Sequence[str]) -> str:
    rows = [", ".join(values[i : i + 8]) for i in range(0, len(values), 8)]
    return f"static const {ctype} {name}[{len(values)}] = {{\n    " + ",\n    ".join(rows) + "\n};"


def _words(name: str, words: np.ndarray) -> str:
    return _array("uint32_t", name, [f"0x{int(w):08x}u" for w in words.ravel()])


def _i32(v: int) -> str:
    # the literal 2147483648 does not fit an int, so INT32_MIN is spelled as an expression
    return "(-2147483647 - 1)" if v == INT32_MIN else str(v)


def _f32(v: np.float32) -> str:
    if not np.isfinite(v):
        raise BnnkitError(f"affine parameter {v} is not finite; the C runtime takes finite floats only")
    mantissa, exponent = float(v).hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"  # exact: C99 hexadecimal float


# --- the generator --------------------------------------------------------------------


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

    def buf(self, tensor: str, ctype: str) -> str:
        name = self.plan.buffer_of[tensor]
        if name == self.g.input:
            return "input"
        at = f"{self.p}_arena + {self.plan.offsets[name] // 4}"
        return at if ctype == "uint32_t" else f"({ctype} *)({at})"

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
        if family == "input":
            words = pack_words(weight.reshape(o, -1))
        else:
            words = pack_words(weight.transpose(0, 2, 3, 1)).reshape(o, -1)
        self.data.append(_words(f"op{i}_weight", words))
        pad = "NULL"
        if pad_of(op) is not PadMode.ZERO:
            self.data.append(_words(f"op{i}_pad", pack_words(np.full(c, pad_of(op) is PadMode.PLUS_ONE))))
            pad = f"op{i}_pad"
        self.data.append(
            f"static const struct conv op{i}_conv = {{\n"
            f"    .C = {c}, .H = {h}, .W = {w}, .O = {o}, .KH = {kh}, .KW = {kw},\n"
            f"    .SH = {sh}, .SW = {sw}, .PH = {ph}, .PW = {pw}, .Ho = {ho}, .Wo = {wo},\n"
            f"    .wpo = {words.shape[1]}, .w = op{i}_weight, .pad = {pad}\n}};"
        )
        return f"op{i}_conv", family

    def thresh(self, i: int, op: Op) -> tuple[str, str]:
        self.data.append(_array("int32_t", f"op{i}_thresh", [_i32(int(v)) for v in op.params["thresh"]]))
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
        return [self.buf(n, {"u8": "uint8_t", "i32": "int32_t"}.get(self.g.types[n][0], "uint32_t")) for n in op.inputs]

    def output(self, step: Step) -> str:
        """The buffer ``step`` writes."""
        out_type = self.g.types[self.g.ops[step.ops[-1]].output][0]
        return self.buf(self.g.ops[step.ops[-1]].output, "int32_t" if out_type == "i32" else "uint32_t")

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
        t, flip = self.thresh(step.ops[1], ops[1])
        pool = last if len(ops) == 3 else None  # the plan fuses a maxpool as the third op
        (pkh, pkw), (psh, psw) = (pair(pool.attrs["kernel"]), pair(pool.attrs["stride"])) if pool else ((1, 1), (1, 1))
        mins = self.min_channels(step.ops[-1], pool) if pool else "NULL"
        _, ho, wo = self.plan.layout[last.output]
        self.data.append(
            f"static const struct sign op{i}_sign = {{\n"
            f"    .thresh = {t}, .flip = {flip}, .KH = {pkh}, .KW = {pkw}, .SH = {psh}, .SW = {psw},\n"
            f"    .min = {mins}, .Ho = {ho}, .Wo = {wo}\n}};"
        )
        self.used.add(f"{family}_conv_sign")
        self.call(step, f"{family}_conv_sign(&{conv}, &op{i}_sign, {x[0]}, {out})")

    @EMIT.register("threshold")
    def threshold(self, step: Step) -> None:
        i, op = step.ops[0], self.g.ops[step.ops[0]]
        c, h, w = self.plan.layout[op.inputs[0]]
        t, flip = self.thresh(i, op)
        self.used.add("threshold")
        self.call(step, f"threshold({self.inputs(op)[0]}, {c}, {h * w}, {t}, {flip}, {self.output(step)})")

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
        if self.g.types[op.inputs[0]][0] == "bits":
            self.pool(step, "maxpool_bits", f"{self.min_channels(i, op)}, ")
        else:
            self.pool(step, "maxpool_i32")

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

    @EMIT.register("argmax")
    def argmax(self, step: Step) -> None:
        op = self.g.ops[step.ops[0]]
        in_type, (c, h, w) = self.g.types[op.inputs[0]][0], self.plan.layout[op.inputs[0]]
        self.used.add(f"argmax_{in_type}")
        self.call(step, f"return argmax_{in_type}({self.inputs(op)[0]}, {c * h * w}, scores)")

    @EMIT.register("flatten")
    def flatten(self, step: Step) -> None:
        """Never called: the plan makes a flatten a view of its input, which no step runs."""
        raise RuntimeError("internal error: the memory plan runs no flatten step")


def generate_c(graph: Graph, prefix: str = "bnn") -> dict[str, str]:
    """The sources ``{prefix}.h`` and ``{prefix}.c`` of ``graph``."""
    if not (isinstance(prefix, str) and PREFIX.fullmatch(prefix)):
        raise BnnkitError(f"prefix {prefix!r} is not a C identifier (a letter, then at most 63 letters, digits and _)")
    e = _Emitter(graph, prefix)
    for step in e.plan.steps:
        e.step(step)
    plan, up = e.plan, prefix.upper()
    c, h, w = graph.input_shape
    header = f"""\
/* Generated by bnnkit: a binarized network, {len(graph.ops)} graph ops. Portable C99, no
   malloc, no libm. Build with -ffp-contract=off (floats are rounded as the reference does).

   int {prefix}_infer(const uint8_t *input, float *scores)
     input   {up}_INPUT_SIZE bytes, the image as uint8 in CHW order ({c} x {h} x {w});
     scores  {up}_NUM_CLASSES floats, written unless NULL;
     returns the index of the first maximal score (the label).
   Not reentrant: activations live in one static arena of {up}_ARENA_BYTES bytes; the
   input buffer stays the caller's ({plan.input_bytes} bytes on top of the arena).

   Conventions: a binary value is one bit, 1 <=> +1 and 0 <=> -1, sign(0) = +1. Binary
   activations are stored HWC with each pixel's channels packed into ceil(C/32) 32-bit
   words, channel c in bit c % 32 of word c / 32, unused bits 0; integer and float
   activations are CHW. Binary weights are packed the same way (a dense layer's weights
   permuted to its input's HWC packing). Define one of BNNKIT_POPCOUNT_SWAR, _SHIFTS,
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

#endif
"""
    structs = [_STRUCTS] if e.used & {"input_conv", "binary_conv", "input_conv_sign", "binary_conv_sign"} else []
    source = "\n\n".join(
        [f'/* Generated by bnnkit; see {prefix}.h. */\n#include <stddef.h>\n#include "{prefix}.h"']
        + structs
        + [_HELPERS[name][0] for name in _closure(e.used)]
        + e.data
        + [
            f"static uint32_t {prefix}_arena[{max(plan.arena_bytes // 4, 1)}];",
            f"int {prefix}_infer(const uint8_t *input, float *scores)\n{{\n" + "\n".join(e.calls) + "\n}",
        ]
    )
    return {f"{prefix}.h": header, f"{prefix}.c": source + "\n"}


def write_sources(graph: Graph, out_dir: str | Path, prefix: str = "bnn", *, scratch: bool = False) -> list[Path]:
    """Write ``{prefix}.h`` and ``{prefix}.c`` into ``out_dir``; returns their paths. Each
    file is written atomically, unless ``scratch``: a build directory that is thrown away
    needs no fsync per file (the random-graph tests build over a thousand)."""
    sources = generate_c(graph, prefix)  # a bad prefix or graph creates no directory
    paths = []
    with created_dir(out_dir, "output directory") as out:  # a full disk leaves no empty directory
        for name, text in sources.items():
            if scratch:
                (out / name).write_text(text)
            else:
                atomic_write(out / name, text)
            paths.append(out / name)
    return paths


# --- the host build -------------------------------------------------------------------

_MAIN = """\
/* Host harness: argv[1] picks the model; images (raw uint8) on stdin, for each its scores
   (float32) then its label (int32) on stdout, native byte order. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
{includes}

struct model {{
    int (*infer)(const uint8_t *, float *);
    size_t input_size, classes;
}};

static const struct model models[] = {{
{models}
}};

int main(int argc, char **argv)
{{
    const struct model *m;
    uint8_t *input;
    float *scores;
    size_t got;
    int index = argc == 2 ? atoi(argv[1]) : -1;
    if (index < 0 || index >= (int)(sizeof models / sizeof models[0])) {{
        fprintf(stderr, "usage: %s MODEL_INDEX < images > scores\\n", argv[0]);
        return 2;
    }}
    m = &models[index];
    input = malloc(m->input_size);
    scores = malloc(m->classes * sizeof *scores);
    if (input == NULL || scores == NULL)
        return 3;
    while ((got = fread(input, 1, m->input_size, stdin)) == m->input_size) {{
        int32_t label = m->infer(input, scores);
        fwrite(scores, sizeof *scores, m->classes, stdout);
        fwrite(&label, sizeof label, 1, stdout);
    }}
    if (got != 0) {{
        fprintf(stderr, "truncated image on stdin\\n");
        return 4;
    }}
    free(input);
    free(scores);
    return fflush(stdout) != 0;
}}
"""


@dataclass(frozen=True)
class HostModel:
    """A graph compiled for this machine; ``predict`` runs the executable."""

    graph: Graph
    executable: Path
    index: int  # which of the executable's models
    sanitize: bool = False

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 (N, classes) and labels int64 (N,) of uint8 images (N, C, H, W)."""
        x = np.ascontiguousarray(check_input(self.graph, x))
        env = dict(os.environ)
        if self.sanitize:  # leak checking needs ptrace, which containers often forbid
            env["ASAN_OPTIONS"] = "detect_leaks=0:" + env.get("ASAN_OPTIONS", "")
        proc = subprocess.run([str(self.executable), str(self.index)], input=x.tobytes(), capture_output=True, env=env)
        if proc.returncode != 0:
            raise BnnkitError(
                f"{self.executable} exited with status {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
            )
        k = self.graph.num_classes
        record = np.dtype([("scores", "=f4", (k,)), ("label", "=i4")])
        if len(proc.stdout) != len(x) * record.itemsize:
            raise BnnkitError(f"{self.executable} wrote {len(proc.stdout)} bytes for {len(x)} images")
        out = np.frombuffer(proc.stdout, dtype=record)
        return out["scores"].astype(np.float32).reshape(len(x), k), out["label"].astype(np.int64)


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BnnkitError(f"C compilation failed: {' '.join(cmd)}\n{proc.stderr}")


def build_hosts(
    graphs: Sequence[Graph], workdir: str | Path, *, sanitize: bool = False, cc: str = "gcc", cflags: Sequence[str] = ()
) -> list[HostModel]:
    """Compile ``graphs`` into one host executable under ``workdir`` (one compile for many
    graphs, each with its own prefix ``g0``, ``g1``, ...). ``cflags`` are added to the
    strict ``CFLAGS``; ``sanitize`` adds AddressSanitizer and UBSan."""
    if shutil.which(cc) is None:
        raise BnnkitError(f"no C compiler {cc!r} found; install gcc or clang, or pass cc=")
    if not graphs:
        raise BnnkitError("build_hosts needs at least one graph")
    work = make_dir(workdir, "build directory")
    flags = [*CFLAGS, *(SANITIZE if sanitize else ()), *cflags]
    prefixes = [f"g{i}" for i in range(len(graphs))]
    for graph, prefix in zip(graphs, prefixes):
        write_sources(graph, work, prefix, scratch=True)
    (work / "main.c").write_text(
        _MAIN.format(
            includes="\n".join(f'#include "{p}.h"' for p in prefixes),
            models="\n".join(f"    {{{p}_infer, {p.upper()}_INPUT_SIZE, {p.upper()}_NUM_CLASSES}}," for p in prefixes),
        )
    )
    units = [*prefixes, "main"]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_compile, ([cc, *flags, "-c", str(work / f"{u}.c"), "-o", str(work / f"{u}.o")] for u in units)))
    exe = work / "bnnkit_host"
    _compile([cc, *flags, *(str(work / f"{u}.o") for u in units), "-o", str(exe)])
    return [HostModel(graph, exe, i, sanitize) for i, graph in enumerate(graphs)]


def build_host(graph: Graph, workdir: str | Path, *, sanitize: bool = False, cc: str = "gcc", cflags: Sequence[str] = ()) -> HostModel:
    """Compile ``graph`` with its C runtime and a stdin/stdout harness under ``workdir``
    (see ``build_hosts`` for the options)."""
    return build_hosts([graph], workdir, sanitize=sanitize, cc=cc, cflags=cflags)[0]
