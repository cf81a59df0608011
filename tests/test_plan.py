"""The memory plan: sizes in the C layout, fusion, and an arena in which no two buffers
that are needed at the same time overlap (checked by brute force over the steps)."""

import numpy as np
from helpers.graphgen import SETTINGS, ebnn16, ebnn_cnn, examples, graph_cases, narrow_case_from_seed
from hypothesis import given, settings

from bnnkit.graph import OPS, Family, Graph, Op
from bnnkit.graph.plan import plan_memory
from bnnkit.runtime.c import pack_words


def bits_bytes(c: int, h: int, w: int) -> tuple[int, int]:
    """A bits map's bytes word-padded (each pixel packed on its own) and bit-dense (the HWC
    bits packed as one vector), by packing such maps."""
    return pack_words(np.zeros((h * w, c), bool)).nbytes, pack_words(np.zeros(h * w * c, bool)).nbytes


def c_bytes(graph: Graph, name: str, layout_of: dict) -> int:
    kind, shape = graph.types[name]
    c, h, w = layout_of[name]
    if kind == "bits":  # the planner's rule: bit-dense where C < 32 and that is smaller
        padded, dense = bits_bytes(c, h, w)
        return dense if c < 32 and dense < padded else padded
    return {"u8": c * h * w}.get(kind, 4 * int(np.prod(shape)))


def storage(graph: Graph) -> dict[str, str]:
    """Tensor -> the tensor whose memory it is: a flatten is a view of what it flattens."""
    root = {graph.input: graph.input}
    for op in graph.ops:
        root[op.output] = root[op.inputs[0]] if op.kind == "flatten" else op.output
    return root


@settings(SETTINGS, max_examples=examples(300))
@given(graph_cases())
def test_live_buffers_never_overlap(case):
    graph = case.graph
    plan = plan_memory(graph)
    root = storage(graph)
    # who writes and who reads each buffer, step by step, from the ops each step runs
    writer, readers = {graph.input: -1}, {}
    for s, step in enumerate(plan.steps):
        inside = {graph.ops[i].output for i in step.ops}
        for i in step.ops:
            for name in graph.ops[i].inputs:
                if name not in inside:
                    readers.setdefault(root[name], set()).add(s)
        last = graph.ops[step.ops[-1]]
        if last.kind != "argmax":
            writer[last.output] = s
    assert set(writer) == plan.materialized
    for s in range(len(plan.steps)):
        live = [b for b in writer if writer[b] <= s <= max(readers.get(b, set()) | {writer[b]})]
        spans = sorted((plan.offsets[b], plan.offsets[b] + plan.tensor_bytes[b], b) for b in live)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, f"step {s}: {a} and {b} overlap"
    for b, offset in plan.offsets.items():
        assert offset % 4 == 0 and offset + plan.tensor_bytes[b] <= plan.arena_bytes

    # every tensor in its own buffer, no fusion, views free
    naive = sum(c_bytes(graph, op.output, plan.layout) for op in graph.ops if op.kind not in ("flatten", "argmax"))
    assert plan.naive_bytes == plan.input_bytes + naive
    assert plan.input_bytes == int(np.prod(graph.input_shape))
    assert plan.peak_bytes == plan.arena_bytes <= plan.naive_bytes + 3  # the input's slot is whole words
    assert len(plan.live_bytes) == len(graph.ops) and max(plan.live_bytes) <= plan.peak_bytes
    for name in plan.materialized:
        assert plan.tensor_bytes[name] == c_bytes(graph, name, plan.layout)


def test_narrow_maps_are_stored_bit_dense_where_that_saves_bytes():
    seen = set()
    for seed in range(100):
        graph = narrow_case_from_seed(seed).graph
        plan = plan_memory(graph)
        for name, (kind, _) in graph.types.items():
            if kind != "bits":
                continue
            padded, dense = bits_bytes(*plan.layout[name])
            assert (name in plan.dense) == (plan.layout[name][0] < 32 and dense < padded), (seed, name)
            assert plan.tensor_bytes[name] == min(padded, dense), (seed, name)
            seen.add(name in plan.dense)
    assert seen == {True, False}  # both layouts were chosen


