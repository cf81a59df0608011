"""The fixed-point real-valued stream (q32): its ops against an independent integer reference and
hand-worked cases, the NumPy spec against the host C (200 random graphs) and the Cortex-M3, the
graph rules that keep every int64 sum exact, and the converter from a float32 graph."""

import shutil

import numpy as np
import pytest
from helpers.graphgen import case_from_seed, fixed_case_from_seed

from bnnkit.errors import BnnkitError
from bnnkit.graph import Q32_MAX, Graph, Op, pair
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.cortex_m import build_mcus
from bnnkit.runtime.host import build_hosts

needs_mcu = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("arm-none-eabi-gcc", "qemu-system-arm")),
    reason="gcc-arm-none-eabi and qemu-system-arm are not installed",
)

# --- an independent reference: Python integers (object arrays), floor division ------------------


def ref_rnd(v: np.ndarray, s) -> np.ndarray:
    """floor(v / 2**s + 1/2) in exact integers."""
    return (2 * v + 2**s) // 2 ** (s + 1)


def ref_sat(v: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(v, -Q32_MAX), Q32_MAX)


def per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    return np.array([int(v) for v in values], dtype=object).reshape((1, -1) + (1,) * (ndim - 2))


def ref_sum(x: np.ndarray, op: Op) -> np.ndarray:
    w = op.params["weight"].astype(object)
    if w.ndim == 2:
        return x @ w.T
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), object)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    acc = np.zeros((n, o, ho, wo), object)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            acc += np.einsum("nchw,oc->nohw", tap, w[:, :, i, j])
    return acc


