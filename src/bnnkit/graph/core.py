"""``Graph`` and ``Op``, and the graph's own rules (``Graph.validate``): every op checked
against its ``OpDef`` in ``bnnkit.graph.ops``, the type and shape of every tensor inferred."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.graph.ops import DTYPES, OPS, PAD_MODES

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,127}")
"""Op names (the module an op came from, e.g. ``layer1.0.conv1``), tensor names and the file's
tensor keys. The generated C quotes op names in comments: no character here can end a comment,
start a string or a preprocessor line, or break a line."""


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
        if not (
            isinstance(shape, (tuple, list))
            and len(shape) == 3
            and all(_is_int(d) and 1 <= d <= INT32_MAX for d in shape)
        ):
            raise _bad("input shape", "3 positive ints", shape)
        c, h, w = (int(d) for d in shape)
        self.input_shape = (c, h, w)
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
                want = DTYPES[spec.param_type(pname)]
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
                types[op.output] = spec.infer(op, ins)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise BnnkitError(f"{where}: {e}") from None
        self.types = types

    # --- files (bnnkit.graph.file) -------------------------------------------------

    def save(self, path: str | Path) -> None:
        from bnnkit.graph.file import save_graph  # here: graph.file imports this module

        save_graph(self, path)

    @classmethod
    def load(cls, path: str | Path, *, allow_large: bool = False) -> Graph:
        """Read a graph file, refusing with one ``BnnkitError`` line whatever it holds that is
        not a valid graph within the resource limits (``allow_large`` multiplies those by
        ``LARGE_GRAPH_FACTOR``)."""
        from bnnkit.graph.file import load_graph

        return load_graph(cls, path, allow_large)


# --- checks shared by Graph.validate and the file's header schema -----------------------
# Each raises one line naming the field; the offending value is shown as escaped JSON, so no
# text from a file can break the line.

_ATTR_LEAST = {"kernel": 1, "stride": 1, "padding": 0}


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
