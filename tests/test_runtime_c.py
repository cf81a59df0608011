"""The C runtime against the NumPy reference: bit-identical scores and labels, also under
AddressSanitizer + UBSan and under valgrind.

Compiling is the slow part, so random graphs are checked in batches: one executable holds
a whole batch, each graph under its own prefix. The random graphs are
``graphgen.case_from_seed(seed)`` for the seeds in ``SEEDS``, the same on every run; a
failure names the seed of its graph (a compile error: the seeds of its batch, in the
order of the sources g0.c, g1.c, ...). To check one graph again, from tests/:

    ../.venv/bin/python -c "from helpers import graphgen; import test_runtime_c as t; t.check_batch([graphgen.case_from_seed(SEED)])"

(add ``sanitize=True`` for the sanitizers) or ``graphgen.case_from_seed(SEED).graph.save(PATH)``
to look at the graph with the CLI."""

import dataclasses
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import (
    Case,
    case_from_seed,
    ebnn16,
    ebnn_cnn,
    edge_binary_dense,
    edge_dense,
    narrow_case_from_seed,
)

from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, Graph, Op
from bnnkit.graph.plan import plan_memory
from bnnkit.runtime import c as c_runtime
from bnnkit.runtime import numpy_ref, toolchain
from bnnkit.runtime.c import POPCOUNT_VARIANTS, generate_c, write_sources
from bnnkit.runtime.host import HostModel, build_host, build_hosts

SEEDS = range(1020)
BATCH = 102
SANITIZED_SEEDS = range(100)  # as many as build in ~12 s; the first 50 already call every kernel
VALGRIND_SEEDS = range(24)  # a launch runs one graph, and valgrind takes ~0.3 s to start
NARROW_SEEDS = range(306)  # graphgen.narrow_case_from_seed: every map 1 to 31 channels


KERNELS_C = {
    "input_conv",
    "input_conv_sign",
    "binary_conv",
    "binary_conv_sign",
    "binary_conv_sign_words",
    "threshold",
    "maxpool_bits",
    "maxpool_i32",
    "avgpool",
    "add_i32",
    "add_f32",
    "affine_i32",
    "affine_f32",
    "argmax_i32",
    "argmax_f32",
    # the real-valued path
    "sign_f32",
    "prelu_f32",
    "meanpool",
    "maxpool_f32",
    "fconv_u8",
    "fconv_f32",
}


def assert_same(host: HostModel, case: Case) -> None:
    what = f"graph of seed {case.seed}"
    try:
        scores, labels = host.predict(case.x)
    except BnnkitError as e:  # a crash, or a sanitizer's or valgrind's report
        raise AssertionError(f"{what}: {e}") from e
    ref_scores, ref_labels = numpy_ref.predict(case.graph, case.x)
    assert scores.dtype == np.float32 and labels.dtype == np.int64
    assert np.array_equal(scores, ref_scores.astype(np.float32)), f"{what}: scores differ"
    assert np.array_equal(labels, ref_labels), f"{what}: labels differ"


def check_batch(cases: list[Case], **build) -> set[str]:
    """Compare C and NumPy on every case; returns the C kernels the batch called."""
    called = set()
    with tempfile.TemporaryDirectory(prefix="bnnkit-c-test-") as work:
        try:
            hosts = build_hosts([case.graph for case in cases], work, **build)
        except BnnkitError as e:
            raise AssertionError(f"seeds of g0, g1, ...: {[case.seed for case in cases]}\n{e}") from e
        for i in range(len(cases)):
            body = (Path(work) / f"g{i}.c").read_text().split(f"int g{i}_infer(")[1]
            called |= set(re.findall(r"^    (?:return )?(\w+)\(", body, re.M))
        for case, host in zip(cases, hosts):
            assert_same(host, case)
    return called


