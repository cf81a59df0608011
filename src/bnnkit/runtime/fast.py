"""A graph on the host through compiled kernels, a whole batch per call.

``binary_conv2d`` / ``binary_dense`` (and ``input_conv2d`` / ``input_dense``) run in the
C kernels of ``host_kernels/bconv.c``, each fused with the ``threshold`` that follows it
when that is its only reader, so the layer writes packed bits and never its integer
sums. Binary activations between layers stay packed: channels last, 64 to a ``uint64``
word (``Packed``). The remaining ops are cheap and run in the NumPy interpreter's own kernels
(max-pool on packed bits excepted), so scores are bit-identical to ``numpy_ref``. Which op
runs how is the fast backend's table of the op table, ``KERNELS``.

The library is compiled once per source hash with the system C compiler and cached in
``$XDG_CACHE_HOME/bnnkit`` (or ``~/.cache/bnnkit``). The XOR-popcount micro-kernel is
chosen at run time: ``avx512`` (VPOPCNTQ), ``avx2`` (``vpshufb`` nibble table) or
``portable`` (plain C), the best one the CPU has unless ``isa=`` or ``$BNNKIT_ISA``
names another.

The compiler is ``toolchain.host_cc()`` (``$CC``, else gcc or cc). With
``$BNNKIT_SANITIZE=1`` the library is built with AddressSanitizer and UBSan
(``toolchain.SANITIZE``); Python must then start with ASan's runtime preloaded
(``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``, as tests/test_fast.py does).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, OPS, Family, Graph, Op, OpTable, PadMode, out_size, pad_of, pair
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.c import pack_words
from bnnkit.runtime.toolchain import FAST_CFLAGS, OPENMP, SANITIZE, host_cc, run_tool

ISAS = ("portable", "avx2", "avx512")  # the C enum bnn_isa, in order
SOURCES = ("bconv.c", "bconv.h", "maxpool.c", "batchnorm.c", "sign.c")  # the .c files are compiled
INT32_MAX = 2**31 - 1

KERNELS = OpTable("fast")
"""Per op kind: ``Layer`` (a compiled kernel, built once per graph) or a function
``(op, *inputs)`` run on each batch."""


class _Layer(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int32)
            for name in ("C", "H", "W", "O", "Ho", "Wo", "kh", "kw", "sh", "sw", "ph", "pw", "pad_factor", "words")
        ),
        ("weight", ctypes.c_void_p),
        ("tap_sum", ctypes.c_void_p),
        ("thresh", ctypes.c_void_p),
        ("flip", ctypes.c_void_p),
    ]


# --- the library ----------------------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(base) / "bnnkit"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # read-only home: fall back to a per-user temp dir
        path = Path(tempfile.gettempdir()) / f"bnnkit-{os.getuid()}"
        path.mkdir(exist_ok=True)
        return path


def _compile(cc: list[str], flags: tuple[str, ...], sources: list[Path], target: Path) -> None:
    """Build with OpenMP where the compiler has it, else single-threaded; the error of a
    build that fails either way is the one without OpenMP."""
    cmd = [*cc, *flags, *map(str, sources), "-o", str(target)]
    try:
        run_tool([*cmd, *OPENMP], "compiling the host kernels with OpenMP")
    except BnnkitError:
        run_tool(cmd, "compiling the host kernels")


@functools.cache
def builds() -> bool:
    """Whether the kernels compile here (a C compiler is installed): training layers that
    can run on them take PyTorch's ops where they do not."""
    try:
        library()
    except (BnnkitError, OSError):
        return False
    return True


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels, built on first use and cached by source hash."""
    cc = host_cc()
    folder = resources.files("bnnkit.runtime") / "host_kernels"
    texts = {name: (folder / name).read_bytes() for name in SOURCES}
    flags = (*FAST_CFLAGS, *(SANITIZE if os.environ.get("BNNKIT_SANITIZE") == "1" else ()))
    digest = hashlib.sha256(b"".join(texts[n] for n in SOURCES) + " ".join((*cc, *flags)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"bconv-{digest}.so"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=path.parent) as work:  # same file system: the rename is atomic
            for name, text in texts.items():
                Path(work, name).write_bytes(text)
            built = Path(work, path.name)
            _compile(cc, flags, [Path(work, n) for n in SOURCES if n.endswith(".c")], built)
            os.replace(built, path)  # concurrent builders write identical files
    lib = ctypes.CDLL(str(path))
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.bnn_isa_supported.argtypes, lib.bnn_isa_supported.restype = [ctypes.c_int], ctypes.c_int
    lib.bnn_output_block.argtypes, lib.bnn_output_block.restype = [], ctypes.c_int
    lib.bnn_binary_conv.argtypes = [ctypes.POINTER(_Layer), ptr, i64, ptr, ctypes.c_int, ctypes.c_int]
    lib.bnn_input_conv.argtypes = [ctypes.POINTER(_Layer), ptr, i64, ptr, ctypes.c_int, ctypes.c_int]
    lib.bnn_popcount_peak.argtypes = [ctypes.c_int, ptr, ptr, i32, i64, ctypes.POINTER(i64)]
    lib.bnn_popcount_peak.restype = i64
    lib.bnn_maxpool2_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.bnn_maxpool2_backward.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.bnn_bn_supported.argtypes, lib.bnn_bn_supported.restype = [], ctypes.c_int
    lib.bnn_sign_bf16.argtypes = [ptr, ptr, i64, ctypes.c_int]
    lib.bnn_sum_bf16.argtypes = [ptr, ptr, ptr, i64, ctypes.c_int]
    lib.bnn_clipped_grad_bf16.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_float, ctypes.c_float, i64, ctypes.c_int]
    f64, cint = ctypes.c_double, ctypes.c_int
    lib.bnn_bn_forward.argtypes = [
        ptr,
        cint,
        i64,
        i64,
        cint,
        cint,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        f64,
        f64,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
    ]
    f32 = ctypes.c_float
    lib.bnn_bn_backward.argtypes = [ptr, cint, ptr, ptr, ptr, ptr, i64, i64, cint, cint, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.bnn_bn_backward.argtypes += [cint, ptr, f32, f32, ptr, ptr, ptr, ptr, ptr]
    return lib


@functools.cache
def supported_isas() -> tuple[str, ...]:
    return tuple(name for i, name in enumerate(ISAS) if library().bnn_isa_supported(i))


def resolve_isa(isa: str | None = None) -> str:
    """``isa``, else ``$BNNKIT_ISA``, else the best this CPU runs."""
    name = isa or os.environ.get("BNNKIT_ISA") or supported_isas()[-1]
    if name not in ISAS:
        raise BnnkitError(f"unknown instruction set {name!r}; use one of {', '.join(ISAS)}")
    if name not in supported_isas():
        raise BnnkitError(f"this CPU cannot run the {name} kernels; it runs {', '.join(supported_isas())}")
    return name


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check(code: int, what: str) -> None:
    if code == -2:
        raise MemoryError(f"{what}: out of memory for the kernel's scratch buffers")
    if code != 0:
        raise BnnkitError(f"{what}: kernel failed with status {code}")


# --- packed bits ----------------------------------------------------------------------


@dataclass
class Packed:
    """Binary activations packed channels last, 64 to a word: ``words`` is uint64
    (N, H, W, ceil(C/64)) for a (C, H, W) map and (N, ceil(F/64)) for an (F,) vector, bit
    c % 64 of word c // 64 is channel c, bit 1 ⇔ +1, unused bits 0."""

    words: np.ndarray
    shape: tuple[int, ...]  # per sample, as in the graph

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Packed:
        """Pack bool (N, C, H, W) or (N, F)."""
        bits = np.asarray(bits)
        if bits.dtype != bool or bits.ndim not in (2, 4):
            raise BnnkitError(f"packing needs bool (N, C, H, W) or (N, F), got {bits.dtype} {bits.shape}")
        return cls(pack_words(np.moveaxis(bits, 1, -1), 64), tuple(bits.shape[1:]))

    def bits(self) -> np.ndarray:
        """bool (N, *shape)."""
        c = self.shape[0]
        raw = np.unpackbits(self.words.astype("<u8", copy=False).view(np.uint8), axis=-1, count=c, bitorder="little")
        return np.moveaxis(raw.astype(bool), -1, 1)


