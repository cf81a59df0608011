"""The integer graph: the contract between training (``bnnkit.export``) and deployment
(``bnnkit.runtime``).

A ``Graph`` is a list of ``Op`` over named tensors. Every activation has one of four
types, per sample (no batch axis):

* ``u8``   the input image, pixel values 0..255, shape (C, H, W);
* ``bits`` binary activations, ``True`` ⇔ +1 and ``False`` ⇔ −1;
* ``i32``  integer accumulators (popcount sums, pooled sums);
* ``f32``  float scores (only after an ``affine``).

The ops and what they mean are in ``OPS`` below; ``bnnkit.runtime.numpy_ref`` executes
them and is the specification. A graph's file is safetensors: binary weights packed
eight to a byte (bit 1 ⇔ +1, least significant bit first along the flattened
``(in_channels × kh × kw)`` or ``in_features`` axis, one row per output channel; a
per-channel flag vector is one row), integer and float parameters as
they are, and a JSON header under the metadata key ``bnnkit`` holding the ops, shapes,
conventions, the format version and a SHA-256 of the header and the tensor bytes.

A graph file is untrusted input. ``Graph.load`` checks the whole header against one schema
(``_check_header``) before it builds anything from it, then the digest, then the graph's own
rules (``Graph.validate``), then the resource limits below (``check_resources``). The digest
only catches damage: whoever crafts a file recomputes it. What keeps a crafted file harmless
is the rest: every name that can reach generated C matches ``NAME``, every number is a
bounded int of the right type, and no size is allocated before it is bounded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write

FORMAT_VERSION = 2
# Version 1 files are still read: their SHA-256 covers the tensors only, and they pass the
# same schema and limits as version 2, whose SHA-256 covers the header too.
READ_VERSIONS = (1, 2)
CONVENTIONS = {
    "bit_order": "bit 1 = +1, bit 0 = -1; least significant bit first",
    "word_bits": 8,
    "sign_of_zero": "+1",
    "layout": "CHW, flatten in C order",
}
PAD_MODES = ("zero", "minus_one", "plus_one")
TYPES = ("u8", "bits", "i32", "f32")
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,127}")
"""Op names (the module an op came from, e.g. ``layer1.0.conv1``), tensor names and the file's
tensor keys. The generated C quotes op names in comments: no character here can end a comment,
start a string or a preprocessor line, or break a line."""

# --- resource limits: per image, checked by Graph.load before anything is allocated ----------
# A binary ResNet-18 on 32x32 CIFAR (tests/test_hostile_graph.py builds one) needs 11.2M parameter
# values, 0.59M values in its largest array, 1.4M activation values and 0.56G MACs: 3x, 28x, 24x
# and 7.7x below the limits.

MAX_OPS = 1024
"""Ops in a graph (the memory planner's placement is quadratic in them)."""
MAX_PARAMS = 2**25
"""Parameter values of all ops together (a packed bit counts as one): at most 32 MiB as bools,
256 MiB for the float64 copy of the largest weight the NumPy reference makes."""
MAX_ELEMENTS = 2**24
"""Values of the largest array the NumPy reference makes for one image: a tensor, the padded
input of a convolution (``np.pad``), or the window matrix of a convolution or pool (one row per
output pixel, one column per tap). ``numpy_ref.predict`` sizes its batches by it."""
MAX_ACTIVATIONS = 2**25
"""Values of all activation tensors of one image together. Each takes at most 4 bytes in the C
runtime, so this also bounds its planned arena (and naive footprint) to 128 MiB."""
MAX_MACS = 2**32
"""Multiply-accumulates (and window taps of pools) for one image: bounds the time per image."""
LARGE_GRAPH_FACTOR = 64
"""``Graph.load(..., allow_large=True)`` (the CLI's ``--allow-large-graph``) multiplies every
limit above by this, for genuinely large graphs."""


@dataclass(frozen=True)
class OpSpec:
    """What an op accepts: input types, attribute names, parameters and their dtypes."""

    inputs: tuple[tuple[str, ...], ...]  # allowed types per input
    attrs: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict)  # name -> "bits" | "i32" | "f32"
    optional_params: tuple[str, ...] = ()
    doc: str = ""