def features(graph: Graph) -> set:
    """What a graph exercises, for checking that the random graphs cover the ops' cases."""
    out = {("square", graph.input_shape[1] == graph.input_shape[2])}
    for op in graph.ops:
        out.add((op.kind, graph.types[op.inputs[0]][0]))
        if op.kind.endswith("conv2d"):
            out |= {
                ("kernel", op.params["weight"].shape[2]),
                ("stride", op.attrs["stride"]),
                ("padding", op.attrs["padding"]),
            }
            out.add(("pad", op.attrs.get("pad")))
        if op.kind.startswith("binary"):
            out.add(("odd channels > 32", op.params["weight"].shape[1] > 32 and op.params["weight"].shape[1] % 32 != 0))
        if op.kind == "threshold":
            out |= {
                ("flip", bool(op.params["flip"].any())),
                ("constant", bool((op.params["thresh"] == INT32_MIN).any())),
            }
        if op.kind == "maxpool":
            out.add(("min_channels", "min_channels" in op.params))
    return out


@pytest.mark.slow
def test_random_graphs_are_bit_exact():
    cases, called = [case_from_seed(seed) for seed in SEEDS], set()
    for i in range(0, len(cases), BATCH):
        called |= check_batch(cases[i : i + BATCH])
    assert len(cases) >= 1000
    assert called == KERNELS_C
    covered = {
        ("input_conv2d", "u8"),
        ("binary_conv2d", "bits"),
        ("input_dense", "u8"),
        ("binary_dense", "bits"),
        ("threshold", "i32"),
        ("maxpool", "i32"),
        ("maxpool", "bits"),
        ("avgpool", "i32"),
        ("add", "i32"),
        ("add", "f32"),
        ("affine", "i32"),
        ("affine", "f32"),
        ("argmax", "i32"),
        ("argmax", "f32"),
        ("flatten", "u8"),
        ("flatten", "bits"),
        ("flatten", "i32"),
        ("flatten", "f32"),
        ("sign", "f32"),
        ("prelu", "f32"),
        ("meanpool", "f32"),
        ("maxpool", "f32"),
        ("conv2d_f32", "u8"),
        ("conv2d_f32", "f32"),
        ("dense_f32", "f32"),
        ("kernel", 1),
        ("kernel", 3),
        ("kernel", 5),
        ("stride", 2),
        ("stride", (1, 2)),
        ("padding", 0),
        ("padding", 1),
        ("pad", "zero"),
        ("pad", "minus_one"),
        ("pad", "plus_one"),
        ("odd channels > 32", True),
        ("flip", True),
        ("constant", True),
        ("min_channels", True),
        ("square", False),
    }
    assert covered - set().union(*(features(case.graph) for case in cases)) == set()
    varied = sum(len(set(numpy_ref.predict(c.graph, c.x)[1])) > 1 for c in cases)
    assert varied > len(cases) // 2  # labels depend on the image in most graphs


def _sanitizers_work(tmp: Path) -> bool:
    (tmp / "probe.c").write_text("int main(void) { return 0; }\n")
    cmd = ["gcc", *toolchain.SANITIZE, str(tmp / "probe.c"), "-o", str(tmp / "probe")]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.mark.slow
def test_random_graphs_under_sanitizers(tmp_path):
    if not _sanitizers_work(tmp_path):
        pytest.skip("gcc cannot build with -fsanitize=address,undefined here")
    called = check_batch([case_from_seed(seed) for seed in SANITIZED_SEEDS], sanitize=True)
    assert called == KERNELS_C


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed (Debian: valgrind)")
def test_random_graphs_under_valgrind(tmp_path):
    """The harness and the generated C under memcheck: no invalid access, no use of
    uninitialised memory, no leak (ASan runs without its leak checker, see c.HostModel)."""
    cases = [case_from_seed(seed) for seed in VALGRIND_SEEDS]
    hosts = build_hosts([case.graph for case in cases], tmp_path, cflags=["-g"])
    memcheck = tmp_path / "memcheck"
    memcheck.write_text(
        "#!/bin/sh\nexec valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=all "
        f'--default-suppressions=no "{hosts[0].executable}" "$@"\n'
    )
    memcheck.chmod(0o755)
    with ThreadPoolExecutor(max_workers=2) as pool:  # one launch per graph; each is mostly valgrind's start-up
        list(
            pool.map(lambda hc: assert_same(dataclasses.replace(hc[0], executable=memcheck), hc[1]), zip(hosts, cases))
        )