def _packed_input(x: np.ndarray | Packed, shape: tuple[int, ...], what: str) -> np.ndarray:
    """x's words as (N, H, W, words) for a layer that takes ``shape``."""
    if not isinstance(x, Packed):
        raise BnnkitError(f"{what} takes Packed bits (Packed.from_bits), got {type(x).__name__}")
    c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
    want = (h, w, -(-c // 64)) if len(shape) == 3 else (-(-c // 64),)
    if x.shape != shape or x.words.dtype != np.uint64 or x.words.shape[1:] != want:
        raise BnnkitError(
            f"{what} takes packed {shape} ({want} uint64 words per sample), got {x.shape} as {x.words.dtype} {x.words.shape}"
        )
    return np.ascontiguousarray(x.words).reshape(len(x.words), h, w, -1)


# --- one layer ------------------------------------------------------------------------


def _aligned(shape: tuple[int, ...], dtype: type[np.generic], align: int = 64) -> np.ndarray:
    """Zeros whose data starts on a cache line, for the kernels' vector loads."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + align, np.uint8)
    start = -raw.ctypes.data % align
    out: np.ndarray = raw[start : start + size].view(dtype).reshape(shape)
    return out


def _sign_masks(taps: np.ndarray) -> np.ndarray:
    """bool (O, fan_in) → int32 (O padded / block, fan_in, block): 0 for +1, −1 for −1."""
    block = library().bnn_output_block()
    masks = np.zeros((-(-len(taps) // block) * block, taps.shape[1]), np.int32)
    masks[: len(taps)] = np.where(taps, 0, -1)
    by_block = masks.reshape(-1, block, taps.shape[1]).transpose(0, 2, 1)
    out = _aligned(by_block.shape, np.int32)
    out[...] = by_block
    return out


def weight_blocks(rows: np.ndarray) -> np.ndarray:
    """bool (O, n) weight rows → the kernels' layout (bconv.h): packed LSB first into
    words, outputs zero-padded to the output block, word k of 8 outputs side by side."""
    words = -(-rows.shape[1] // 64)
    block = library().bnn_output_block()
    packed = np.zeros((-(-len(rows) // block) * block, words), np.uint64)
    packed[: len(rows)] = pack_words(rows, 64)
    by_word = packed.reshape(-1, 8, words).transpose(0, 2, 1)
    out = _aligned(by_word.shape, np.uint64)
    out[...] = by_word
    return out


class Layer:
    """One kernel op, with the ``threshold`` that follows it fused in when given: ready
    weights and a call that runs it on a batch.

    ``binary_conv2d`` / ``binary_dense`` take ``Packed`` bits; ``input_conv2d`` /
    ``input_dense`` take the uint8 images (N, C, H, W) or (N, F). A dense layer is a 1×1
    convolution of a 1×1 map. The result is ``Packed`` with a threshold, else the int32
    sums in the reference interpreter's layout (N, O, Ho, Wo) or (N, O)."""

    def __init__(self, op: Op, in_shape: tuple[int, ...], threshold: Op | None = None):
        if KERNELS.entries.get(op.kind) is not Layer:
            raise BnnkitError(f"no host kernel for {op.kind}; kernels: {', '.join(_layer_kinds())}")
        self.op, self.in_shape = op, tuple(in_shape)
        self.pixels = OPS[op.kind].reads_pixels  # uint8 images, not packed bits
        w = op.params["weight"]
        dense = w.ndim == 2
        if dense:
            w = w[:, :, None, None]
        c, h, wd = (self.in_shape[0], 1, 1) if dense else self.in_shape
        o, _, kh, kw = w.shape
        (sh, sw), (ph, pw) = ((1, 1), (0, 0)) if dense else (pair(op.attrs["stride"]), pair(op.attrs["padding"]))
        ho, wo = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
        self.out_shape = (o,) if dense else (o, ho, wo)
        taps = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(o, -1))  # (kh, kw, C): the patch order
        words = -(-taps.shape[1] // 64)
        if self.pixels:
            if 255 * taps.shape[1] >= 2**31:
                raise BnnkitError(f"{op.kind} {op.name}: fan-in {taps.shape[1]} can overflow int32 sums")
            self._weight = _sign_masks(taps)
            self._tap_sum = None
        else:
            self._weight = weight_blocks(taps)
            self._tap_sum = (2 * w.sum(axis=1, dtype=np.int32) - c).reshape(o, kh * kw)
        self.threshold = threshold
        if threshold is not None:
            self._thresh, self._flip = _xor_form(threshold)
        # bconv.c reads a padded tap as -1 and adds pad_factor x its weight back: 0 keeps -1 (and
        # skips the check where no op pads), 1 makes it 0, 2 makes it +1
        pad = pad_of(op).value + 1 if "pad" in op.attrs else 0
        self._struct = _Layer(
            c,
            h,
            wd,
            o,
            ho,
            wo,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            pad,
            words,
            self._weight.ctypes.data,
            _address(self._tap_sum),
            _address(self._thresh if threshold else None),
            _address(self._flip if threshold else None),
        )

    def __call__(self, x: np.ndarray | Packed, isa: str | None = None, threads: int = 1) -> np.ndarray | Packed:
        what = f"{self.op.kind} {self.op.name}".strip()
        n = len(x.words) if isinstance(x, Packed) else len(x)
        if self.threshold is not None:
            out = np.empty((n, *self.out_shape[1:], -(-self.out_shape[0] // 64)), np.uint64)
        else:
            out = np.empty((n, *self.out_shape[1:], self.out_shape[0]), np.int32)
        lib = library()
        if self.pixels:
            x = np.asarray(x)
            if x.dtype != np.uint8 or x.shape[1:] != self.in_shape:
                raise BnnkitError(
                    f"{what} takes uint8 (N, {', '.join(map(str, self.in_shape))}), got {x.dtype} {x.shape}"
                )
            run, data = lib.bnn_input_conv, np.ascontiguousarray(x)
        else:
            run, data = lib.bnn_binary_conv, _packed_input(x, self.in_shape, what)
        _check(
            run(
                ctypes.byref(self._struct), data.ctypes.data, n, out.ctypes.data, ISAS.index(resolve_isa(isa)), threads
            ),
            what,
        )
        if self.threshold is not None:
            return Packed(out.reshape(n, -1) if len(self.out_shape) == 1 else out, self.out_shape)
        return np.moveaxis(out, -1, 1)


def binary_conv_sums(
    signs: np.ndarray, weight: np.ndarray, stride: Sequence[int], padding: Sequence[int], threads: int = 1
) -> np.ndarray:
    """A zero-padded convolution of ±1 maps, ``signs`` (N, H, W, C) as bfloat16 bits (the sign bit
    clear for +1), with the ±1 kernel ``weight`` (O, C, kh, kw; True for +1): its integer sums in
    float32, (N, Ho, Wo, O), by XNOR and popcount. Exact, so the same values as any float product
    whose sums it holds (``bnnkit.nn.bf16``'s training forward)."""
    if signs.dtype != BF16_BITS or signs.ndim != 4:
        raise BnnkitError(f"binary_conv_sums: (N, H, W, C) bfloat16 bits, got {signs.dtype} {signs.shape}")
    _, h, w, c = signs.shape
    if weight.dtype != bool or weight.ndim != 4 or weight.shape[1] != c:
        raise BnnkitError(f"binary_conv_sums: a bool (O, {c}, kh, kw) kernel, got {weight.dtype} {weight.shape}")
    attrs = {"stride": list(stride), "padding": list(padding), "pad": PadMode.ZERO.mode}
    layer = Layer(Op("binary_conv2d", ["x"], "y", attrs, {"weight": weight}), (c, h, w))
    sums = layer(Packed(pack_words((signs >> 15) == 0, 64), (c, h, w)), threads=threads)
    assert isinstance(sums, np.ndarray)  # no threshold: the int32 sums
    return np.moveaxis(sums, 1, -1).astype(np.float32)  # back to the (N, Ho, Wo, O) the kernel wrote: no gather


def _xor_form(threshold: Op) -> tuple[np.ndarray, np.ndarray]:
    """The threshold as bit = (sum >= t) XOR f, which the kernels evaluate without a
    branch: ``sum <= t`` is ``not sum >= t + 1``; for t = INT32_MAX it always holds, and
    so does ``sum >= INT32_MIN``."""
    t = threshold.params["thresh"].astype(np.int64)
    flip = threshold.params["flip"]
    always = flip & (t == INT32_MAX)
    t = np.where(always, INT32_MIN, t + flip).astype(np.int32)
    return t, (flip & ~always).astype(np.uint8)


def _address(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def maxpool_packed(op: Op, x: Packed) -> Packed:
    """``maxpool`` on packed bits: OR of the window's words (AND for min_channels)."""
    (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
    c, h, w = x.shape
    ho, wo = out_size(h, kh, sh), out_size(w, kw, sw)
    win = sliding_window_view(x.words, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]
    win = win.reshape(win.shape[:4] + (-1,))
    out = np.bitwise_or.reduce(win, axis=-1)
    if "min_channels" in op.params:
        mins = Packed.from_bits(op.params["min_channels"][None]).words[0]
        out = (out & ~mins) | (np.bitwise_and.reduce(win, axis=-1) & mins)
    return Packed(out, (c, ho, wo))


# --- the 2x2 max-pool of training (bnnkit.nn.MaxPool2x2) --------------------------------


def maxpool2_fits(shape: tuple[int, ...]) -> bool:
    """Whether ``maxpool2`` takes a map of this (N, H, W, C) shape: H and W even, C % 4 == 0."""
    return len(shape) == 4 and shape[1] % 2 == 0 and shape[2] % 2 == 0 and shape[3] % 4 == 0


BF16_BITS = np.dtype(np.uint16)  # a bfloat16 map crosses into the kernels as its bits


def _map_dtype(x: np.ndarray) -> type[np.generic]:
    """The dtype a training map is checked against: x's own where it is one the kernels take
    (float32, or bfloat16 as the uint16 of its bits)."""
    return np.uint16 if x.dtype == BF16_BITS else np.float32


def _check_map(a: np.ndarray, dtype: type[np.generic], what: str) -> None:
    if a.dtype != dtype or not a.flags.c_contiguous or a.ndim != 4 or a.shape[3] % 4:
        raise BnnkitError(f"{what}: expected a C-contiguous {np.dtype(dtype)} N x H x W x C array with C % 4 == 0")


def maxpool2(x: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The 2x2, stride 2 max-pool of float32 or bfloat16 (``_map_dtype``) maps (N, H, W, C), H and
    W even: the pooled maps, in x's type, and each output's winning tap (uint8, 0..3 in row order;
    ties to the first, NaN wins), ATen's values."""
    _check_map(x, _map_dtype(x), "maxpool2")
    if not maxpool2_fits(x.shape):
        raise BnnkitError(f"maxpool2: height and width must be even, not {x.shape[1]} x {x.shape[2]}")
    n, h, w, c = x.shape
    out = np.empty((n, h // 2, w // 2, c), x.dtype)
    tap = np.empty(out.shape, np.uint8)
    bf16 = int(x.dtype == BF16_BITS)
    library().bnn_maxpool2_forward(x.ctypes.data, out.ctypes.data, tap.ctypes.data, n, h, w, c, bf16, threads)
    return out, tap


def maxpool2_backward(grad: np.ndarray, tap: np.ndarray, threads: int = 1) -> np.ndarray:
    """The input gradient of ``maxpool2``: ``grad`` (N, H/2, W/2, C) at each winning tap, 0 elsewhere,
    in grad's type (float32 or bfloat16 bits)."""
    _check_map(grad, _map_dtype(grad), "maxpool2_backward")
    _check_map(tap, np.uint8, "maxpool2_backward")
    if tap.shape != grad.shape:
        raise BnnkitError(f"maxpool2_backward: taps {tap.shape} for a gradient {grad.shape}")
    n, ho, wo, c = grad.shape
    out = np.empty((n, 2 * ho, 2 * wo, c), grad.dtype)
    bf16 = int(grad.dtype == BF16_BITS)
    args = (grad.ctypes.data, tap.ctypes.data, out.ctypes.data, n, 2 * ho, 2 * wo, c, bf16, threads)
    library().bnn_maxpool2_backward(*args)
    return out


def _check_array(a: np.ndarray, shape: tuple[int, ...], what: str, dtype: type[np.generic] = np.float32) -> None:
    if a.dtype != dtype or not a.flags.c_contiguous or a.shape != shape:
        raise BnnkitError(
            f"{what}: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}, got {a.dtype} {a.shape}"
        )


def sign_bf16(x: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """sign(x) of a flat float32 array as bfloat16 bits (uint16, into ``out`` if given): +1 for
    x >= 0, -0.0 and NaN, -1 below 0."""
    _check_array(x, x.shape[:1], "sign_bf16")
    out = np.empty(len(x), np.uint16) if out is None else out
    _check_array(out, x.shape, "sign_bf16", np.uint16)
    library().bnn_sign_bf16(x.ctypes.data, out.ctypes.data, len(x), threads)
    return out


def sum_bf16(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """The sum in float32 (into ``out`` if given) of two flat bfloat16 arrays (uint16 bits), each
    widened exactly first."""
    _check_array(a, a.shape[:1], "sum_bf16", np.uint16)
    _check_array(b, a.shape, "sum_bf16", np.uint16)
    out = np.empty(len(a), np.float32) if out is None else out
    _check_array(out, a.shape, "sum_bf16")
    library().bnn_sum_bf16(a.ctypes.data, b.ctypes.data, out.ctypes.data, len(a), threads)
    return out


def clipped_grad_bf16(
    grad: np.ndarray,
    x: np.ndarray,
    low: float,
    high: float,
    out: np.ndarray | None = None,
    threads: int = 1,
    plus: np.ndarray | None = None,
) -> np.ndarray:
    """The bfloat16 gradient ``grad`` (uint16 bits) as float32 (into ``out`` if given) where
    ``low < x < high``, +0.0 elsewhere (NaN included): ``hardtanh_backward(grad.float(), x, low, high)``
    in one pass; added to the float32 ``plus`` where given (``plus + that``, as autograd adds a
    map's gradients from two readers)."""
    _check_array(x, x.shape[:1], "clipped_grad_bf16")
    _check_array(grad, x.shape, "clipped_grad_bf16", np.uint16)
    if plus is not None:
        _check_array(plus, x.shape, "clipped_grad_bf16")
    out = np.empty(len(x), np.float32) if out is None else out
    _check_array(out, x.shape, "clipped_grad_bf16")
    library().bnn_clipped_grad_bf16(
        grad.ctypes.data, x.ctypes.data, _address(plus), out.ctypes.data, low, high, len(x), threads
    )
    return out


@functools.cache
def _batchnorm_supported() -> bool:
    return bool(library().bnn_bn_supported())


def batchnorm_fits(rows: int, channels: int, chunks: int) -> bool:
    """Whether the BatchNorm kernels take a (rows, channels) map split into ``chunks``: channels a
    multiple of 8, more rows than chunks (ATen sums fewer otherwise), a CPU with AVX2 and FMA."""
    return channels % 8 == 0 and rows > max(chunks, 1) and _batchnorm_supported()


def batchnorm_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running: tuple[np.ndarray, np.ndarray] | None,
    momentum: float,
    eps: float,
    chunks: int,
    signs: bool = False,
    residual: np.ndarray | None = None,
    signs_into: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BatchNorm's training forward of ``x`` (rows, channels), ATen's bits for ``chunks`` of its
    threads (``batchnorm_fits``): the output, the batch mean and 1 / sqrt(var + eps) per channel.
    ``running`` (mean, var) move towards the batch's statistics in place. ``x`` is float32, or
    bfloat16 as the uint16 of its bits (``_map_dtype``); the output is float32 either way, plus the
    float32 ``residual`` (rows, channels) where given, or with ``signs`` its sign as bfloat16 bits
    (``sign_bf16`` of it) instead. ``signs_into`` (rows, channels, uint16): that sign written there
    too, beside the float32 output."""
    rows, c = x.shape
    _check_array(x, (rows, c), "batchnorm_forward", _map_dtype(x))
    if residual is not None:
        _check_array(residual, (rows, c), "batchnorm_forward")
    if signs_into is not None:
        _check_array(signs_into, (rows, c), "batchnorm_forward", np.uint16)
    for a in (weight, bias, *(running or ())):
        _check_array(a, (c,), "batchnorm_forward")
    if not batchnorm_fits(rows, c, chunks):
        raise BnnkitError(f"batchnorm_forward: cannot take {rows} x {c} in {chunks} chunks")
    y = np.empty((rows, c), BF16_BITS if signs else np.float32)
    sign_bits = y if signs else signs_into
    mean, invstd, alpha, beta = (np.empty(c, np.float32) for _ in range(4))
    partial = np.empty((chunks, c), np.float32)
    rm, rv = running or (None, None)
    library().bnn_bn_forward(
        *(x.ctypes.data, int(x.dtype == BF16_BITS), rows, c, chunks, chunks, partial.ctypes.data, weight.ctypes.data),
        bias.ctypes.data,
        *(_address(rm), _address(rv), momentum, eps, mean.ctypes.data, invstd.ctypes.data, alpha.ctypes.data),
        *(beta.ctypes.data, None if signs else y.ctypes.data, _address(sign_bits), _address(residual)),
    )
    return y, mean, invstd


class SavedClip(NamedTuple):
    """How ``batchnorm_backward`` makes the output gradient of a BatchNorm whose output has two
    readers, the clipped sign's and another (a residual block's input): ``plus`` (float32, or None)
    + the sign's bfloat16 gradient where low < ``output`` < high, as ``clipped_grad_bf16(..., plus)``
    makes it, written to ``into`` (float32): the other reader's layers read it too."""

    output: np.ndarray
    low: float
    high: float
    plus: np.ndarray | None
    into: np.ndarray


def batchnorm_backward(
    x: np.ndarray,
    grad: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    weight: np.ndarray,
    chunks: int,
    input_grad: bool = True,
    sign_of: tuple[np.ndarray, float, float] | None = None,
    clipped_by: SavedClip | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The gradients of ``batchnorm_forward`` for the float32 output gradient ``grad``: of x (None
    without ``input_grad``; in x's type, a bfloat16 one rounded as PyTorch casts), of the weight
    and of the bias, ATen's bits. ``sign_of`` (bias, low, high): ``grad`` is instead the bfloat16
    gradient (uint16 bits) of the output's sign (``batchnorm_forward(..., signs=True)``), which
    passes it where low < output < high (``clipped_grad_bf16`` of it). ``clipped_by``: the same,
    clipped by the saved output, plus the other reader's gradient, that whole output gradient
    written as it is made (``SavedClip``)."""
    rows, c = x.shape
    _check_array(x, (rows, c), "batchnorm_backward", _map_dtype(x))
    signs = sign_of is not None or clipped_by is not None
    _check_array(grad, (rows, c), "batchnorm_backward", np.uint16 if signs else np.float32)
    bias, low, high = sign_of or (None, 0.0, 0.0)
    for a in (mean, invstd, weight, *(() if bias is None else (bias,))):
        _check_array(a, (c,), "batchnorm_backward")
    if clipped_by is not None:
        low, high = clipped_by.low, clipped_by.high
        for a in (clipped_by.output, clipped_by.into, *(() if clipped_by.plus is None else (clipped_by.plus,))):
            _check_array(a, (rows, c), "batchnorm_backward")
    if not batchnorm_fits(rows, c, chunks):
        raise BnnkitError(f"batchnorm_backward: cannot take {rows} x {c} in {chunks} chunks")
    dx = np.empty_like(x) if input_grad else None
    grad_bias, dotp, scale, grad_mean, alpha, beta = (np.empty(c, np.float32) for _ in range(6))
    partial = np.empty((2, chunks, c), np.float32)
    saved = (None, None, None) if clipped_by is None else (clipped_by.output, clipped_by.plus, clipped_by.into)
    library().bnn_bn_backward(
        *(x.ctypes.data, int(x.dtype == BF16_BITS), grad.ctypes.data, mean.ctypes.data, invstd.ctypes.data),
        *(weight.ctypes.data, rows, c),
        *(chunks, chunks, partial.ctypes.data, grad_bias.ctypes.data, dotp.ctypes.data, scale.ctypes.data),
        *(grad_mean.ctypes.data, _address(dx), 2 if clipped_by else int(sign_of is not None), _address(bias)),
        *(low, high, alpha.ctypes.data, beta.ctypes.data, *map(_address, saved)),
    )
    return dx, dotp * invstd, grad_bias


# --- the fast backend's op table -------------------------------------------------------

KERNELS.register("input_conv2d", "input_dense", "binary_conv2d", "binary_dense")(Layer)


@KERNELS.register("threshold", "affine", "add", "avgpool", "flatten", "argmax")
@KERNELS.register("sign", "prelu", "meanpool", "conv2d_f32", "dense_f32")  # the real-valued path
def _reference(op: Op, *args: np.ndarray | Packed) -> np.ndarray:
    """The NumPy reference's own kernel, on unpacked bits: these ops are cheap next to a layer."""
    out: np.ndarray = numpy_ref.KERNELS[op.kind](op, *(a.bits() if isinstance(a, Packed) else a for a in args))
    return out


# int8 layers (the baseline a BNN is measured against) have no fast kernels: the reference runs them
KERNELS.register("quantize_input", "int8_conv2d", "int8_dense", "requantize")(_reference)
KERNELS.register("affine_q", "add_q", "prelu_q", "conv2d_q", "dense_q")(_reference)  # fixed point: integer NumPy


@KERNELS.register("maxpool")
def _maxpool(op: Op, x: np.ndarray | Packed) -> np.ndarray | Packed:
    return maxpool_packed(op, x) if isinstance(x, Packed) else _reference(op, x)


def _layer_kinds() -> tuple[str, ...]:
    return tuple(kind for kind in OPS if KERNELS.entries.get(kind) is Layer)


# --- a whole graph --------------------------------------------------------------------


@dataclass
class _Step:
    op: Op  # the op, or the kernel op a threshold was fused into
    output: str
    layer: Layer | None = None
    kernel: Callable[..., np.ndarray | Packed] | None = None  # (op, *inputs) when there is no layer


def _plan(graph: Graph) -> list[_Step]:
    readers = Counter(name for op in graph.ops for name in op.inputs)
    steps, ops, i = [], graph.ops, 0
    while i < len(ops):
        op = ops[i]
        kernel = KERNELS[op.kind]
        if kernel is Layer:
            nxt = ops[i + 1]  # a graph ends in argmax, so a kernel op is never last
            fuse = OPS[nxt.kind].family is Family.THRESHOLD and nxt.inputs == [op.output] and readers[op.output] == 1
            in_shape = graph.types[op.inputs[0]][1]
            steps.append(_Step(op, nxt.output if fuse else op.output, Layer(op, in_shape, nxt if fuse else None)))
            i += 2 if fuse else 1
        else:
            steps.append(_Step(op, op.output, kernel=kernel))
            i += 1
    return steps


class FastModel:
    """``graph`` on the host kernels: ``predict`` a set of images, batch by batch."""

    def __init__(self, graph: Graph, isa: str | None = None, threads: int | None = None):
        self.graph = graph
        self.isa = resolve_isa(isa)
        self.threads = threads or default_threads()
        self.steps = _plan(graph)

    def execute(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The scores and labels of a batch, as ``numpy_ref.execute`` returns them."""
        env: dict[str, np.ndarray | Packed] = {self.graph.input: numpy_ref.check_input(self.graph, x)}
        for step in self.steps:
            args = [env[name] for name in step.op.inputs]
            if step.layer is not None:
                env[step.output] = step.layer(
                    args[0] if step.layer.pixels else _packed(args[0]), self.isa, self.threads
                )
            else:
                assert step.kernel is not None  # _plan gives every step a layer or a kernel
                env[step.output] = step.kernel(step.op, *args)
        return {name: _unpacked(env[name]) for name in (self.graph.scores, self.graph.ops[-1].output)}

    def predict(self, x: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N, classes) and labels (N,), equal to ``numpy_ref.predict``'s; N may be 0."""
        x = numpy_ref.check_input(self.graph, x)
        if len(x) == 0:
            return numpy_ref.no_predictions(self.graph)
        scores, labels = [], []
        for i in range(0, len(x), batch_size):
            env = self.execute(x[i : i + batch_size])
            scores.append(env[self.graph.scores])
            labels.append(env[self.graph.ops[-1].output])
        return np.concatenate(scores), np.concatenate(labels)


def _packed(value: np.ndarray | Packed) -> Packed:
    return value if isinstance(value, Packed) else Packed.from_bits(value)


def _unpacked(value: np.ndarray | Packed) -> np.ndarray:
    # argmax reads i32 or f32 scores (the op table's types) and writes an index, so these are never
    # packed: the branch narrows the type, and would hand back the reference's bool layout if they were
    return value.bits() if isinstance(value, Packed) else value


def popcount_peak(isa: str | None = None, seconds: float = 0.2) -> float:
    """Bit products per second of the XOR-popcount micro-kernel on L1-resident rows, one
    thread: the roofline the layer kernels are measured against."""
    words = 128  # 8 patches and 16 outputs: 24 KB, in L1
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, (8, words), dtype=np.uint64)
    w = weight_blocks(rng.random((16, 64 * words)) < 0.5)
    sink, isa_index, reps = ctypes.c_int64(), ISAS.index(resolve_isa(isa)), 64
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        bits = library().bnn_popcount_peak(isa_index, x.ctypes.data, w.ctypes.data, words, reps, ctypes.byref(sink))
        best = max(best, bits / (time.perf_counter() - t0))
        reps = min(reps * 2, 4096)
    return best