def test_ebnn16_arena_is_what_its_bit_dense_maps_need():
    plan = plan_memory(ebnn16(np.random.default_rng(0)))
    # of the stored maps, the 16-channel one; the 32-channel one is whole words either way
    assert plan.dense & plan.materialized == {"p1"}
    # the second step reads the 16-channel 14x14 map and writes the 32-channel 7x7 one: 3,136 + 1,568 bits
    assert plan.tensor_bytes["p1"] == 16 * 14 * 14 // 8 and plan.tensor_bytes["p2"] == 32 * 7 * 7 // 8
    assert max(plan.live_bytes[3:]) == 392 + 196
    # the first reads the image from its slot in the arena while it writes p1: the arena's peak
    assert plan.arena_bytes == 784 + 392 and plan.offsets["input"] + 784 <= plan.arena_bytes


@settings(SETTINGS, max_examples=examples(300))
@given(graph_cases())
def test_a_conv_read_only_by_a_threshold_is_never_stored(case):
    graph, plan = case.graph, plan_memory(case.graph)
    users = {}
    for op in graph.ops:
        for name in op.inputs:
            users.setdefault(name, []).append(op.kind)
    for op in graph.ops:
        if OPS[op.kind].family is Family.PRODUCER:
            fused = users.get(op.output) == ["threshold"]
            assert (op.output not in plan.materialized) == fused, (op.kind, users.get(op.output))


def test_ebnn_cnn_keeps_only_binary_maps_and_two_at_a_time():
    graph = ebnn_cnn(np.random.default_rng(0))
    plan = plan_memory(graph)
    assert plan.materialized == {"input", "c1s", "p2", "c3s", "p4", "d1s", "d2", "s"}
    assert [s.ops for s in plan.steps] == [(0, 1), (2, 3, 4), (5, 6), (7, 8, 9), (11, 12), (13,), (14,), (15,)]
    sizes = {"c1s": 28 * 28 * 4, "p2": 14 * 14 * 4, "c3s": 14 * 14 * 8, "p4": 7 * 7 * 8, "d1s": 32, "d2": 40, "s": 40}
    assert {k: plan.tensor_bytes[k] for k in sizes} == sizes
    # the largest step holds the 32-channel 28x28 map and its pooled successor, nothing else;
    # the first, the image and the 28x28 map, as much: the input's slot costs nothing here
    assert plan.arena_bytes == 28 * 28 * 4 + 14 * 14 * 4 == 784 + 28 * 28 * 4
    assert plan.peak_bytes == plan.arena_bytes
    # per op, while its step runs: the input is dead once conv 1 ran; each step holds its input and output
    assert plan.live_bytes == (3920,) * 5 + (784 + 1568,) * 2 + (1568 + 392,) * 3 + (392, 424, 424, 72, 80, 40)
    i32_maps = 4 * (32 * 28 * 28 * 2 + 64 * 14 * 14 * 2 + 256 + 10)
    bit_maps = 3136 * 2 + 784 + 1568 * 2 + 392 + 32
    assert plan.naive_bytes == 784 + i32_maps + bit_maps + 40


def test_flatten_of_bits_keeps_the_map_layout_and_costs_nothing():
    rng = np.random.default_rng(0)
    ops = [
        Op("input_conv2d", ["input"], "c", {"stride": 1, "padding": 0}, {"weight": rng.random((40, 1, 1, 1)) < 0.5}),
        Op("threshold", ["c"], "s", {}, {"thresh": np.zeros(40, np.int32), "flip": np.zeros(40, bool)}),
        Op("avgpool", ["c"], "a", {"kernel": 1, "stride": 1}),  # a second reader: c must be stored
        Op("flatten", ["s"], "f"),
        Op("binary_dense", ["f"], "d", {}, {"weight": rng.random((3, 40 * 5 * 6)) < 0.5}),
        Op("argmax", ["d"], "y"),
    ]
    plan = plan_memory(Graph((1, 5, 6), ops))
    assert plan.layout["f"] == plan.layout["s"] == (40, 5, 6)
    assert plan.tensor_bytes["s"] == plan.tensor_bytes["f"] == 5 * 6 * 2 * 4
    assert plan.buffer_of["f"] == "s" and "f" not in plan.materialized
    assert plan.tensor_bytes["c"] == 40 * 30 * 4 and "c" in plan.materialized
    # the dead avgpool output is stored at its step, and only there
    assert plan.lifetimes["a"] == (2, 2)
    assert plan.naive_bytes == 30 + 4800 + 240 + 4800 + 12
