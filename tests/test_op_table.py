"""The op table holds: every op kind has its rules and an entry in every backend (or a named
refusal), an op added without them is reported backend by backend, and code outside the
graph package asks the table instead of testing op kinds (a ratchet on how many such tests
are left)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import case_from_seed

import bnnkit.analysis.robustness  # noqa: F401
import bnnkit.cost.graph_cost  # noqa: F401  (the cost rules' user)
import bnnkit.runtime.c  # noqa: F401  (each backend fills its table on import)
import bnnkit.runtime.fast  # noqa: F401
import bnnkit.runtime.numpy_ref  # noqa: F401
from bnnkit.errors import BnnkitError
from bnnkit.graph import (
    OPS,
    PAD_MODES,
    Cost,
    Family,
    Graph,
    Op,
    OpDef,
    OpTable,
    PadMode,
    Refusal,
    conformance,
    pad_of,
    pair,
)
from bnnkit.graph.ops import BACKENDS, TABLES
from bnnkit.recipe.core import PAD_VALUES

SRC = Path(__file__).resolve().parents[1] / "src" / "bnnkit"
MAX_KIND_TESTS = 8  # outside src/bnnkit/graph/; 42 before the op table (issue 17)


def test_every_op_has_its_rules_and_every_backend():
    assert set(TABLES) == set(BACKENDS)
    assert conformance() == []
    for kind, d in OPS.items():
        assert d.kind == kind and isinstance(d.family, Family) and d.inputs and d.doc
        assert callable(d.infer) and callable(d.cost) and callable(d.work)


def test_a_new_op_without_backends_is_reported_for_each(monkeypatch):
    dummy = OpDef("dummy", Family.ELEMENTWISE, (("i32",),), lambda op, ins: ins[0])
    monkeypatch.setitem(OPS, "dummy", dummy)
    assert conformance() == [
        "dummy: no cost rule",
        "dummy: no numpy entry",
        "dummy: no c entry",
        "dummy: no fast entry",
        "dummy: no sat entry",
    ]
    # a table that is never created (its module not imported) is reported too
    others = {name: table for name, table in TABLES.items() if name != "sat"}
    assert conformance(tables=others)[0] == "no sat table: import bnnkit.analysis.robustness"
    # registering closes the gap; a refusal counts as an entry
    monkeypatch.setitem(
        OPS,
        "dummy",
        OpDef("dummy", Family.ELEMENTWISE, (("i32",),), lambda op, ins: ins[0], lambda op, ins, out: Cost()),
    )
    for name, table in TABLES.items():
        monkeypatch.setitem(table.entries, "dummy", Refusal("a test op") if name == "sat" else (lambda op, x: x))
    assert conformance() == []


def test_refusals_and_missing_entries_are_one_named_line():
    sat = TABLES["sat"]
    assert isinstance(sat.find("avgpool"), Refusal)
    with pytest.raises(BnnkitError, match="^the sat backend does not run avgpool: a window sum of accumulators"):
        sat["avgpool"]
    with pytest.raises(BnnkitError, match="^the numpy backend has no entry for op 'conv3d'"):
        TABLES["numpy"]["conv3d"]
    with pytest.raises(ValueError, match="not an op of the table or is registered twice"):
        TABLES["numpy"].register("threshold")(lambda op, x: x)
    with pytest.raises(ValueError, match="^backend 'onnx' is not one of numpy, c, fast, sat$"):
        OpTable("onnx")


def test_pad_modes_are_one_vocabulary():
    assert PAD_MODES == ("zero", "minus_one", "plus_one")
    assert [PadMode.parse(m).value for m in PAD_MODES] == [0, -1, 1]
    assert PadMode(-1.0) is PadMode.MINUS_ONE and PadMode.PLUS_ONE.mode == "plus_one"
    assert tuple(float(p.value) for p in PadMode) == PAD_VALUES  # the recipe's values, one per mode
    assert pad_of(Op("binary_dense", ["x"], "y")) is PadMode.ZERO


def _ops_by_hand(graph: Graph, op: Op) -> tuple[int, int, int]:
    """The per-op counts of bnnkit.cost.graph_cost's docstring, written out per kind."""
    out, inp = math.prod(graph.types[op.output][1]), graph.types[op.inputs[0]]
    if op.kind in ("conv2d_f32", "dense_f32"):  # a float multiply and add per tap, and the bias
        return 0, 0, 2 * out * op.params["weight"][0].size + out
    if op.kind == "meanpool":  # kh*kw - 1 adds and a division
        return 0, 0, out * math.prod(pair(op.attrs["kernel"]))
    if "weight" in op.params:
        macs = out * op.params["weight"][0].size
        return (macs, 0, 0) if inp[0] == "bits" else (0, macs, 0)
    if "kernel" in op.attrs:
        k = op.attrs["kernel"]
        return 0, out * ((k * k if isinstance(k, int) else k[0] * k[1]) - 1), 0
    return {
        "threshold": (0, out, 0),
        "add": (0, out, 0),
        "affine": (0, 0, 2 * out),
        "sign": (0, 0, out),
        "prelu": (0, 0, out),
        "argmax": (0, math.prod(inp[1]) - 1, 0),
        "flatten": (0, 0, 0),
    }[op.kind]