def dense_steps(graph: Graph) -> set[tuple]:
    """What the steps of the C runtime do with bit-dense maps: ("reads" | "writes", the step's
    ops), and the pad mode of each binary convolution reading one."""
    plan, out = plan_memory(graph), set()
    for step in plan.steps:
        ops = [graph.ops[i] for i in step.ops]
        kinds = "+".join(op.kind for op in ops)
        if step.output in plan.dense:
            out.add(("writes", kinds))
        if any(name in plan.dense for name in step.inputs):
            out.add(("reads", kinds))
            out.add(("pad", ops[0].attrs.get("pad")))
    return out


@pytest.mark.slow
def test_narrow_maps_stored_bit_dense_are_bit_exact(tmp_path):
    """Bit-dense maps (rows that start anywhere in a word: 1 to 31 channels, odd sizes) through
    every kernel that writes or reads bits; a part under the sanitizers too. A failure names the
    seed of ``graphgen.narrow_case_from_seed``."""
    cases = [narrow_case_from_seed(seed) for seed in NARROW_SEEDS]
    for i in range(0, len(cases), BATCH):
        check_batch(cases[i : i + BATCH])
    if _sanitizers_work(tmp_path):
        check_batch(cases[:BATCH], sanitize=True)
    writers = ["input_conv2d+threshold", "binary_conv2d+threshold", "threshold", "sign", "maxpool"]
    readers = ["binary_conv2d", "binary_conv2d+threshold", "binary_dense", "binary_dense+threshold", "maxpool"]
    pooled = ["input_conv2d+threshold+maxpool", "binary_conv2d+threshold+maxpool"]
    covered = {("writes", k) for k in writers + pooled} | {("reads", k) for k in readers + pooled[1:]}
    covered |= {("pad", p) for p in ("zero", "minus_one", "plus_one")}
    assert covered - set().union(*(dense_steps(case.graph) for case in cases)) == set()


def test_ebnn16_with_a_bit_dense_map_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    graph = ebnn16(rng)
    x = rng.integers(0, 256, (24, 1, 28, 28), dtype=np.uint8)
    assert ("reads", "binary_conv2d+threshold+maxpool") in dense_steps(graph)
    scores, labels = build_host(graph, tmp_path).predict(x)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)
    assert len(set(labels)) > 1


def test_cnn_with_fused_layers_and_every_popcount(tmp_path):
    rng = np.random.default_rng(0)
    graph = ebnn_cnn(rng)
    x = rng.integers(0, 256, (24, 1, 28, 28), dtype=np.uint8)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    for variant in POPCOUNT_VARIANTS:
        scores, labels = build_host(graph, tmp_path / variant, cflags=[f"-DBNNKIT_POPCOUNT_{variant}"]).predict(x)
        assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)
    assert len(set(labels)) > 1


@pytest.mark.parametrize("pixels, ctype", [(128, "int16_t"), (129, "int32_t")])
def test_fused_thresholds_are_int16_where_every_sum_fits_and_decide_as_int32(tmp_path, pixels, ctype):
    """128 pixels sum to at most 32,640 (int16 thresholds, clamped), 129 to 32,895 (int32): at the
    thresholds' edges every bit equals the spec's (the last layer's scores give each bit)."""
    rng = np.random.default_rng(pixels)
    graph = edge_dense(pixels, rng)
    source = generate_c(graph, "net")["net.c"]
    assert re.search(rf"^static const {ctype} op2_thresh\[28\]", source, re.M)
    assert ("#define SIGN_THRESH_16" in source) == (ctype == "int16_t")
    near_full = np.full((256, 1, 1, pixels), 255, np.uint8)
    near_full[:, 0, 0, 0] = np.arange(256)  # the all +1 channels' sums: each value from 255 * (pixels - 1) up
    x = np.concatenate(
        [
            np.zeros((1, 1, 1, pixels), np.uint8),
            np.full((1, 1, 1, pixels), 255, np.uint8),
            rng.integers(0, 256, (30, 1, 1, pixels), dtype=np.uint8),
            255 * rng.integers(0, 2, (30, 1, 1, pixels), dtype=np.uint8),
            near_full,
        ]
    )
    scores, labels = build_host(graph, tmp_path / "build").predict(x)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)
    bits = numpy_ref.execute(graph, x, keep=True)["b"]
    assert bits[1, 0] and not bits[0, 0]  # channel 0 (all +1, threshold the bound): all 255 reach it, zeros do not
    assert ("(-2147483647 - 1)" in source) == (ctype == "int32_t")  # INT32_MIN as a valid C expression, where kept