OPS: dict[str, OpSpec] = {
    "input_conv2d": OpSpec(
        (("u8",),), ("stride", "padding"), {"weight": "bits"},
        doc="u8 (C,H,W) * ±1 weight (O,C,kh,kw) -> i32; padded pixels are 0 and add nothing",
    ),
    "input_dense": OpSpec(
        (("u8",),), (), {"weight": "bits"}, doc="u8 (F,) * ±1 weight (O,F) -> i32 (O,)",
    ),
    "binary_conv2d": OpSpec(
        (("bits",),), ("stride", "padding", "pad"), {"weight": "bits"},
        doc="±1 (C,H,W) * ±1 weight (O,C,kh,kw) -> i32; pad 'zero' counts only valid taps, "
        "'minus_one'/'plus_one' pad with that constant",
    ),
    "binary_dense": OpSpec(
        (("bits",),), (), {"weight": "bits"}, doc="±1 (F,) * ±1 weight (O,F) -> i32 (O,) = F - 2*popcount(x xor w)",
    ),
    "threshold": OpSpec(
        (("i32",),), (), {"thresh": "i32", "flip": "bits"},
        doc="i32 (C,...) -> bits: x >= thresh[c], or x <= thresh[c] where flip[c]; "
        "thresh = INT32_MIN makes a constant channel (1 without flip, 0 with flip)",
    ),
    "affine": OpSpec(
        (("i32", "f32"),), (), {"scale": "f32", "bias": "f32"},
        doc="(C,...) -> f32: float32(x) * scale[c] + bias[c], each step rounded to float32 (no FMA)",
    ),
    "add": OpSpec((("i32", "f32"), ("i32", "f32")), (), doc="elementwise sum of two tensors of one type and shape"),
    "maxpool": OpSpec(
        (("i32", "bits"),), ("kernel", "stride"), {}, ("min_channels",),
        doc="window max, no padding (floor); on bits max = OR, and channels marked in the optional "
        "bits param min_channels take the minimum (AND): a max-pool moved past a decreasing threshold",
    ),
    "avgpool": OpSpec(
        (("i32",),), ("kernel", "stride"), doc="window SUM of i32, no padding; the consumer folds the 1/(kh*kw)",
    ),
    "flatten": OpSpec((("u8", "bits", "i32", "f32"),), (), doc="(C,H,W) -> (C*H*W,) in C order"),
    "argmax": OpSpec((("i32", "f32"),), (), doc="(C,) -> index of the first maximum (type 'index', shape ())"),
}


@dataclass
class Op:
    kind: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""  # the module it came from, for reports


