"""The SAT encoding of ``bnnkit verify`` against the NumPy reference: activations of any
model equal numpy_ref's on the model's image, and robustness equals brute force over
every image in the ball on graphs small enough to enumerate."""

import itertools
import json
import sys

import numpy as np
import pytest

from bnnkit.analysis.robustness import NATIVE_SOLVERS, Encoding, _solve, label_of, verify
from bnnkit.cli import main
from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, Graph, Op
from bnnkit.runtime.numpy_ref import KERNELS, execute

_EXTRA = 'bnnkit verify is optional: pip install -c constraints.txt -e ".[verify]"'
PHP = pytest.importorskip("pysat.examples.genhard", reason=_EXTRA).PHP
Solver = pytest.importorskip("pysat.solvers", reason=_EXTRA).Solver

SHAPE = (1, 2, 3)  # six pixels: every image of a radius-2 ball is 5**6 = 15625 images
# the default (pure CNF), another CNF encoding, and native cardinality constraints on every solver that has them
CHOICES = [
    ("glucose4", "seqcounter"),
    ("glucose4", "kmtotalizer"),
    ("minicard", "native"),
    ("gluecard3", "native"),
    ("gluecard4", "native"),
]


def ball(x0: np.ndarray, eps: int) -> np.ndarray:
    """Every uint8 image within L∞ distance eps of x0."""
    ranges = [range(max(0, v - eps), min(255, v + eps) + 1) for v in x0.reshape(-1).tolist()]
    return np.array(list(itertools.product(*ranges)), np.uint8).reshape(-1, *x0.shape)


def random_graph(seed: int, x: np.ndarray, conv: bool) -> Graph:
    """A small graph with thresholds drawn from the accumulators the images ``x`` produce,
    so that binary activations really change inside the ball (and ties occur)."""
    rng = np.random.default_rng(seed)
    ops: list[Op] = []
    env = {"input": x}

    def op(kind, src, attrs=None, params=None):
        o = Op(kind, [src], f"t{len(ops)}", attrs or {}, params or {})
        env[o.output] = KERNELS[kind](o, env[src])
        ops.append(o)
        return o.output

    def bits(*shape):
        return rng.random(shape) < 0.5

    def threshold(src):
        acc = np.moveaxis(env[src], 1, 0).reshape(env[src].shape[1], -1)
        thresh = np.array([rng.choice(row) for row in acc], np.int32)
        thresh[rng.random(len(thresh)) < 0.15] = INT32_MIN
        return op("threshold", src, params={"thresh": thresh, "flip": bits(len(thresh))})

    if conv:
        t = threshold(op("input_conv2d", "input", {"stride": 1, "padding": 1}, {"weight": bits(3, 1, 2, 2)}))
        t = op("maxpool", t, {"kernel": 2, "stride": 1}, {"min_channels": bits(3)})
        pad = str(rng.choice(["zero", "minus_one", "plus_one"]))
        t = threshold(
            op("binary_conv2d", t, {"stride": (1, 2), "padding": 1, "pad": pad}, {"weight": bits(4, 3, 2, 2)})
        )
        t = op("flatten", t)
    else:
        t = threshold(op("input_dense", op("flatten", "input"), params={"weight": bits(5, 6)}))
    t = op("binary_dense", t, params={"weight": bits(4, env[t].shape[1])})
    if rng.random() < 0.7:  # otherwise the argmax reads the integer sums
        t = op(
            "affine",
            t,
            params={"scale": rng.normal(0, 1, 4).astype(np.float32), "bias": rng.normal(0, 2, 4).astype(np.float32)},
        )
    op("argmax", t)
    return Graph(SHAPE, ops)


def cases():
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        x0 = rng.integers(0, 256, SHAPE, dtype=np.uint8)
        x0.reshape(-1)[:2] = [0, 255]  # the ball is clipped to 0..255
        yield seed, x0, int(rng.integers(1, 3))


