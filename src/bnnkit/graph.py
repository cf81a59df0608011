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
conventions, the format version and a SHA-256 of the tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write

FORMAT_VERSION = 1
CONVENTIONS = {
    "bit_order": "bit 1 = +1, bit 0 = -1; least significant bit first",
    "word_bits": 8,
    "sign_of_zero": "+1",
    "layout": "CHW, flatten in C order",
}
PAD_MODES = ("zero", "minus_one", "plus_one")
TYPES = ("u8", "bits", "i32", "f32")
INT32_MIN = -(2**31)


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
        self.input_shape = tuple(int(d) for d in self.input_shape)
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
        types: dict[str, tuple[str, tuple[int, ...]]] = {self.input: ("u8", self.input_shape)}
        if not self.ops or self.ops[-1].kind != "argmax":
            raise BnnkitError("a graph must end with an argmax op")
        for i, op in enumerate(self.ops):
            where = f"op {i} ({op.kind}{' from ' + op.name if op.name else ''})"
            spec = OPS.get(op.kind)
            if spec is None:
                raise BnnkitError(f"{where}: unknown op; known ops: {', '.join(OPS)}")
            if op.kind == "argmax" and i != len(self.ops) - 1:
                raise BnnkitError(f"{where}: argmax must be the last op")
            if len(op.inputs) != len(spec.inputs):
                raise BnnkitError(f"{where}: takes {len(spec.inputs)} input(s), got {len(op.inputs)}")
            missing = [a for a in spec.attrs if a not in op.attrs] + [p for p in spec.params if p not in op.params]
            extra = set(op.params) - set(spec.params) - set(spec.optional_params)
            if missing or extra:
                raise BnnkitError(f"{where}: missing {missing or 'nothing'}, unexpected {sorted(extra) or 'nothing'}")
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
            "sha256": _digest(tensors),
        }
        atomic_write(path, save(tensors, metadata={"bnnkit": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise BnnkitError(f"{path}: no such graph file (make one with `bnnkit export RUN_DIR -o {path.name}`)")
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise BnnkitError(f"{path}: not a readable graph file (truncated or not safetensors): {e}") from None
        try:
            header = json.loads(metadata["bnnkit"])
        except (KeyError, json.JSONDecodeError):
            raise BnnkitError(f"{path}: safetensors file without a bnnkit graph header") from None
        if header.get("format") != "bnnkit-graph" or header.get("version") != FORMAT_VERSION:
            raise BnnkitError(
                f"{path}: graph format version {header.get('version')!r}, this bnnkit reads version "
                f"{FORMAT_VERSION}; re-export the model with this bnnkit"
            )
        if header.get("sha256") != _digest(tensors):
            raise BnnkitError(f"{path}: tensor bytes do not match the header's SHA-256 (file corrupted or altered)")
        try:
            ops = [_op_from_header(h, tensors) for h in header["ops"]]
            return cls(tuple(header["input"]["shape"]), ops, header["input"]["name"], header.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise BnnkitError(f"{path}: malformed graph header ({type(e).__name__}: {e})") from None
        except BnnkitError as e:  # the graph's own validation: say which file
            raise BnnkitError(f"{path}: {e}") from None


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
        if k == "binary_conv2d" and op.attrs["pad"] not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}")
        (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
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
        return t, (int(np.prod(shape)),)
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


def _op_from_header(h: dict, tensors: dict[str, np.ndarray]) -> Op:
    spec = OPS.get(h["kind"])
    if spec is None:  # Graph.validate words the error; keep the op so it can
        spec = OpSpec(())
    params = {}
    for name, ref in h["params"].items():
        stored, shape = tensors[ref["tensor"]], tuple(ref["shape"])
        if spec.params.get(name, "bits") == "bits":
            rows = _packed_rows(shape)
            n = int(np.prod(shape, dtype=np.int64)) // max(rows, 1)
            if stored.dtype != np.uint8 or stored.shape != (rows, (n + 7) // 8):
                raise ValueError(f"packed tensor {ref['tensor']} has shape {stored.shape}, expected {(rows, (n + 7) // 8)}")
            bits = np.unpackbits(stored, axis=1, count=n, bitorder="little").astype(bool)
            params[name] = bits.reshape(shape)
        else:
            if stored.dtype != _DTYPES[spec.params[name]] or stored.shape != shape:
                raise ValueError(f"tensor {ref['tensor']} is {stored.dtype}{stored.shape}, expected {spec.params[name]}{shape}")
            params[name] = stored
    attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in h["attrs"].items()}
    return Op(h["kind"], list(h["inputs"]), h["output"], attrs, params, h.get("name", ""))


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = np.ascontiguousarray(tensors[key])
        h.update(f"{key}:{t.dtype.str}:{list(t.shape)};".encode())
        h.update(t.tobytes())
    return h.hexdigest()
