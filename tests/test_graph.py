"""The graph format: type inference, file round trip, and one clear error per bad file."""

import numpy as np
import pytest
from helpers.graphfiles import rewrite_graph
from safetensors.numpy import load_file, save_file

from bnnkit.errors import BnnkitError
from bnnkit.graph import FORMAT_VERSION, INT32_MIN, Graph, Op
from bnnkit.runtime import predict

rng = np.random.default_rng(0)


def small_graph() -> Graph:
    ops = [
        Op("input_conv2d", ["input"], "a", {"stride": 1, "padding": 1}, {"weight": rng.random((4, 1, 3, 3)) < 0.5}),
        Op(
            "threshold",
            ["a"],
            "b",
            {},
            {"thresh": np.array([0, 10, -10, INT32_MIN], np.int32), "flip": np.array([0, 1, 0, 1], bool)},
        ),
        Op("maxpool", ["b"], "c", {"kernel": 2, "stride": 2}, {"min_channels": np.array([0, 1, 0, 1], bool)}),
        Op(
            "binary_conv2d",
            ["c"],
            "d",
            {"stride": (2, 1), "padding": (1, 0), "pad": "zero"},
            {"weight": rng.random((5, 4, 3, 3)) < 0.5},
        ),
        Op("flatten", ["d"], "e"),
        Op(
            "affine",
            ["e"],
            "f",
            {},
            {"scale": rng.random(30).astype(np.float32), "bias": rng.random(30).astype(np.float32)},
        ),
        Op("argmax", ["f"], "label"),
    ]
    return Graph((1, 9, 10), ops, meta={"dataset": "digits"})


def test_shapes_are_inferred():
    g = small_graph()
    assert g.types["a"] == ("i32", (4, 9, 10))
    assert g.types["c"] == ("bits", (4, 4, 5))
    assert g.types["d"] == ("i32", (5, 2, 3))
    assert g.types["e"] == ("i32", (30,)) and g.num_classes == 30 and g.scores == "f"


def test_file_round_trip_is_identical(tmp_path):
    g = small_graph()
    g.save(tmp_path / "m.bnn")
    back = Graph.load(tmp_path / "m.bnn")
    assert [(o.kind, o.inputs, o.output, o.attrs) for o in back.ops] == [
        (o.kind, o.inputs, o.output, {k: (tuple(v) if isinstance(v, list) else v) for k, v in o.attrs.items()})
        for o in g.ops
    ]
    for a, b in zip(g.ops, back.ops):
        assert a.params.keys() == b.params.keys()
        for k in a.params:
            assert a.params[k].dtype == b.params[k].dtype or a.params[k].dtype == bool
            np.testing.assert_array_equal(a.params[k], b.params[k])
    x = rng.integers(0, 256, (6, 1, 9, 10), dtype=np.uint8)
    for got, want in zip(predict(back, x), predict(g, x)):
        np.testing.assert_array_equal(got, want)
    assert back.meta == g.meta


def test_weights_are_packed_bits(tmp_path):
    g = small_graph()
    g.save(tmp_path / "m.bnn")
    tensors = load_file(tmp_path / "m.bnn")
    w = tensors["op003.weight"]
    assert w.dtype == np.uint8 and w.shape == (5, 5)  # 36 bits per output channel -> 5 bytes
    first = g.ops[3].params["weight"][0].reshape(-1)
    assert int(w[0, 0]) == sum(int(b) << i for i, b in enumerate(first[:8]))  # bit 1 = +1, LSB first


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.bnn"
    small_graph().save(path)
    return path


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[:-40])
    with pytest.raises(BnnkitError, match="truncated or not safetensors"):
        Graph.load(saved)


def test_tampered_tensor(saved):
    tensors = load_file(saved)
    tensors["op001.thresh"] = tensors["op001.thresh"] + 1
    rewrite_graph(saved, tensors)
    with pytest.raises(BnnkitError, match="SHA-256"):
        Graph.load(saved)


def test_wrong_version(saved):
    rewrite_graph(saved, header_change=lambda h: h.update(version=FORMAT_VERSION + 1))
    with pytest.raises(BnnkitError, match=f"version {FORMAT_VERSION + 1}, .*re-export"):
        Graph.load(saved)


def test_unknown_op(saved):
    rewrite_graph(saved, header_change=lambda h: h["ops"][4].update(kind="softmax"))
    with pytest.raises(BnnkitError, match='header field ops\\[4\\]\\.kind: unknown op "softmax"'):
        Graph.load(saved)


def test_not_a_graph(tmp_path):
    save_file({"x": np.zeros(3, np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(BnnkitError, match="without a bnnkit graph header"):
        Graph.load(tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ops: ops.pop(), "must end with an argmax"),
        (
            lambda ops: ops[3].attrs.update(pad="reflect"),
            'attribute pad: expected one of zero, minus_one, plus_one, got "reflect"',
        ),
        (lambda ops: ops[1].params.update(thresh=np.zeros(3, np.int32)), "thresh has shape"),
        (lambda ops: ops[4].inputs.__setitem__(0, "nowhere"), "not produced by an earlier op"),
        (lambda ops: ops[5].__setattr__("inputs", ["c"]), "input 'c' is bits, expected u8/i32/f32"),
        (lambda ops: ops[3].params.update(weight=np.ones((5, 3, 3, 3), bool)), "does not match input"),
        (lambda ops: ops[1].params.update(flip=np.zeros(4, np.int8)), "flip must be a bool array"),
        (lambda ops: ops[5].params.update(scale=np.full(30, np.inf, np.float32)), "non-finite"),
        (lambda ops: ops[5].params.update(bias=np.zeros(30)), "bias must be a float32 array"),
    ],
)
def test_invalid_graphs_are_refused(change, message):
    ops = small_graph().ops
    change(ops)
    with pytest.raises(BnnkitError, match=message):
        Graph((1, 9, 10), ops)