@pytest.mark.parametrize("solver, encoding", CHOICES)
@pytest.mark.parametrize("seed, x0, eps", list(cases()))
def test_robust_iff_no_image_in_the_ball_changes_the_label(seed, x0, eps, solver, encoding):
    images = ball(x0, eps)
    graph = random_graph(seed, images, conv=seed % 2 == 0)
    labels = execute(graph, images)[graph.ops[-1].output]
    assert verify(graph, x0, 0, solver=solver, encoding=encoding).status == "robust"
    result = verify(graph, x0, eps, solver=solver, encoding=encoding)
    assert result.label == label_of(graph, x0)
    assert (result.status == "robust") == bool(np.all(labels == result.label))
    if result.status == "counterexample":
        x = result.counterexample
        assert x.dtype == np.uint8 and x.shape == SHAPE
        assert np.abs(x.astype(int) - x0).max() == result.linf <= eps
        assert label_of(graph, x) == result.new_label != result.label


@pytest.mark.parametrize("solver, encoding", [CHOICES[0], CHOICES[2]])
@pytest.mark.parametrize("seed", range(6))
def test_every_model_reproduces_numpy_ref_activations(seed, solver, encoding):
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    eps = 3
    images = ball(x0, eps)
    graph = random_graph(seed, images, conv=seed % 2 == 0)
    enc = Encoding(graph, x0, eps, solver=solver, encoding=encoding)
    try:
        px = enc.env[graph.input]
        for target in images[rng.choice(len(images), 8, replace=False)]:
            # pin the pixels to ``target`` through their unary bits; the rest must follow
            steps = target.reshape(-1).astype(int) - px.lo
            pins = [int(u) if j < s else -int(u) for row, s in zip(px.unary, steps) for j, u in enumerate(row) if u]
            assert enc.solver.solve(assumptions=pins)
            model = enc.solver.get_model()
            assert np.array_equal(enc.image(model), target)
            ref = execute(graph, target[None], keep=True)
            for name, lits in enc.bits().items():
                assert np.array_equal(enc.values(model, lits), ref[name][0]), name
    finally:
        enc.solver.delete()