@pytest.mark.parametrize("seed", range(40))
def test_shape_and_cost_rules_agree_with_the_reference(seed):
    """Every OpDef's shape rule gives the shape numpy_ref's kernel really produces, and its cost
    rule the hand count, on random graphs."""
    case = case_from_seed(seed)
    graph, env = case.graph, bnnkit.runtime.numpy_ref.execute(case.graph, case.x, keep=True)
    for op in graph.ops:
        d = OPS[op.kind]
        ins = [graph.types[n] for n in op.inputs]
        assert d.infer(op, ins) == graph.types[op.output]
        assert env[op.output].shape[1:] == graph.types[op.output][1], op.kind
        assert tuple(d.cost(op, ins, graph.types[op.output])) == _ops_by_hand(graph, op), op.kind


def _strings(node: ast.AST) -> set[str]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def op_kind_tests(root: Path) -> list[str]:
    """``path:line`` of every test of an op's kind in the Python under ``root`` but outside the
    graph package: a comparison (==, !=, in, not in) with an op kind's name or a module
    constant listing them, a comparison of an ``.kind`` attribute with anything but text that
    is no op kind (``dtype.kind in "iu"``), and ``.kind.startswith``/``endswith``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "graph") in path.parents:
            continue
        tree = ast.parse(path.read_text())
        lists = {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign) and _strings(n.value) and _strings(n.value) <= set(OPS)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and all(
                isinstance(o, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for o in node.ops
            ):
                sides = [node.left, *node.comparators]
                names = any(_strings(s) & set(OPS) or (isinstance(s, ast.Name) and s.id in lists) for s in sides)
                kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
                other_text = any(_strings(s) and not _strings(s) & set(OPS) for s in sides)
                hit = names or (kind and not other_text)
            else:
                hit = (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("startswith", "endswith")
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "kind"
                )
            if hit:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_op_kind_tests_outside_the_graph_package_stay_few():
    found = op_kind_tests(SRC)
    assert len(found) <= MAX_KIND_TESTS, (
        "ask the op table (OPS[kind].family, a backend's OpTable) instead:\n" + "\n".join(found)
    )


def test_the_kind_test_counter_finds_each_form(tmp_path):
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "inside.py").write_text('if op.kind == "threshold": pass\n')
    (tmp_path / "m.py").write_text(
        'POOLS = ("maxpool", "avgpool")\n'
        'a = op.kind == "threshold"\n'
        'b = kind in ("affine", "add")\n'
        "c = op.kind in POOLS\n"
        "d = nxt.kind != other.kind\n"
        'e = op.kind.endswith("dense")\n'
        'f = x.dtype.kind in "iu"\n'  # not an op
        'g = t == "u8"\n'  # not an op
        "h = KERNELS[op.kind]\n"  # dispatch, not a test
    )
    assert op_kind_tests(tmp_path) == [f"{tmp_path.name}/m.py:{n}" for n in (2, 3, 4, 5, 6)]


def test_validate_uses_each_ops_shape_rule():
    rng = np.random.default_rng(0)
    ops = [
        Op(
            "input_conv2d", ["input"], "c", {"stride": (2, 1), "padding": 1}, {"weight": rng.random((4, 1, 3, 3)) < 0.5}
        ),
        Op("avgpool", ["c"], "p", {"kernel": 2, "stride": 2}),
        Op("flatten", ["p"], "f"),
        Op("argmax", ["f"], "y"),
    ]
    graph = Graph((1, 9, 6), ops)
    # (9 + 2 - 3) // 2 + 1 = 5 rows, (6 + 2 - 3) // 1 + 1 = 6 columns; pooled by 2: 2 x 3
    assert graph.types["c"] == ("i32", (4, 5, 6)) and graph.types["p"] == ("i32", (4, 2, 3))
    assert graph.types["f"] == ("i32", (24,)) and graph.types["y"] == ("index", ())