@pytest.mark.parametrize("bits, ctype", [(2**15 - 2, "int16_t"), (2**15 - 1, "int32_t")])
def test_int16_thresholds_stop_one_short_of_int16s_largest_value(tmp_path, bits, ctype):
    """A sum bound of 32,767 keeps int32: a threshold of 32,768 (never met) would clamp to 32,767,
    which a sum at the bound meets. At 32,766 the clamped thresholds still decide as int32."""
    graph = edge_binary_dense(bits, np.random.default_rng(bits))
    source = generate_c(graph, "net")["net.c"]
    assert re.search(rf"^static const {ctype} op4_thresh\[28\]", source, re.M)
    x = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1)
    scores, labels = build_host(graph, tmp_path / "build").predict(x)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)
    bits_out = numpy_ref.execute(graph, x, keep=True)["b"]
    # at pixel 255 every sum is the bound: it meets a threshold at the bound (channel 0), not one
    # beyond it (channel 15, unflipped), the one a clamp to 32,767 would bring within reach
    assert bits_out[255, 0] and not bits_out[255, 15] and not bits_out[0, 0]


def test_sources_are_self_contained_and_documented(tmp_path):
    rng = np.random.default_rng(1)
    ops = [
        Op("flatten", ["input"], "f"),
        Op("input_dense", ["f"], "d", {}, {"weight": rng.random((5, 12)) < 0.5}),
        Op(
            "threshold",
            ["d"],
            "s",
            {},
            {"thresh": np.array([INT32_MIN, 0, 1, 2, 3], np.int32), "flip": np.array([1, 0, 1, 0, 1], bool)},
        ),
        Op("binary_dense", ["s"], "o", {}, {"weight": rng.random((3, 5)) < 0.5}),
        Op("argmax", ["o"], "label"),
    ]
    graph = Graph((3, 2, 2), ops)
    paths = write_sources(graph, tmp_path / "out", "net")
    assert [p.name for p in paths] == ["net.h", "net.c"]
    header, source = (p.read_text() for p in paths)
    for line in (
        "#define NET_INPUT_SIZE 12",
        "#define NET_NUM_CLASSES 3",
        "int net_infer(const uint8_t *input, float *scores);",
    ):
        assert line in header
    assert "1 <=> +1" in header and "HWC" in header
    assert "malloc" not in source and "math.h" not in source and "float.h" not in source
    assert "static uint32_t net_arena[" in source
    # only the kernels this graph needs: a fused u8 dense layer and a binary one; no pooling, no floats
    assert "input_conv_sign(" in source and "binary_conv(" in source and "threshold(" not in source
    assert "maxpool" not in source and "f32_bits" not in source
    x = rng.integers(0, 256, (16, 3, 2, 2), dtype=np.uint8)
    scores, labels = build_host(graph, tmp_path / "build").predict(x)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)


def _tiny_graph() -> Graph:
    w = np.ones((2, 4), bool)
    return Graph(
        (1, 2, 2),
        [Op("flatten", ["input"], "f"), Op("input_dense", ["f"], "d", {}, {"weight": w}), Op("argmax", ["d"], "y")],
    )


def test_compile_errors_carry_the_compiler_output(tmp_path, monkeypatch):
    monkeypatch.setattr(
        c_runtime,
        "generate_c",
        lambda graph, prefix: {f"{prefix}.h": "", f"{prefix}.c": "int oops(void) { return missing; }\n"},
    )
    with pytest.raises(BnnkitError, match="(?s)C compilation failed.*missing"):
        build_host(_tiny_graph(), tmp_path)


def test_missing_compiler_is_a_clear_error(tmp_path):
    with pytest.raises(BnnkitError, match="no C compiler 'bnnkit-no-such-cc'"):
        build_host(_tiny_graph(), tmp_path, cc="bnnkit-no-such-cc")


def test_bad_input_and_prefix_are_errors(tmp_path):
    host = build_host(_tiny_graph(), tmp_path)
    with pytest.raises(BnnkitError, match="uint8"):
        host.predict(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(BnnkitError, match="not a C identifier"):
        generate_c(_tiny_graph(), "9lives")