def ref_kernel(op: Op, graph: Graph, *args: np.ndarray) -> np.ndarray:
    """A q32 op in exact integers; every other op by the spec's own kernel."""
    a = args[0].astype(object) if args[0].dtype != bool else args[0]
    p = {k: per_channel(v, a.ndim) for k, v in op.params.items() if k != "weight"}
    if op.kind == "affine_q":
        return ref_sat(np.vectorize(ref_rnd)(a * p["mult"], p["shift"]) + p["bias"])
    if op.kind == "add_q":
        return ref_sat(a + args[1].astype(object))
    if op.kind == "prelu_q":
        return np.where(a >= 0, a, ref_sat(np.vectorize(ref_rnd)(a * p["mult"], p["shift"])))
    if op.kind in ("conv2d_q", "dense_q"):
        acc = ref_sum(a, op)
        p = {k: per_channel(v, acc.ndim) for k, v in op.params.items() if k != "weight"}
        return ref_sat(np.vectorize(ref_rnd)(acc, p["shift"]) + p["bias"])
    if op.kind == "meanpool" and graph.types[op.inputs[0]][0] == "q32":
        (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
        ho, wo = (a.shape[2] - kh) // sh + 1, (a.shape[3] - kw) // sw + 1
        s = sum(a[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                for i in range(kh) for j in range(kw))  # fmt: skip
        return (2 * s + kh * kw) // (2 * kh * kw)
    return numpy_ref.KERNELS[op.kind](op, *args)


def ref_execute(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    env = {graph.input: x}
    for op in graph.ops:
        out = ref_kernel(op, graph, *(env[n] for n in op.inputs))
        env[op.output] = out.astype(np.int32) if out.dtype == object else out
    return env


CASES = [fixed_case_from_seed(seed) for seed in range(200)]
Q_KINDS = {"affine_q", "add_q", "prelu_q", "conv2d_q", "dense_q"}


def test_the_spec_equals_an_independent_integer_reference_on_every_tensor():
    kinds = set()
    for case in CASES[:80]:
        spec = numpy_ref.execute(case.graph, case.x, keep=True)
        ref = ref_execute(case.graph, case.x)
        for op in case.graph.ops:
            kinds.add((op.kind, case.graph.types[op.inputs[0]][0]))
            assert np.array_equal(spec[op.output], ref[op.output]), f"seed {case.seed}: {op.kind}"
    for want in ("affine_q", "add_q", "prelu_q", "conv2d_q", "dense_q", "meanpool", "maxpool", "threshold"):
        assert (want, "q32") in kinds, want
    assert {("affine_q", "i32"), ("conv2d_q", "u8")} <= kinds
    # both signs reach the stream and some values saturate
    values = np.concatenate([numpy_ref.execute(c.graph, c.x, keep=True)[op.output].ravel() for c in CASES[:80]
                             for op in c.graph.ops if c.graph.types[op.output][0] == "q32"])  # fmt: skip
    assert (values < 0).mean() > 0.2 and (np.abs(values) == Q32_MAX).any() and values.min() >= -Q32_MAX


# --- hand-worked cases: rnd(v, s) = (v + (2**s >> 1)) >> s, halves up; sat to +-(2**31 - 1) --------


def stream_graph(values: list[int], *ops: Op, n_out: int | None = None, minus: list[int] | None = None) -> Graph:
    """A 1x1x1 image whose zero-weight ``dense_q`` puts ``values`` (its bias) on the q32 stream as
    tensor ``v``, then ``ops`` to ``y`` (``n_out`` values, default as many), then an identity
    ``dense_q``: the scores are ``y``, or ``y - minus`` (0 where y is ``minus``: a C score is a
    float32, exact only below 2**24)."""
    n, m = len(values), n_out or len(values)
    zero = {"weight": np.zeros((n, 1), np.int32), "bias": np.array(values, np.int32), "shift": np.zeros(n, np.int32)}
    offset = -np.array(minus or [0] * m, np.int32)
    eye = {"weight": np.eye(m, dtype=np.int32), "bias": offset, "shift": np.zeros(m, np.int32)}
    return Graph((1, 1, 1), [Op("flatten", ["input"], "f"), Op("dense_q", ["f"], "v", {}, zero), *ops,
                             Op("dense_q", ["y"], "s", {}, eye), Op("argmax", ["s"], "label")])  # fmt: skip


def scale_op(kind: str, n: int, mult: int, shift: int, bias: int | None = None) -> Op:
    params = {"mult": np.full(n, mult, np.int32), "shift": np.full(n, shift, np.int32)}
    if bias is not None:
        params["bias"] = np.full(n, bias, np.int32)
    return Op(kind, ["v"], "y", {}, params)


Q = Q32_MAX
HALVES = [-3, -2, -1, 0, 1, 2, 3]
EDGES = [
    # affine_q: sat(rnd(v * mult, shift) + bias)
    (HALVES, "affine_q", 1, 1, 0, [-1, -1, 0, 0, 1, 1, 2]),
    (HALVES, "affine_q", 3, 2, 10, [8, 9, 9, 10, 11, 12, 12]),
    ([Q, -Q, 1, -1, 2, -2], "affine_q", Q, 0, 0, [Q, -Q, Q, -Q, Q, -Q]),
    ([Q, -Q], "affine_q", 1, 0, 1, [Q, -Q + 1]),
    ([Q, -Q], "affine_q", 1, 0, -1, [Q - 1, -Q]),
    ([-Q, Q, -Q], "affine_q", -Q, 62, 0, [1, -1, 1]),  # (2**31 - 1)**2 + 2**61 is 1.5 * 2**62 - 2**32 + 1
    ([Q, -Q], "affine_q", -Q, 0, 0, [-Q, Q]),
    # prelu_q: v where v >= 0, else sat(rnd(v * mult, shift))
    ([-3, -1, 0, 5, -Q], "prelu_q", 1, 1, None, [-1, 0, 0, 5, -(2**30) + 1]),
    ([-2, -Q, 7], "prelu_q", -3, 0, None, [6, Q, 7]),
    ([-5, -6, -7], "prelu_q", 0, 0, None, [0, 0, 0]),
]  # fmt: skip


@pytest.mark.parametrize("values, kind, mult, shift, bias, want", EDGES)
def test_fixed_point_ops_round_half_up_and_saturate(values, kind, mult, shift, bias, want):
    graph = stream_graph(values, scale_op(kind, len(values), mult, shift, bias))
    scores, _ = numpy_ref.predict(graph, np.zeros((1, 1, 1, 1), np.uint8))
    assert scores[0].tolist() == want


def test_the_int64_sum_reaches_its_bound_exactly():
    # fan-in 2 of -(2**31 - 1) * 2**30: acc = -2**62 + 2**31, the bound; rnd(acc, 62) = floor(-0.5 + 2**-31) = -1
    w = np.full((1, 2), 2**30, np.int32)
    params = {"weight": w, "bias": np.zeros(1, np.int32), "shift": np.array([62], np.int32)}
    graph = stream_graph([-Q, -Q], Op("dense_q", ["v"], "y", {}, params), n_out=1)
    assert numpy_ref.predict(graph, np.zeros((1, 1, 1, 1), np.uint8))[0][0].tolist() == [-1]
    with pytest.raises(BnnkitError, match="fan-in 2 and weights up to 1073741825 could overflow the int64 sum"):
        stream_graph(
            [-Q, -Q], Op("dense_q", ["v"], "y", {}, {**params, "weight": w + np.array([[0, 1]], np.int32)}), n_out=1
        )


def meanpool_graph() -> Graph:
    """Each row of a (1, 7, 4) image, minus 1, as q32 (a 1x1 conv2d_q), then its mean."""
    params = {
        "weight": np.ones((1, 1, 1, 1), np.int32),
        "bias": np.array([-1], np.int32),
        "shift": np.zeros(1, np.int32),
    }
    return Graph((1, 7, 4), [
        Op("conv2d_q", ["input"], "v", {"stride": 1, "padding": 0}, params),
        Op("meanpool", ["v"], "m", {"kernel": (1, 4), "stride": (1, 4)}),
        Op("flatten", ["m"], "y"), Op("argmax", ["y"], "label"),
    ])  # fmt: skip


# rows of pixels -> the mean of (pixel - 1), floor((2s + 4) / 8): halves go up, also below zero
MEAN_ROWS = [([0, 0, 0, 2], 0), ([0, 0, 0, 1], -1), ([0, 0, 1, 1], 0), ([0, 0, 0, 0], -1), ([4, 1, 1, 1], 1),
             ([3, 1, 1, 1], 1), ([2, 1, 1, 1], 0)]  # fmt: skip


def test_the_hand_cases_hold_in_the_spec():
    for graph, x, want in edge_graphs():
        assert numpy_ref.predict(graph, x)[0][0].tolist() == want


def test_the_q32_mean_rounds_half_up():
    x = np.array([r for r, _ in MEAN_ROWS], np.uint8)[None, None]
    assert numpy_ref.predict(meanpool_graph(), x)[0][0].tolist() == [m for _, m in MEAN_ROWS]


def edge_graphs() -> list[tuple[Graph, np.ndarray, list[int]]]:
    """Every hand-worked case as (graph, image, the scores it must give): the stream's cases less
    their expected values, so that every score must be exactly 0."""
    zero = np.zeros((1, 1, 1, 1), np.uint8)
    cases = [(stream_graph(v, scale_op(k, len(v), m, s, b), minus=want), zero, [0] * len(want))
             for v, k, m, s, b, want in EDGES]  # fmt: skip
    bound = {
        "weight": np.full((1, 2), 2**30, np.int32),
        "bias": np.zeros(1, np.int32),
        "shift": np.array([62], np.int32),
    }
    cases.append((stream_graph([-Q, -Q], Op("dense_q", ["v"], "y", {}, bound), n_out=1), zero, [-1]))
    cases.append(
        (meanpool_graph(), np.array([r for r, _ in MEAN_ROWS], np.uint8)[None, None], [m for _, m in MEAN_ROWS])
    )
    return cases


# --- the graph rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"shift": np.full(2, 63, np.int32)}, "shift must lie in 0..62"),
        ({"shift": np.full(2, -1, np.int32)}, "shift must lie in 0..62"),
        ({"bias": np.zeros(3, np.int32)}, "bias has shape (3,), expected (2,)"),
        ({"weight": np.ones((2, 1, 3, 3), np.float32)}, "parameter weight must be a int32 array, got float32"),
        ({"weight": np.full((2, 1, 3, 3), 2**31 - 1, np.int32)}, None),  # 255 * 9 * (2**31 - 1) fits
    ],
)
def test_graph_rules_refuse_what_could_overflow_or_misread(params, message):
    base = {"weight": np.ones((2, 1, 3, 3), np.int32), "bias": np.zeros(2, np.int32), "shift": np.zeros(2, np.int32)}
    ops = [Op("conv2d_q", ["input"], "c", {"stride": 1, "padding": 1}, {**base, **params}),
           Op("flatten", ["c"], "f"), Op("argmax", ["f"], "l")]  # fmt: skip
    if message is None:
        Graph((1, 4, 4), ops)
        return
    with pytest.raises(BnnkitError, match="^op 0 \\(conv2d_q\\): .*" + message.replace("(", "\\(").replace(")", "\\)")):
        Graph((1, 4, 4), ops)


def test_a_q32_tensor_is_not_an_i32_or_f32_one():
    acc = Op("input_dense", ["f"], "a", {}, {"weight": np.ones((2, 1), bool)})
    to_q = scale_op("affine_q", 2, 1, 0, 0)
    to_q.inputs, to_q.output = ["a"], "v"
    for wrong in (Op("add", ["v", "a"], "y"), Op("sign", ["v"], "y", {}, {"thresh": np.zeros(2, np.float32)}),
                  Op("avgpool", ["v"], "y", {"kernel": 1, "stride": 1})):  # fmt: skip
        with pytest.raises(BnnkitError, match="input 'v' is q32, expected"):
            Graph((1, 1, 1), [Op("flatten", ["input"], "f"), acc, to_q, wrong, Op("argmax", ["y"], "l")])


def test_the_sat_backend_refuses_fixed_point_ops_with_its_reason():
    from bnnkit.analysis.robustness import ENCODERS

    for kind in sorted(Q_KINDS):
        with pytest.raises(BnnkitError, match=f"^the sat backend does not run {kind}: fixed-point arithmetic"):
            ENCODERS[kind]


def test_a_fixed_point_graph_saves_and_loads_to_the_same_outputs(tmp_path):
    case = max(CASES, key=lambda c: len(Q_KINDS & {op.kind for op in c.graph.ops}))
    case.graph.save(tmp_path / "g.bnn")
    loaded = Graph.load(tmp_path / "g.bnn")
    assert loaded.types == case.graph.types
    assert np.array_equal(numpy_ref.predict(loaded, case.x)[0], numpy_ref.predict(case.graph, case.x)[0])


def test_the_fast_runtime_equals_the_spec():
    from bnnkit.runtime.fast import FastModel

    for case in CASES[:40]:
        got, want = FastModel(case.graph).predict(case.x), numpy_ref.predict(case.graph, case.x)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"seed {case.seed}"


def test_run_reports_q32_scores_beyond_2_24_as_bit_exact_only_when_they_are(monkeypatch):
    """`bnnkit run`'s ``bit_exact`` compares scores in the runtime's own type: the NumPy and fast
    runtimes give the exact int32 scores (once counted as differing from their float32 roundings),
    the C its float32 ones; an int32 score equal only to the rounding is not exact."""
    from bnnkit.runtime import evaluate

    def big(case):
        scores = numpy_ref.predict(case.graph, case.x)[0]
        return not np.array_equal(scores, scores.astype(np.float32).astype(np.int64))

    case = next(c for c in CASES if big(c))
    monkeypatch.setattr(evaluate, "test_images", lambda *a: ("synthetic", case.x, np.zeros(len(case.x), np.int64)))
    for runtime in ("numpy", "c", "c-portable"):
        assert evaluate.run_graph(case.graph, runtime).bit_exact, runtime
    scores = numpy_ref.predict(case.graph, case.x)[0]
    assert evaluate.same_scores(scores.astype(np.float32), scores)
    assert not evaluate.same_scores(scores.astype(np.float32).astype(np.int32), scores)
    assert not evaluate.same_scores(scores.astype(np.float64), scores)


# --- the generated C: host and Cortex-M3 ------------------------------------------------------


def same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> bool:
    """The C's scores and labels against the spec's: its scores are float32 (the C API's type),
    so a q32 score is compared as the float32 it rounds to; the labels come from the integers."""
    return np.array_equal(got[0], want[0].astype(np.float32)) and np.array_equal(got[1], want[1])


def test_host_c_gives_the_hand_cases_and_a_few_random_graphs(tmp_path):
    cases, edges = CASES[:6], edge_graphs()
    hosts = build_hosts([c.graph for c in cases] + [g for g, _, _ in edges], tmp_path)
    for case, host in zip(cases, hosts):
        assert same(host.predict(case.x), numpy_ref.predict(case.graph, case.x)), f"seed {case.seed}"
    for (_, x, want), host in zip(edges, hosts[len(cases) :]):
        assert host.predict(x)[0][0].tolist() == want


@pytest.mark.slow
def test_host_c_is_bit_exact_on_200_random_fixed_point_graphs_and_the_hand_cases(tmp_path):
    edges = edge_graphs()
    hosts = build_hosts([c.graph for c in CASES] + [g for g, _, _ in edges], tmp_path)
    for case, host in zip(CASES, hosts):
        assert same(host.predict(case.x), numpy_ref.predict(case.graph, case.x)), f"seed {case.seed}"
    for (_, x, want), host in zip(edges, hosts[len(CASES) :]):
        assert host.predict(x)[0][0].tolist() == want


@pytest.mark.slow
def test_host_c_under_sanitizers(tmp_path):
    cases, edges = CASES[:40], edge_graphs()
    hosts = build_hosts([c.graph for c in cases] + [g for g, _, _ in edges], tmp_path, sanitize=True)
    for case, host in zip(cases, hosts):
        assert same(host.predict(case.x), numpy_ref.predict(case.graph, case.x)), f"seed {case.seed}"
    for (_, x, want), host in zip(edges, hosts[len(cases) :]):
        assert host.predict(x)[0][0].tolist() == want


@needs_mcu
@pytest.mark.slow
def test_the_cortex_m3_is_bit_exact_on_random_fixed_point_graphs_and_the_hand_cases(tmp_path):
    cases, edges = CASES[:30], edge_graphs()
    images = build_mcus([c.graph for c in cases] + [g for g, _, _ in edges], tmp_path, "cortex-m3")
    for case, image in zip(cases, images):
        assert same(image.predict(case.x), numpy_ref.predict(case.graph, case.x)), f"seed {case.seed}"
    for (_, x, want), image in zip(edges, images[len(cases) :]):
        assert image.predict(x)[0][0].tolist() == want


# --- the converter: a float32-stream graph -> its q32 twin --------------------------------------

FLOAT_CASES = [c for c in (case_from_seed(s) for s in range(90)) if any(t == "f32" for t, _ in c.graph.types.values())]


def test_the_twin_has_no_float_and_the_float_graphs_answers_where_no_sign_ties():
    from bnnkit.export.fixed import HEADROOM, to_fixed

    checked = 0
    for case in FLOAT_CASES:
        twin = to_fixed(case.graph, case.x)
        f = twin.meta["q32_fraction"]
        assert {t for t, _ in twin.types.values()}.isdisjoint({"f32"}) and 0 <= f <= 30
        assert twin.meta["q32_peak"] * HEADROOM * 2.0**f < 2**31
        if any(op.kind == "sign" for op in case.graph.ops):
            continue  # graphgen draws sign thresholds equal to values that occur: ties that rounding may break
        (fs, fl), (qs, ql) = numpy_ref.predict(case.graph, case.x), numpy_ref.predict(twin, case.x)
        assert np.array_equal(fl, ql), f"seed {case.seed}"
        if case.graph.types[case.graph.scores][0] == "f32":
            assert np.abs(fs - qs * 2.0**-f).max() <= 1e-5 * np.abs(fs).max() + 2.0**-f, f"seed {case.seed}"
        checked += 1
    assert checked >= 40


def test_a_sign_becomes_a_threshold_exact_on_the_q32_values():
    from bnnkit.export.fixed import to_fixed

    seen = 0
    for case in FLOAT_CASES:
        twin = to_fixed(case.graph, case.x)
        env = numpy_ref.execute(twin, case.x, keep=True)
        f = twin.meta["q32_fraction"]
        for op in (o for o in case.graph.ops if o.kind == "sign"):
            raw = env[op.inputs[0]].astype(np.float64) * 2.0**-f  # exact: 31 bits times a power of two
            t = op.params["thresh"].astype(np.float64).reshape((1, -1) + (1,) * (raw.ndim - 2))
            assert np.array_equal(env[op.output], raw >= t), f"seed {case.seed}"
            seen += 1
    assert seen >= 20


def test_the_converter_refuses_a_graph_without_a_float_stream():
    from bnnkit.export.fixed import to_fixed

    case = CASES[0]
    with pytest.raises(BnnkitError, match="^the graph has no float32 stream to put in fixed point"):
        to_fixed(case.graph, case.x)


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="gcc-arm-none-eabi is not installed")
def test_the_m3_code_of_a_fixed_point_graph_calls_no_float_routine_but_the_scores(tmp_path):
    import re
    import subprocess

    from bnnkit.runtime import toolchain
    from bnnkit.runtime.c import generate_c
    from bnnkit.runtime.cortex_m import TARGETS

    case = max(CASES, key=lambda c: len(Q_KINDS & {op.kind for op in c.graph.ops}))
    path = tmp_path / "net.c"
    path.write_text(generate_c(case.graph, "net")["net.c"].replace('#include "net.h"', "#include <stdint.h>"))
    cmd = ["arm-none-eabi-gcc", *TARGETS["cortex-m3"].cflags, *toolchain.MCU_CFLAGS, "-Werror", "-S", "-o", "-"]
    asm = subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=True).stdout
    # libgcc's soft float is __aeabi_f*/__aeabi_d* and the conversions; only the int -> float of
    # the scores the C API writes may remain
    assert set(re.findall(r"__aeabi_(?:[fd][a-z2]\w*|\w+2[fd]\w*)", asm)) <= {"__aeabi_i2f"}
    assert "smlal" in asm or "smull" in asm