@dataclass
class Graph:
    input_shape: tuple[int, int, int]
    ops: list[Op]
    input: str = "input"
    meta: dict[str, Any] = field(default_factory=dict)
    # filled by validate(): per tensor name, (type, shape)
    types: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.input_shape
        if not (isinstance(shape, (tuple, list)) and len(shape) == 3
                and all(_is_int(d) and 1 <= d <= INT32_MAX for d in shape)):
            raise _bad("input shape", "3 positive ints", shape)
        self.input_shape = tuple(int(d) for d in shape)
        self.validate()

    @property
    def scores(self) -> str:
        """The tensor that ``argmax`` reads: the class scores."""
        return self.ops[-1].inputs[0]

    @property
    def num_classes(self) -> int:
        return self.types[self.scores][1][0]

    def validate(self) -> None:
        """Check every op against ``OPS`` and infer the type and shape of every tensor.
        A graph ends in exactly one ``argmax``."""
        types: dict[str, tuple[str, tuple[int, ...]]] = {check_name(self.input, "input name"): ("u8", self.input_shape)}
        if not self.ops or self.ops[-1].kind != "argmax":
            raise BnnkitError("a graph must end with an argmax op")
        for i, op in enumerate(self.ops):
            check_name(op.name, f"op {i} name", empty=True)
            where = f"op {i} ({op.kind}{' from ' + op.name if op.name else ''})"
            spec = OPS.get(op.kind) if isinstance(op.kind, str) else None
            if spec is None:
                raise BnnkitError(f"{where}: unknown op; known ops: {', '.join(OPS)}")
            if op.kind == "argmax" and i != len(self.ops) - 1:
                raise BnnkitError(f"{where}: argmax must be the last op")
            if len(op.inputs) != len(spec.inputs):
                raise BnnkitError(f"{where}: takes {len(spec.inputs)} input(s), got {len(op.inputs)}")
            for name in (*op.inputs, op.output):
                check_name(name, f"{where}: tensor name")
            missing = [a for a in spec.attrs if a not in op.attrs] + [p for p in spec.params if p not in op.params]
            extra = (set(op.attrs) - set(spec.attrs)) | (set(op.params) - set(spec.params) - set(spec.optional_params))
            if missing or extra:
                raise BnnkitError(f"{where}: missing {missing or 'nothing'}, unexpected {sorted(extra) or 'nothing'}")
            for name, value in op.attrs.items():
                check_attr(name, value, f"{where}: attribute {name}")
            for pname, value in op.params.items():
                want = _PARAM_DTYPES[spec.params.get(pname, "bits")]
                if not isinstance(value, np.ndarray) or value.dtype != want:
                    got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                    raise BnnkitError(f"{where}: parameter {pname} must be a {want} array, got {got}")
                if want == np.float32 and not np.isfinite(value).all():
                    raise BnnkitError(f"{where}: parameter {pname} has non-finite values")
            ins = []
            for name, allowed in zip(op.inputs, spec.inputs):
                if name not in types:
                    raise BnnkitError(f"{where}: input {name!r} is not produced by an earlier op")
                if types[name][0] not in allowed:
                    raise BnnkitError(f"{where}: input {name!r} is {types[name][0]}, expected {'/'.join(allowed)}")
                ins.append(types[name])
            if op.output in types:
                raise BnnkitError(f"{where}: output {op.output!r} is already defined")
            try:
                types[op.output] = _infer(op, ins)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise BnnkitError(f"{where}: {e}") from None
        self.types = types

    # --- files -------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save

        tensors = _file_tensors(self)
        header = {
            "format": "bnnkit-graph",
            "version": FORMAT_VERSION,
            **CONVENTIONS,
            "input": {"name": self.input, "type": "u8", "shape": list(self.input_shape)},
            "ops": [_op_header(i, op) for i, op in enumerate(self.ops)],
            "meta": self.meta,
        }
        header["sha256"] = _digest(tensors, header)
        atomic_write(path, save(tensors, metadata={"bnnkit": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | Path, *, allow_large: bool = False) -> "Graph":
        """Read a graph file, refusing with one ``BnnkitError`` line whatever it holds that is
        not a valid graph within the resource limits (``allow_large`` multiplies those by
        ``LARGE_GRAPH_FACTOR``)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise BnnkitError(f"{path}: no such graph file (make one with `bnnkit export RUN_DIR -o {path.name}`)")
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, TypeError) as e:  # TypeError: a dtype NumPy lacks (bfloat16)
            raise BnnkitError(f"{path}: not a readable graph file (truncated or not safetensors): {e}") from None
        scale = LARGE_GRAPH_FACTOR if allow_large else 1
        try:
            header = _read_header(metadata)
            _check_header(header, scale)
            if header["sha256"] != _digest(tensors, header if header["version"] >= 2 else None):
                raise BnnkitError("contents do not match the header's SHA-256 (file corrupted or altered)")
            ops = [_op_from_header(h, tensors, f"header field ops[{i}]") for i, h in enumerate(header["ops"])]
            graph = cls(tuple(header["input"]["shape"]), ops, header["input"]["name"], header.get("meta", {}))
            check_resources(graph, scale)
        except BnnkitError as e:  # say which file
            raise BnnkitError(f"{path}: {e}") from None
        return graph


def pair(v) -> tuple[int, int]:
    """An int or a 2-sequence (a kernel, stride or padding attribute) as (rows, cols)."""
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    return int(a), int(b)


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    n = (size + 2 * pad - kernel) // stride + 1
    if kernel < 1 or stride < 1 or pad < 0 or n < 1:
        raise ValueError(f"window {kernel}, stride {stride}, padding {pad} do not fit size {size}")
    return n


def _infer(op: Op, ins: list[tuple[str, tuple[int, ...]]]) -> tuple[str, tuple[int, ...]]:
    """Type and shape of ``op``'s output from its inputs; raises ValueError on mismatch."""
    (t, shape), k, p = ins[0], op.kind, op.params
    if k in ("input_conv2d", "binary_conv2d"):
        w = p["weight"]
        if len(shape) != 3 or w.ndim != 4 or w.shape[1] != shape[0]:
            raise ValueError(f"weight {w.shape} does not match input {shape}")
        (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
        if ph > w.shape[2] or pw > w.shape[3]:  # whole output rows of padding alone: no trained layer has them
            raise ValueError(f"padding {(ph, pw)} is larger than the kernel {w.shape[2:]}")
        return "i32", (w.shape[0], _out_size(shape[1], w.shape[2], sh, ph), _out_size(shape[2], w.shape[3], sw, pw))
    if k in ("input_dense", "binary_dense"):
        w = p["weight"]
        if len(shape) != 1 or w.ndim != 2 or w.shape[1] != shape[0]:
            raise ValueError(f"weight {w.shape} does not match input {shape}")
        return "i32", (w.shape[0],)
    if k in ("threshold", "affine"):
        for name in OPS[k].params:
            if p[name].shape != (shape[0],):
                raise ValueError(f"{name} has shape {p[name].shape}, expected ({shape[0]},)")
        return ("bits" if k == "threshold" else "f32"), shape
    if k == "add":
        if ins[0] != ins[1]:
            raise ValueError(f"inputs differ: {ins[0]} vs {ins[1]}")
        return t, shape
    if k in ("maxpool", "avgpool"):
        if len(shape) != 3:
            raise ValueError(f"pooling needs (C,H,W), got {shape}")
        if "min_channels" in p and (t != "bits" or p["min_channels"].shape != (shape[0],)):
            raise ValueError("min_channels is one flag per channel of a bits input")
        (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
        return t, (shape[0], _out_size(shape[1], kh, sh, 0), _out_size(shape[2], kw, sw, 0))
    if k == "flatten":
        return t, (math.prod(shape),)
    if k == "argmax":
        if len(shape) != 1:
            raise ValueError(f"argmax needs a vector, got {shape}")
        return "index", ()
    raise ValueError(f"no shape rule for {k}")


# --- file encoding ---------------------------------------------------------------

_DTYPES = {"i32": np.int32, "f32": np.float32}
_PARAM_DTYPES = {"bits": np.dtype(bool), "i32": np.dtype(np.int32), "f32": np.dtype(np.float32)}


def _packed_rows(shape: tuple[int, ...]) -> int:
    """Weights pack one row per output channel; a per-channel flag vector packs as one row."""
    return 1 if len(shape) == 1 else shape[0]


def _param_key(i: int, name: str) -> str:
    return f"op{i:03d}.{name}"


def _file_tensors(g: Graph) -> dict[str, np.ndarray]:
    out = {}
    for i, op in enumerate(g.ops):
        spec = OPS[op.kind]
        for name, value in op.params.items():
            kind = spec.params.get(name, "bits")
            if kind == "bits":
                flat = np.asarray(value, dtype=bool).reshape(_packed_rows(value.shape), -1)
                out[_param_key(i, name)] = np.packbits(flat, axis=1, bitorder="little")
            else:
                out[_param_key(i, name)] = np.ascontiguousarray(value, dtype=_DTYPES[kind])
    return out


def _op_header(i: int, op: Op) -> dict:
    attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in op.attrs.items()}
    params = {name: {"tensor": _param_key(i, name), "shape": list(v.shape)} for name, v in op.params.items()}
    return {"kind": op.kind, "name": op.name, "inputs": op.inputs, "output": op.output, "attrs": attrs, "params": params}


def _op_from_header(h: dict, tensors: dict[str, np.ndarray], where: str) -> Op:
    """An op from its header entry, which ``_check_header`` has passed."""
    spec = OPS[h["kind"]]
    params = {
        name: _param_from_file(ref, spec.params.get(name, "bits"), tensors, f"{where}.params.{name}")
        for name, ref in h["params"].items()
    }
    attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in h["attrs"].items()}
    return Op(h["kind"], list(h["inputs"]), h["output"], attrs, params, h.get("name", ""))


def _param_from_file(ref: dict, kind: str, tensors: dict[str, np.ndarray], where: str) -> np.ndarray:
    key, shape = ref["tensor"], tuple(ref["shape"])
    stored = tensors.get(key)
    if stored is None:
        raise BnnkitError(f"{where}.tensor: no tensor {key} in the file")
    if kind == "bits":
        rows = _packed_rows(shape)
        n = math.prod(shape) // rows
        want = np.dtype(np.uint8), (rows, (n + 7) // 8)
    else:
        want = np.dtype(_DTYPES[kind]), shape
    if (stored.dtype, stored.shape) != want:
        raise BnnkitError(f"{where}: tensor {key} is {stored.dtype}{stored.shape}, expected {want[0]}{want[1]}")
    if kind != "bits":
        return stored
    return np.unpackbits(stored, axis=1, count=n, bitorder="little").astype(bool).reshape(shape)


def _digest(tensors: dict[str, np.ndarray], header: dict | None = None) -> str:
    """SHA-256 of the header (version 2: its canonical JSON without the ``sha256`` field;
    version 1: not covered) followed by each tensor in key order."""
    h = hashlib.sha256()
    if header is not None:
        body = {k: v for k, v in header.items() if k != "sha256"}
        h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode())
    for key in sorted(tensors):
        t = np.ascontiguousarray(tensors[key])
        h.update(f"{key}:{t.dtype.str}:{list(t.shape)};".encode())
        h.update(t.tobytes())
    return h.hexdigest()


# --- the header schema --------------------------------------------------------------
# Each check raises one line naming the field, e.g. "header field ops[3].attrs.stride:
# expected ..., got [true, true]"; a field's path is built from keys already checked, and the
# offending value is shown as escaped JSON, so no text from the file can break the line.

_HEADER_KEYS = ("format", "version", *CONVENTIONS, "input", "ops", "sha256")
_OP_KEYS = ("kind", "inputs", "output", "attrs", "params")
_ATTR_LEAST = {"kernel": 1, "stride": 1, "padding": 0}
_META_KEYS, _META_ITEMS, _META_CHARS = 64, 1024, 4096
_META_TEXT = ("dataset", "model", "recipe", "run")  # read by bnnkit as strings


def _show(value: Any) -> str:
    """``value`` as one short line of JSON (NaN and Infinity spelled as JSON parsers read them)."""
    if isinstance(value, (list, dict)) and len(value) > 8:  # never encode a huge value to show 60 characters of it
        return f"a {'list' if isinstance(value, list) else 'JSON object'} of {len(value)} items"
    try:
        text = json.dumps(value, default=str)
    except (RecursionError, ValueError):
        text = "a deeply nested value"
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, expected: str, value: Any) -> BnnkitError:
    return BnnkitError(f"{where}: expected {expected}, got {_show(value)}")


def _is_int(v: Any) -> bool:
    """An integer that is not a bool: ``isinstance(True, int)`` holds in Python."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_name(value: Any, where: str, empty: bool = False) -> str:
    """``value`` if it matches ``NAME`` (or is empty, where ``empty``), else a ``BnnkitError``."""
    if not (isinstance(value, str) and (NAME.fullmatch(value) or (empty and value == ""))):
        raise _bad(where, "a name of at most 128 letters, digits, '_' and '.'", value)
    return value


def check_attr(name: str, value: Any, where: str) -> None:
    """An op attribute: ``pad`` one of ``PAD_MODES``; ``kernel`` and ``stride`` a positive int
    or 2 of them (rows, cols); ``padding`` the same, zero allowed. Bools are not ints here."""
    if name == "pad":
        if not (isinstance(value, str) and value in PAD_MODES):
            raise _bad(where, f"one of {', '.join(PAD_MODES)}", value)
        return
    least = _ATTR_LEAST[name]
    parts = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    if not all(_is_int(v) and least <= v <= INT32_MAX for v in parts):
        kind = "positive" if least else "non-negative"
        raise _bad(where, f"a {kind} int or 2 {kind} ints below 2**31", value)


def _int(value: Any, where: str, least: int) -> int:
    if not (_is_int(value) and least <= value <= INT32_MAX):
        raise _bad(where, f"an int in {least}..{INT32_MAX}", value)
    return int(value)


def _list(value: Any, where: str, least: int, most: int) -> list:
    if not (isinstance(value, list) and least <= len(value) <= most):
        raise _bad(where, f"a list of {least}..{most} items" if least < most else f"a list of {least} items", value)
    return value


def _keys(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """``value`` if it is a JSON object with all ``required`` keys and no others but ``optional``."""
    if not isinstance(value, dict):
        raise _bad(where, "a JSON object", value)
    missing = [k for k in required if k not in value]
    if missing:
        raise BnnkitError(f"{where}: missing {', '.join(missing)}")
    for key in value:
        if key not in required and key not in optional:
            raise BnnkitError(f"{where}: unknown key {_show(key)}; known: {', '.join((*required, *optional))}")
    return value


def _read_header(metadata: dict) -> dict:
    """The JSON header, as far as its format and version: the rest is ``_check_header``'s."""
    if "bnnkit" not in metadata:
        raise BnnkitError("safetensors file without a bnnkit graph header")
    try:
        header = json.loads(metadata["bnnkit"])
    except (ValueError, RecursionError) as e:  # a JSONDecodeError, too many digits, too deep
        raise BnnkitError(f"the bnnkit graph header is not valid JSON ({_show(str(e))})") from None
    if not isinstance(header, dict):
        raise _bad("header", "a JSON object", header)
    version = header.get("version")
    if header.get("format") != "bnnkit-graph" or not (_is_int(version) and version in READ_VERSIONS):
        raise BnnkitError(
            f"graph format version {_show(version)}, this bnnkit reads versions "
            f"{' and '.join(map(str, READ_VERSIONS))}; re-export the model with this bnnkit"
        )
    return header


def _check_header(h: dict, scale: int) -> None:
    """The whole header's schema: types, ranges, lengths and keys, and the parameter count
    (before any tensor is unpacked). ``scale`` multiplies the resource limits."""
    _keys(h, "header", _HEADER_KEYS, ("meta",))
    for key, want in CONVENTIONS.items():
        if type(h[key]) is not type(want) or h[key] != want:
            raise _bad(f"header field {key}", _show(want), h[key])
    inp = _keys(h["input"], "header field input", ("name", "type", "shape"))
    check_name(inp["name"], "header field input.name")
    if inp["type"] != "u8":
        raise _bad("header field input.type", '"u8"', inp["type"])
    for j, d in enumerate(_list(inp["shape"], "header field input.shape", 3, 3)):
        _int(d, f"header field input.shape[{j}]", 1)
    ops = _list(h["ops"], "header field ops", 1, MAX_OPS * scale)
    params = sum(_check_op(op, f"header field ops[{i}]") for i, op in enumerate(ops))
    _within(params, MAX_PARAMS, "MAX_PARAMS", "parameter values", scale)
    _check_meta(h.get("meta", {}), "header field meta")
    if not (isinstance(h["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", h["sha256"])):
        raise _bad("header field sha256", "64 lowercase hex digits", h["sha256"])


def _check_op(h: Any, where: str) -> int:
    """One op entry of the header; returns its number of parameter values."""
    _keys(h, where, _OP_KEYS, ("name",))
    if not (isinstance(h["kind"], str) and h["kind"] in OPS):
        raise BnnkitError(f"{where}.kind: unknown op {_show(h['kind'])}; known ops: {', '.join(OPS)}")
    spec = OPS[h["kind"]]
    check_name(h.get("name", ""), f"{where}.name", empty=True)
    for j, name in enumerate(_list(h["inputs"], f"{where}.inputs", len(spec.inputs), len(spec.inputs))):
        check_name(name, f"{where}.inputs[{j}]")
    check_name(h["output"], f"{where}.output")
    for name, value in _keys(h["attrs"], f"{where}.attrs", spec.attrs).items():
        check_attr(name, value, f"{where}.attrs.{name}")
    count = 0
    for name, ref in _keys(h["params"], f"{where}.params", tuple(spec.params), spec.optional_params).items():
        at = f"{where}.params.{name}"
        _keys(ref, at, ("tensor", "shape"))
        check_name(ref["tensor"], f"{at}.tensor")
        count += math.prod(_int(d, f"{at}.shape[{j}]", 1) for j, d in enumerate(_list(ref["shape"], f"{at}.shape", 1, 4)))
    return count


def _check_meta(meta: Any, where: str) -> None:
    """Where the graph came from: names to printable text (``dataset``, ``model``, ``recipe``,
    ``run`` are text), finite numbers, booleans, null, or short lists of those."""
    if not (isinstance(meta, dict) and len(meta) <= _META_KEYS):
        raise _bad(where, f"a JSON object of at most {_META_KEYS} keys", meta)
    for key, value in meta.items():
        check_name(key, f"{where} key")
        at = f"{where}.{key}"
        if key in _META_TEXT and not isinstance(value, str):
            raise _bad(at, "text", value)
        items = _list(value, at, 0, _META_ITEMS) if isinstance(value, list) else [value]
        for item in items:
            text = isinstance(item, str) and len(item) <= _META_CHARS and item.isprintable()
            number = (_is_int(item) and abs(item) < 2**53) or (isinstance(item, float) and math.isfinite(item))
            if not (text or number or item is None or isinstance(item, bool)):
                raise _bad(at, f"printable text of at most {_META_CHARS} characters, a finite number, a bool or null", item)


# --- resource limits ------------------------------------------------------------------


def resources(graph: Graph) -> dict[str, Any]:
    """What one image costs in ``graph``, in Python ints: ``params`` (parameter values),
    ``largest`` (values of the largest array the NumPy reference makes) and ``largest_what``,
    ``activations`` (values of all activation tensors) and ``macs`` (multiply-accumulates and
    pool window taps). The limits ``MAX_*`` above bound each."""
    arrays = [(math.prod(shape), f"tensor {name}") for name, (_, shape) in graph.types.items()]
    macs = 0
    for i, op in enumerate(graph.ops):
        out = graph.types[op.output][1]
        if op.kind in ("input_conv2d", "binary_conv2d"):
            (c, h, w), (kh, kw) = graph.types[op.inputs[0]][1], op.params["weight"].shape[2:]
            ph, pw = pair(op.attrs["padding"])
            window = out[1] * out[2] * c * kh * kw
            arrays += [(c * (h + 2 * ph) * (w + 2 * pw), f"padded input of op {i}"), (window, f"window matrix of op {i}")]
            macs += window * out[0]
        elif op.kind in ("input_dense", "binary_dense"):
            macs += math.prod(op.params["weight"].shape)
        elif op.kind in ("maxpool", "avgpool"):
            window = math.prod(out) * math.prod(pair(op.attrs["kernel"]))
            arrays.append((window, f"window matrix of op {i}"))
            macs += window
    largest, what = max(arrays)
    return {
        "params": sum(v.size for op in graph.ops for v in op.params.values()),
        "largest": largest,
        "largest_what": what,
        "activations": sum(math.prod(shape) for _, shape in graph.types.values()),
        "macs": macs,
    }


def _within(value: int, limit: int, name: str, what: str, scale: int) -> None:
    if value > limit * scale:
        hint = "" if scale > 1 else "; if the graph is genuine, --allow-large-graph (Graph.load(allow_large=True)) raises it"
        raise BnnkitError(f"{what}: {value:,} per image, over the limit of {limit * scale:,} (graph.{name}){hint}")


def check_resources(graph: Graph, scale: int = 1) -> None:
    """Refuse a graph that needs more than the ``MAX_*`` limits times ``scale`` for one image."""
    use = resources(graph)
    _within(len(graph.ops), MAX_OPS, "MAX_OPS", "ops", scale)
    _within(use["params"], MAX_PARAMS, "MAX_PARAMS", "parameter values", scale)
    _within(use["largest"], MAX_ELEMENTS, "MAX_ELEMENTS", f"values in the {use['largest_what']}", scale)
    _within(use["activations"], MAX_ACTIVATIONS, "MAX_ACTIVATIONS", "activation values", scale)
    _within(use["macs"], MAX_MACS, "MAX_MACS", "multiply-accumulates", scale)
