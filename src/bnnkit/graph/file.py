"""The graph file: safetensors holding the parameters, and a JSON header under the metadata key
``bnnkit`` holding the ops, shapes, conventions, the format version and a SHA-256 of the header
and the tensor bytes. Binary weights are packed eight to a byte (bit 1 ⇔ +1, least significant
bit first along the flattened ``(in_channels × kh × kw)`` or ``in_features`` axis, one row per
output channel; a per-channel flag vector is one row), integer and float parameters are stored
as they are.

A graph file is untrusted input. ``load_graph`` checks the whole header against one schema
(``_check_header``) before it builds anything from it, then the digest, then the graph's own
rules (``Graph.validate``), then the resource limits (``bnnkit.graph.limits``). The digest only
catches damage: whoever crafts a file recomputes it. What keeps a crafted file harmless is the
rest: every name that can reach generated C matches ``NAME``, every number is a bounded int of
the right type, and no size is allocated before it is bounded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write
from bnnkit.graph.core import INT32_MAX, Graph, Op, _bad, _is_int, _show, check_attr, check_name
from bnnkit.graph.limits import LARGE_GRAPH_FACTOR, MAX_OPS, MAX_PARAMS, check_resources, within
from bnnkit.graph.ops import DTYPES, OPS

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


def save_graph(graph: Graph, path: str | Path) -> None:
    tensors = _file_tensors(graph)
    header = {
        "format": "bnnkit-graph",
        "version": FORMAT_VERSION,
        **CONVENTIONS,
        "input": {"name": graph.input, "type": "u8", "shape": list(graph.input_shape)},
        "ops": [_op_header(i, op) for i, op in enumerate(graph.ops)],
        "meta": graph.meta,
    }
    header["sha256"] = _digest(tensors, header)
    atomic_write(path, save(tensors, metadata={"bnnkit": json.dumps(header)}))


def load_graph(cls: type[Graph], path: str | Path, allow_large: bool = False) -> Graph:
    """``Graph.load``: a graph of class ``cls`` from ``path``, or one ``BnnkitError`` line."""
    path = Path(path)
    if not path.is_file():
        raise BnnkitError(f"{path}: no such graph file (make one with `bnnkit export RUN_DIR -o {path.name}`)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict: it has keys(), not iteration)
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
            kind = spec.param_type(name)
            if kind == "bits":
                flat = np.asarray(value, dtype=bool).reshape(_packed_rows(value.shape), -1)
                out[_param_key(i, name)] = np.packbits(flat, axis=1, bitorder="little")
            else:
                out[_param_key(i, name)] = np.ascontiguousarray(value, dtype=DTYPES[kind])
    return out


def _op_header(i: int, op: Op) -> dict[str, Any]:
    attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in op.attrs.items()}
    params = {name: {"tensor": _param_key(i, name), "shape": list(v.shape)} for name, v in op.params.items()}
    return {
        "kind": op.kind,
        "name": op.name,
        "inputs": op.inputs,
        "output": op.output,
        "attrs": attrs,
        "params": params,
    }


def _op_from_header(h: dict[str, Any], tensors: dict[str, np.ndarray], where: str) -> Op:
    """An op from its header entry, which ``_check_header`` has passed."""
    spec = OPS[h["kind"]]
    params = {
        name: _param_from_file(ref, spec.param_type(name), tensors, f"{where}.params.{name}")
        for name, ref in h["params"].items()
    }
    attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in h["attrs"].items()}
    return Op(h["kind"], list(h["inputs"]), h["output"], attrs, params, h.get("name", ""))


def _param_from_file(ref: dict[str, Any], kind: str, tensors: dict[str, np.ndarray], where: str) -> np.ndarray:
    key, shape = ref["tensor"], tuple(ref["shape"])
    stored = tensors.get(key)
    if stored is None:
        raise BnnkitError(f"{where}.tensor: no tensor {key} in the file")
    want: tuple[np.dtype[Any], tuple[int, ...]]
    if kind == "bits":
        rows = _packed_rows(shape)
        n = math.prod(shape) // rows
        want = np.dtype(np.uint8), (rows, (n + 7) // 8)
    else:
        want = DTYPES[kind], shape
    if (stored.dtype, stored.shape) != want:
        raise BnnkitError(f"{where}: tensor {key} is {stored.dtype}{stored.shape}, expected {want[0]}{want[1]}")
    if kind != "bits":
        return stored
    return np.unpackbits(stored, axis=1, count=n, bitorder="little").astype(bool).reshape(shape)


def _digest(tensors: dict[str, np.ndarray], header: dict[str, Any] | None = None) -> str:
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
_META_KEYS, _META_ITEMS, _META_CHARS = 64, 1024, 4096
_META_TEXT = ("dataset", "model", "recipe", "run")  # read by bnnkit as strings


def _int(value: Any, where: str, least: int) -> int:
    if not (_is_int(value) and least <= value <= INT32_MAX):
        raise _bad(where, f"an int in {least}..{INT32_MAX}", value)
    return int(value)


def _list(value: Any, where: str, least: int, most: int) -> list[Any]:
    if not (isinstance(value, list) and least <= len(value) <= most):
        raise _bad(where, f"a list of {least}..{most} items" if least < most else f"a list of {least} items", value)
    return value


def _keys(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
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


def _read_header(metadata: dict[str, str]) -> dict[str, Any]:
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


def _check_header(h: dict[str, Any], scale: int) -> None:
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
    within(params, MAX_PARAMS, "MAX_PARAMS", "parameter values", scale)
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
        count += math.prod(
            _int(d, f"{at}.shape[{j}]", 1) for j, d in enumerate(_list(ref["shape"], f"{at}.shape", 1, 4))
        )
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
                raise _bad(
                    at, f"printable text of at most {_META_CHARS} characters, a finite number, a bool or null", item
                )