@pytest.mark.parametrize("solver", NATIVE_SOLVERS)
def test_native_atmost_counts_repeated_literals(solver):
    """The native threshold encoding weights a literal by repeating it: every model the
    solver enumerates must be one brute force accepts, and every such one must appear."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        nv = int(rng.integers(2, 6))
        cons = []
        for _ in range(int(rng.integers(1, 4))):
            size = int(rng.integers(1, 9))  # more literals than variables: repeats, and both signs of one
            lits = (rng.integers(1, nv + 1, size) * rng.choice([-1, 1], size)).tolist()
            cons.append((lits, int(rng.integers(0, len(lits) + 1))))
        truth = np.array(list(itertools.product([False, True], repeat=nv)))  # (2**nv, nv)
        ok = np.ones(len(truth), bool)
        for lits, k in cons:
            ok &= sum(truth[:, abs(lit) - 1] == (lit > 0) for lit in lits) <= k
        with Solver(name=solver) as s:
            s.add_clause([v for v in range(1, nv + 1)] + [-v for v in range(1, nv + 1)])  # every variable appears
            for lits, k in cons:
                s.add_atmost(lits, k)
            models = {tuple(np.array(m) > 0) for m in s.enum_models()}
        assert models == {tuple(t) for t in truth[ok]}, cons


@pytest.mark.parametrize("solver", NATIVE_SOLVERS)
def test_native_solvers_stop_on_the_time_out(solver):
    with Solver(name=solver, bootstrap_with=PHP(11).clauses) as s:  # far too hard to finish in 0.2 s
        assert _solve(s, 0.2) is None


def test_the_cases_have_both_answers():
    robust = []
    for seed, x0, eps in cases():
        images = ball(x0, eps)
        graph = random_graph(seed, images, conv=seed % 2 == 0)
        robust.append(bool(np.all(execute(graph, images)[graph.ops[-1].output] == label_of(graph, x0))))
    assert any(robust) and not all(robust), robust


def test_clear_errors():
    x0 = np.zeros(SHAPE, np.uint8)
    graph = random_graph(0, ball(x0, 1), conv=True)
    with pytest.raises(BnnkitError, match="radius must be an integer >= 0"):
        verify(graph, x0, -1)
    with pytest.raises(BnnkitError, match="uint8"):
        verify(graph, x0.astype(np.int32), 1)
    ops = [
        Op("input_conv2d", ["input"], "c", {"stride": 1, "padding": 0}, {"weight": np.ones((2, 1, 2, 2), bool)}),
        Op("avgpool", ["c"], "p", {"kernel": 1, "stride": 1}),
        Op("flatten", ["p"], "f"),
        Op("argmax", ["f"], "y"),
    ]
    with pytest.raises(BnnkitError, match=r"op 1 \(avgpool\)"):
        verify(Graph(SHAPE, ops), x0, 1)
    with pytest.raises(BnnkitError, match="native encoding needs a solver with cardinality constraints"):
        verify(graph, x0, 1, solver="glucose4", encoding="native")
    with pytest.raises(BnnkitError, match="unknown cardinality encoding 'bdd'"):
        verify(graph, x0, 1, encoding="bdd")
    with pytest.raises(BnnkitError, match="unknown SAT solver 'nosuch'"):
        verify(graph, x0, 1, solver="nosuch", encoding="seqcounter")


def test_cli_json_on_a_digits_graph(tmp_path, capsys):
    from bnnkit.data import load_dataset

    x = load_dataset("digits", "test").x[:40]
    rng = np.random.default_rng(3)
    acc = KERNELS["input_conv2d"](
        Op(
            "input_conv2d",
            ["input"],
            "c",
            {"stride": 2, "padding": 0},
            w1 := {"weight": rng.random((4, 1, 3, 3)) < 0.5},
        ),
        x,
    )
    t1 = np.median(np.moveaxis(acc, 1, 0).reshape(4, -1), axis=1).astype(np.int32)
    ops = [
        Op("input_conv2d", ["input"], "c", {"stride": 2, "padding": 0}, w1),
        Op("threshold", ["c"], "s", {}, {"thresh": t1, "flip": np.zeros(4, bool)}),
        Op("flatten", ["s"], "f"),
        Op("binary_dense", ["f"], "d", {}, {"weight": rng.random((10, 36)) < 0.5}),
        Op("argmax", ["d"], "y"),
    ]
    path = tmp_path / "g.bnn"
    Graph((1, 8, 8), ops, meta={"dataset": "digits"}).save(path)
    assert (
        main(
            [
                "verify",
                str(path),
                "--image",
                "1",
                "--images",
                "2",
                "--eps",
                "0",
                "1",
                "3",
                "--json",
                "--save",
                str(tmp_path / "cex"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    graph = Graph.load(path)
    assert [(q["image"], q["eps"]) for q in out["queries"]] == [(i, e) for i in (1, 2) for e in (0, 1, 3)]
    for q in out["queries"]:
        assert q["status"] == verify(graph, x[q["image"]], q["eps"]).status
        if q["status"] == "counterexample":
            saved = np.load(tmp_path / "cex" / f"image{q['image']}_eps{q['eps']}.npy")
            assert label_of(graph, saved) == q["new_label"] != q["label"]
            assert np.abs(saved.astype(int) - x[q["image"]]).max() == q["linf"] <= q["eps"]
    assert out["summary"]["0"]["robust"] == 2 and out["summary"]["3"]["counterexample"] >= 1
    assert sum(out["summary"]["3"][s] for s in ("robust", "counterexample", "timeout")) == 2
    assert (
        main(
            [
                "verify",
                str(path),
                "--image",
                "1",
                "--images",
                "2",
                "--eps",
                "0",
                "1",
                "3",
                "--json",
                "--solver",
                "minicard",
                "--encoding",
                "native",
            ]
        )
        == 0
    )
    native = json.loads(capsys.readouterr().out)
    assert (native["solver"], native["encoding"]) == ("minicard", "native")
    assert [q["status"] for q in native["queries"]] == [q["status"] for q in out["queries"]]
    assert main(["verify", str(path), "--image", "1", "--encoding", "native"]) == 2
    assert "native encoding needs a solver" in capsys.readouterr().err
    assert main(["verify", str(path), "--image", "354", "--images", "2"]) == 2
    assert "test set has 355" in capsys.readouterr().err


def test_missing_pysat_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "bnnkit.analysis.robustness")
    monkeypatch.setitem(sys.modules, "pysat", None)  # what an install without the extra looks like to import
    monkeypatch.setitem(sys.modules, "pysat.card", None)
    assert main(["verify", str(tmp_path / "m.bnn"), "--image", "0"]) == 2
    assert capsys.readouterr().err == 'error: bnnkit verify needs PySAT: pip install "bnnkit[verify]"\n'
