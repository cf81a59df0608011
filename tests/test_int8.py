"""The int8 baseline: its graph ops against an independent integer reference, the NumPy spec
against the host C and the Cortex-M (bit for bit, DSP path on the M4, plain C on the M3), the
graph rules that keep every sum within int32, and post-training quantization of a float twin."""

import shutil
import subprocess

import numpy as np
import pytest
from helpers.graphgen import int8_case_from_seed

from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op, pair
from bnnkit.runtime import c_library, numpy_ref, toolchain
from bnnkit.runtime.c import generate_c
from bnnkit.runtime.cortex_m import TARGETS, build_mcus
from bnnkit.runtime.host import build_hosts

needs_mcu = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("arm-none-eabi-gcc", "qemu-system-arm")),
    reason="gcc-arm-none-eabi and qemu-system-arm are not installed",
)

# --- an independent reference: loops over taps in Python integers' int64, floor division --------


def ref_requant(acc: np.ndarray, op: Op) -> np.ndarray:
    c = acc.shape[1]
    out = np.empty(acc.shape, np.int64)
    for ch in range(c):
        m, s = int(op.params["multiplier"][ch]), int(op.params["shift"][ch])
        lo = 0 if "relu" in op.params and op.params["relu"][ch] else -128
        # round half up: floor(acc * m / 2**s + 1/2), in exact integers
        vals = [min(127, max(lo, (int(a) * m + 2 ** (s - 1)) // 2**s)) for a in acc[:, ch].ravel()]
        out[:, ch] = np.array(vals, np.int64).reshape(acc[:, ch].shape)
    return out


def ref_conv(x: np.ndarray, op: Op) -> np.ndarray:
    w = op.params["weight"].astype(np.int64)
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.int64)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    acc = np.zeros((n, o, ho, wo), np.int64) + op.params["bias"].astype(np.int64)[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            acc += np.einsum("nchw,oc->nohw", tap, w[:, :, i, j])
    return acc


def ref_execute(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    env = {graph.input: x.astype(np.int64)}
    for op in graph.ops:
        a = env[op.inputs[0]]
        if op.kind == "quantize_input":
            env[op.output] = a // 2
        elif op.kind == "int8_conv2d":
            env[op.output] = ref_requant(ref_conv(a, op), op)
        elif op.kind == "int8_dense":
            env[op.output] = a @ op.params["weight"].astype(np.int64).T + op.params["bias"].astype(np.int64)
        elif op.kind == "requantize":
            env[op.output] = ref_requant(a, op)
        elif op.kind == "maxpool":
            (kh, kw), (sh, sw) = pair(op.attrs["kernel"]), pair(op.attrs["stride"])
            ho, wo = (a.shape[2] - kh) // sh + 1, (a.shape[3] - kw) // sw + 1
            windows = [a[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                       for i in range(kh) for j in range(kw)]  # fmt: skip
            env[op.output] = np.max(windows, axis=0)
        elif op.kind == "flatten":
            env[op.output] = a.reshape(len(a), -1)
        else:
            env[op.output] = np.argmax(a, axis=1)
    return env


CASES = [int8_case_from_seed(seed) for seed in range(120)]


def test_the_spec_equals_an_independent_integer_reference_on_every_tensor():
    kinds = set()
    for case in CASES[:60]:
        spec = numpy_ref.execute(case.graph, case.x, keep=True)
        ref = ref_execute(case.graph, case.x)
        for op in case.graph.ops:
            kinds.add(op.kind)
            assert np.array_equal(spec[op.output].astype(np.int64), ref[op.output]), f"seed {case.seed}: {op.kind}"
            if op.output != case.graph.ops[-1].output:
                assert spec[op.output].dtype == {"i8": np.int8, "i32": np.int32}[case.graph.types[op.output][0]]
    assert kinds >= {"quantize_input", "int8_conv2d", "int8_dense", "requantize", "maxpool", "flatten"}
    # both signs reach the layers, saturation happens, and so does the ReLU clamp
    convs = [numpy_ref.execute(c.graph, c.x, keep=True)[op.output] for c in CASES[:60] for op in c.graph.ops
             if op.kind == "int8_conv2d"]  # fmt: skip
    values = np.concatenate([v.ravel() for v in convs])
    assert values.min() == -128 and values.max() == 127 and (values < 0).mean() > 0.1


def edge_graph(acc: list[int], mult: int, shift: int, relu: bool) -> Graph:
    """A 1x1x1 image whose zero-weight dense layer has the accumulators ``acc`` (its bias), then
    requantize, then an identity dense layer: the class scores are the requantized values."""
    n = len(acc)
    req = {"multiplier": np.full(n, mult, np.int32), "shift": np.full(n, shift, np.int32), "relu": np.full(n, relu)}
    ops = [
        Op("quantize_input", ["input"], "q"),
        Op("flatten", ["q"], "f"),
        Op("int8_dense", ["f"], "acc", {}, {"weight": np.zeros((n, 1), np.int8), "bias": np.array(acc, np.int32)}),
        Op("requantize", ["acc"], "y", {}, req),
        Op("int8_dense", ["y"], "s", {}, {"weight": np.eye(n, dtype=np.int8), "bias": np.zeros(n, np.int32)}),
        Op("argmax", ["s"], "label"),
    ]
    return Graph((1, 1, 1), ops)


BIG = 2**31 - 1 - 128 * 128  # the largest bias a fan-in of 1 allows
# (accumulators, multiplier, shift, relu) -> the requantized values, worked by hand from the doc:
# clamp((acc * m + 2**(shift-1)) >> shift, lo, 127), halves rounded up (towards +infinity)
EDGES = [
    ([-3, -2, -1, 0, 1, 2, 3, 253, 254, -255, -256, -257], 1, 1, False, [-1, -1, 0, 0, 1, 1, 2, 127, 127, -127, -128, -128]),
    ([-3, -2, -1, 0, 1, 2, 3, 253, 254, -255, -256, -257], 1, 1, True, [0, 0, 0, 0, 1, 1, 2, 127, 127, 0, 0, 0]),
    ([BIG, -BIG, 5 * 2**20, -5 * 2**20 - 1], 2**31 - 1, 62, False, [1, -1, 0, 0]),
    ([BIG, -BIG, 3 * 2**24, -(3 * 2**24)], 2**30, 55, False, [64, -64, 2, -1]),
    ([BIG, -BIG], 2**31 - 1, 31, False, [127, -128]),
    # the C takes p's high word alone above shift 32: both sides of that boundary, and exact halves
    ([3, -3, 4, -4, 6, -6, BIG, -BIG], 2**31 - 1, 32, False, [1, -1, 2, -2, 3, -3, 127, -128]),
    ([3, -3, 4, -4, 6, -6, BIG, -BIG], 2**31 - 1, 33, False, [1, -1, 1, -1, 1, -1, 127, -128]),
    ([3, -3, 4, -4, 6, -6, BIG, -BIG], 2**31 - 1, 34, False, [0, 0, 0, 0, 1, -1, 127, -128]),
    ([8, -8, 24, -24, 7, -9], 2**30, 34, False, [1, 0, 2, -1, 0, -1]),
]  # fmt: skip


@pytest.mark.parametrize("acc, mult, shift, relu, want", EDGES)
def test_requantization_rounds_half_up_and_clamps(acc, mult, shift, relu, want):
    scores, _ = numpy_ref.predict(edge_graph(acc, mult, shift, relu), np.zeros((1, 1, 1, 1), np.uint8))
    assert scores[0].tolist() == want


@pytest.mark.slow
def test_host_c_is_bit_exact_on_random_int8_graphs_and_edge_cases(tmp_path):
    edges = [edge_graph(*e[:4]) for e in EDGES]
    graphs = [c.graph for c in CASES] + edges
    hosts = build_hosts(graphs, tmp_path)
    for case, host in zip(CASES, hosts):
        scores, labels = host.predict(case.x)
        want_scores, want_labels = numpy_ref.predict(case.graph, case.x)
        assert np.array_equal(scores, want_scores) and np.array_equal(labels, want_labels), f"seed {case.seed}"
    for e, host in zip(EDGES, hosts[len(CASES) :]):
        assert host.predict(np.zeros((1, 1, 1, 1), np.uint8))[0][0].tolist() == e[4]


@pytest.mark.slow
def test_host_c_under_sanitizers(tmp_path):
    graphs = [c.graph for c in CASES[:40]]
    for case, host in zip(CASES, build_hosts(graphs, tmp_path, sanitize=True)):
        assert np.array_equal(host.predict(case.x)[0], numpy_ref.predict(case.graph, case.x)[0]), f"seed {case.seed}"


@needs_mcu
@pytest.mark.slow
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m3"])
def test_cortex_m_is_bit_exact_on_random_int8_graphs(target, tmp_path):
    cases = CASES[:40]
    images = build_mcus([c.graph for c in cases] + [edge_graph(*e[:4]) for e in EDGES], tmp_path, target)
    for case, image in zip(cases, images):
        scores, labels = image.predict(case.x)
        want_scores, want_labels = numpy_ref.predict(case.graph, case.x)
        assert np.array_equal(scores, want_scores) and np.array_equal(labels, want_labels), (
            f"{target}, seed {case.seed}"
        )
    for e, image in zip(EDGES, images[len(cases) :]):
        assert image.predict(np.zeros((1, 1, 1, 1), np.uint8))[0][0].tolist() == e[4]


def cross_compile(source: str, target: str, tmp_path) -> str:
    """The assembly of ``source`` for ``target`` with the flags of the Cortex-M build."""
    path = tmp_path / "k.c"
    path.write_text(source)
    cmd = ["arm-none-eabi-gcc", *TARGETS[target].cflags, *toolchain.MCU_CFLAGS, "-Werror", "-S", "-o", "-", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="gcc-arm-none-eabi is not installed")
@pytest.mark.slow
def test_the_m4_build_multiplies_pairs_with_smlad_and_the_m3_in_plain_c(tmp_path):
    graph = next(c.graph for c in CASES if any(op.kind == "int8_conv2d" for op in c.graph.ops))
    source = generate_c(graph, "net")["net.c"].replace('#include "net.h"', "#include <stdint.h>")
    m4, m3 = (cross_compile(source, t, tmp_path) for t in ("cortex-m4", "cortex-m3"))
    assert "smlad" in m4 and "sxtb16" in m4
    assert "smlad" not in m3 and "sxtb16" not in m3
    # every int8 section compiles alone on the DSP path too, warnings as errors
    prelude = "#include <stddef.h>\n#include <stdint.h>\n"
    for name in ("int8_conv", "int8_dense", "requantize", "quantize_input", "maxpool_i8"):
        keep = f"\nvoid *bnnkit_keep(void) {{ return (void *){name}; }}\n"
        cross_compile(prelude + "\n\n".join(c_library.kernel_sources([name])) + keep, "cortex-m4", tmp_path)


def test_int8_c_file_is_formatted():
    if shutil.which("clang-format") is None:
        pytest.skip("clang-format is not installed")
    path = c_library.resources.files("bnnkit.runtime") / "c_kernels" / "int8.c"
    proc = subprocess.run(["clang-format", "--dry-run", "-Werror", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_an_int8_graph_saves_and_loads_to_the_same_outputs(tmp_path):
    case = next(c for c in CASES if {"int8_conv2d", "requantize"} <= {op.kind for op in c.graph.ops})
    case.graph.save(tmp_path / "g.bnn")
    loaded = Graph.load(tmp_path / "g.bnn")
    for a, b in zip(case.graph.ops, loaded.ops):
        assert a.params.keys() == b.params.keys()
        assert all(
            np.array_equal(a.params[k], b.params[k]) and a.params[k].dtype == b.params[k].dtype for k in a.params
        )
    assert np.array_equal(numpy_ref.predict(loaded, case.x)[0], numpy_ref.predict(case.graph, case.x)[0])


def conv_op(**change) -> Op:
    params = {
        "weight": np.ones((2, 1, 3, 3), np.int8),
        "bias": np.zeros(2, np.int32),
        "multiplier": np.ones(2, np.int32),
        "shift": np.ones(2, np.int32),
    }
    return Op("int8_conv2d", ["q"], "c", {"stride": 1, "padding": 1}, {**params, **change})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shift": np.zeros(2, np.int32)}, "shift must lie in 1..62"),
        ({"shift": np.full(2, 63, np.int32)}, "shift must lie in 1..62"),
        ({"multiplier": np.array([1, -1], np.int32)}, "multiplier must be >= 0"),
        ({"relu": np.ones(3, bool)}, "relu has shape (3,), expected (2,)"),
        ({"bias": np.array([0, 2**31 - 1000], np.int32)}, "fan-in 9 and bias could overflow the int32 accumulator"),
        ({"weight": np.ones((2, 1, 3, 3), np.int32)}, "parameter weight must be a int8 array, got int32"),
    ],
)
def test_graph_rules_refuse_what_could_overflow_or_misread(change, message):
    ops = [Op("quantize_input", ["input"], "q"), conv_op(**change), Op("flatten", ["c"], "f"), Op("argmax", ["f"], "l")]
    with pytest.raises(
        BnnkitError, match="^op 1 \\(int8_conv2d\\): .*" + message.replace("(", "\\(").replace(")", "\\)")
    ):
        Graph((1, 4, 4), ops)


def test_the_fan_in_bound_admits_exactly_what_fits_int32():
    fan_in = (2**31 - 1) // (128 * 128)  # 131071 taps, and the bias room that is left
    room = 2**31 - 1 - 128 * 128 * fan_in
    for bias, ok in ((room, True), (room + 1, False)):
        dense = Op("int8_dense", ["f"], "d", {}, {"weight": np.zeros((1, fan_in), np.int8),
                                                   "bias": np.array([bias], np.int32)})  # fmt: skip
        ops = [Op("quantize_input", ["input"], "q"), Op("flatten", ["q"], "f"), dense, Op("argmax", ["d"], "l")]
        if ok:
            Graph((1, 1, fan_in), ops)
        else:
            with pytest.raises(BnnkitError, match="could overflow the int32 accumulator"):
                Graph((1, 1, fan_in), ops)


def test_the_sat_backend_refuses_int8_ops_with_its_reason():
    from bnnkit.analysis.robustness import ENCODERS

    with pytest.raises(BnnkitError, match="^the sat backend does not run int8_conv2d: int8 arithmetic"):
        ENCODERS["int8_conv2d"]


# --- post-training quantization of a float twin ------------------------------------------------


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory):
    """An ebnn_cnn float twin trained briefly on the 8x8 digits (scikit-learn's, shipped)."""
    from bnnkit import api
    from bnnkit.export.int8 import twin_recipe

    out = tmp_path_factory.mktemp("twin") / "run"
    api.train("ebnn_cnn", "digits", out, recipe=twin_recipe(), epochs=8, model_options={"channels": [8, 16]},
              progress=False)  # fmt: skip
    return out


# PTQ may cost this much accuracy against the float twin on the test images (the bound the
# docs state; the digits twin loses 0-1 point, Fashion-MNIST's ebnn twins 0-0.5)
PTQ_BOUND = 0.02


@pytest.mark.slow
def test_ptq_stays_within_its_bound_of_the_float_twin_and_runs_everywhere(twin_run, tmp_path, capsys):
    import json

    from bnnkit.cli import main

    out = tmp_path / "m.bnn"
    assert main(["quantize", str(twin_run), "-o", str(out), "--check", "355", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 355 and r["int8_accuracy"] >= r["float_accuracy"] - PTQ_BOUND and r["top1_agreement"] >= 0.95
    assert r["float_accuracy"] > 0.6, r  # a twin that learned something (chance: 0.1), so the bound means something
    graph = Graph.load(out)
    assert [op.kind for op in graph.ops] == ["quantize_input", "int8_conv2d", "maxpool", "int8_conv2d", "maxpool",
                                             "flatten", "int8_dense", "argmax"]  # fmt: skip
    assert main(["run", str(out), "--runtime", "c-portable", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["bit_exact"] and run["accuracy"] == pytest.approx(r["int8_accuracy"])
    assert main(["profile", str(out), "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["totals"]["binary_macs"] == 0 and prof["totals"]["int_ops"] > 0
    assert main(["verify", str(out), "--image", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: op 0 (quantize_input from input): quantize_input has no encoding: int8 arithmetic")
    assert err.count("\n") == 1


def test_quantize_refuses_a_binary_run_and_a_bad_calibration(tmp_path, capsys):
    import torch

    from bnnkit.export.int8 import quantize_model, requant, twin_recipe
    from bnnkit.models import create_model

    torch.manual_seed(0)
    bnn = create_model("ebnn_cnn", 10, (1, 8, 8), "embedded", channels=[4, 8])
    with pytest.raises(BnnkitError, match="^net.0: a binary layer; int8 quantization takes a full-precision twin"):
        quantize_model(bnn, (1, 8, 8), np.zeros((4, 1, 8, 8), np.uint8))
    twin = create_model("ebnn_cnn", 10, (1, 8, 8), twin_recipe(), channels=[4, 8])
    with pytest.raises(BnnkitError, match="^calibration images must be uint8 \\(N, 1, 8, 8\\)"):
        quantize_model(twin, (1, 8, 8), np.zeros((4, 1, 7, 8), np.uint8))
    for scale in (1e-12, 3e-7, 0.001234, 0.5, 0.999999, 1.0, 7.5):
        m, s = requant(scale)
        assert 1 <= s <= 62 and 0 <= m < 2**31 and abs(m / 2**s - scale) <= scale * 2**-30 + 2**-62
