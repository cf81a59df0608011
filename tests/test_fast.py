"""The host kernels (bnnkit.runtime.fast) against the NumPy reference: bit-identical sums,
bits, scores and labels, on every instruction set this CPU runs (the portable one always),
and the layer tests again with the kernels under AddressSanitizer + UBSan."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import SETTINGS, case_from_seed, ebnn_cnn, examples, graph_cases
from hypothesis import Phase, given, settings

from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, OPS, PAD_MODES, Op
from bnnkit.runtime import evaluate, fast, numpy_ref
from bnnkit.runtime.host import build_hosts

ISAS = [
    pytest.param(isa, marks=pytest.mark.skipif(isa not in fast.supported_isas(), reason=f"this CPU lacks {isa}"))
    for isa in fast.ISAS
]


def random_threshold(rng, sums: np.ndarray, name: str) -> Op:
    """Thresholds drawn from the sums themselves (so ties occur), flips, constant channels
    and the INT32 extremes."""
    c = sums.shape[1]
    values = np.moveaxis(sums, 1, 0).reshape(c, -1)
    thresh = values[np.arange(c), rng.integers(0, values.shape[1], c)].astype(np.int32)
    thresh[rng.random(c) < 0.1] = INT32_MIN
    thresh[rng.random(c) < 0.05] = 2**31 - 1
    return Op("threshold", [name], name + "s", {}, {"thresh": thresh, "flip": rng.random(c) < 0.4})


def check_layer(rng, op: Op, x: np.ndarray, isa: str, threads: int = 1) -> None:
    """op alone (int32 sums) and fused with a threshold (packed bits) against the reference."""
    sums = numpy_ref.KERNELS[op.kind](op, x)
    arg = x if OPS[op.kind].reads_pixels else fast.Packed.from_bits(x)
    got = fast.Layer(op, x.shape[1:])(arg, isa, threads)
    assert got.dtype == np.int32 and np.array_equal(got, sums), op.attrs
    th = random_threshold(rng, sums, op.output)
    bits = fast.Layer(op, x.shape[1:], th)(arg, isa, threads)
    assert isinstance(bits, fast.Packed) and np.array_equal(bits.bits(), numpy_ref.threshold(th, sums)), op.attrs


@pytest.mark.parametrize("isa", ISAS)
def test_random_layers_are_bit_exact(isa):
    rng = np.random.default_rng(7)
    for trial in range(120):
        c, o = (int(rng.choice([1, 3, 31, 63, 64, 65, 100, 130, 200])) for _ in range(2))
        n = int(rng.integers(1, 4))
        if trial % 4 == 0:
            op = Op("binary_dense", ["x"], "y", {}, {"weight": rng.random((o, c)) < 0.5})
            check_layer(rng, op, rng.random((n, c)) < 0.5, isa)
            continue
        k = int(rng.choice([1, 3, 5]))
        h, w = (int(rng.integers(k, 10)) for _ in range(2))
        attrs = {
            "stride": (int(rng.integers(1, 3)), int(rng.integers(1, 3))),
            "padding": (int(rng.integers(0, 3)), int(rng.integers(0, 3))),
            "pad": str(rng.choice(PAD_MODES)),
        }
        op = Op("binary_conv2d", ["x"], "y", attrs, {"weight": rng.random((o, c, k, k)) < 0.5})
        check_layer(rng, op, rng.random((n, c, h, w)) < 0.5, isa, threads=1 + trial % 2)


@pytest.mark.parametrize("isa", ISAS)
def test_integer_input_layers_are_bit_exact(isa):
    rng = np.random.default_rng(3)
    for k, stride, padding, c in [(3, 1, 1, 1), (5, 2, 2, 3), (1, (1, 2), 0, 2), (3, (2, 1), (0, 1), 3)]:
        op = Op(
            "input_conv2d",
            ["x"],
            "y",
            {"stride": stride, "padding": padding},
            {"weight": rng.random((33, c, k, k)) < 0.5},
        )
        check_layer(rng, op, rng.integers(0, 256, (3, c, 9, 8), dtype=np.uint8), isa, threads=2)
    op = Op("input_dense", ["x"], "y", {}, {"weight": rng.random((70, 784)) < 0.5})
    check_layer(rng, op, rng.integers(0, 256, (5, 784), dtype=np.uint8), isa)


def test_random_graphs_are_bit_exact():
    isas = fast.supported_isas()
    checked, n = [], examples(250)

    @settings(SETTINGS, max_examples=n, phases=[Phase.generate])
    @given(graph_cases())
    def run(case):
        ref_scores, ref_labels = numpy_ref.predict(case.graph, case.x)
        for isa in isas:
            scores, labels = fast.FastModel(case.graph, isa, threads=2).predict(case.x, batch_size=5)
            assert scores.dtype == ref_scores.dtype and np.array_equal(scores, ref_scores), (isa, case.graph.ops)
            assert np.array_equal(labels, ref_labels), isa
        checked.append(case)

    run()
    fused = sum(
        isinstance(s.layer, fast.Layer) and s.layer.threshold is not None for c in checked for s in fast._plan(c.graph)
    )
    assert len(checked) == n and fused > 80 * n // 250  # producers fused with their threshold: over 80 in 250 graphs


@pytest.mark.parametrize("isa", ISAS)
def test_fashion_mnist_shaped_graph(isa):
    graph = ebnn_cnn(np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 256, (40, 1, 28, 28), dtype=np.uint8)
    model = fast.FastModel(graph, isa)
    assert [s.op.kind for s in model.steps if s.layer] == [
        "input_conv2d",
        "binary_conv2d",
        "binary_conv2d",
        "binary_conv2d",
        "binary_dense",
        "binary_dense",
    ]
    scores, labels = model.predict(x, batch_size=16)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(scores, ref_scores) and np.array_equal(labels, ref_labels)


@pytest.mark.slow
def test_layers_under_sanitizers():
    """The layer tests above in a child Python whose kernels are built with ``c.SANITIZE``
    (``$BNNKIT_SANITIZE``) and which starts with ASan's runtime preloaded, as a library
    loaded by ctypes needs: a bad access or undefined behaviour aborts it. The leak
    checker is off, for the interpreter's own allocations outlive it."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc's AddressSanitizer runtime (libasan) is not installed")
    env = {**os.environ, "BNNKIT_SANITIZE": "1", "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0"}
    selected = "random_layers or integer_input or fashion_mnist"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selected]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert f"{3 * len(fast.supported_isas())} passed" in proc.stdout


def test_packing_round_trips():
    rng = np.random.default_rng(0)
    for shape in [(2, 65, 3, 4), (3, 130)]:
        bits = rng.random(shape) < 0.5
        packed = fast.Packed.from_bits(bits)
        assert packed.words.dtype == np.uint64 and packed.shape == shape[1:]
        assert np.array_equal(packed.bits(), bits)
    assert fast.Packed.from_bits(np.ones((1, 65), bool)).words[0, 1] == 1  # unused bits stay 0


def test_isa_from_the_environment(monkeypatch):
    monkeypatch.setenv("BNNKIT_ISA", "portable")
    assert fast.FastModel(ebnn_cnn(np.random.default_rng(0))).isa == "portable"
    monkeypatch.setenv("BNNKIT_ISA", "sse9")
    with pytest.raises(BnnkitError, match="unknown instruction set 'sse9'"):
        fast.resolve_isa()


def test_bad_inputs_are_named():
    rng = np.random.default_rng(0)
    op = Op(
        "binary_conv2d",
        ["x"],
        "y",
        {"stride": 1, "padding": 1, "pad": "zero"},
        {"weight": rng.random((8, 65, 3, 3)) < 0.5},
    )
    layer = fast.Layer(op, (65, 6, 6))
    with pytest.raises(BnnkitError, match="takes Packed bits"):
        layer(rng.random((1, 65, 6, 6)) < 0.5)
    with pytest.raises(BnnkitError, match=r"takes packed \(65, 6, 6\).*got \(65, 6, 5\)"):
        layer(fast.Packed.from_bits(rng.random((1, 65, 6, 5)) < 0.5))
    good = fast.Packed.from_bits(rng.random((1, 65, 6, 6)) < 0.5)
    with pytest.raises(BnnkitError, match="as int64"):
        layer(fast.Packed(good.words.astype(np.int64), good.shape))
    with pytest.raises(BnnkitError, match="packing needs bool"):
        fast.Packed.from_bits(np.zeros((1, 3, 2, 2), np.uint8))
    with pytest.raises(BnnkitError, match="no host kernel for threshold"):
        fast.Layer(Op("threshold", ["x"], "y"), (3,))
    graph = ebnn_cnn(rng)
    with pytest.raises(BnnkitError, match=r"uint8 of shape \(N, 1, 28, 28\), got float32"):
        fast.FastModel(graph, "portable").predict(np.zeros((2, 1, 28, 28), np.float32))
    first = fast.FastModel(graph, "portable").steps[0].layer
    with pytest.raises(BnnkitError, match=r"takes uint8 \(N, 1, 28, 28\), got uint8 \(2, 1, 27, 28\)"):
        first(np.zeros((2, 1, 27, 28), np.uint8))


def test_run_graph_runtimes(monkeypatch):
    graph = ebnn_cnn(np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(evaluate, "test_images", lambda *a: ("synthetic", x, np.zeros(len(x), np.int64)))
    for runtime in ("c", "c-portable"):
        result = evaluate.run_graph(graph, runtime)
        assert result.bit_exact and result.agreement == 1.0 and runtime in result.seconds


def test_an_empty_batch_gives_empty_results_in_every_runtime(tmp_path):
    """The predict contract for 0 images, in the NumPy reference, the host kernels (every ISA)
    and the compiled C: (0, classes) scores and (0,) labels, of the dtypes the same runtime
    gives one image. Graphs with int32 and with float32 scores."""
    cases = [case_from_seed(seed) for seed in (0, 2)]
    assert {numpy_ref.predict(c.graph, c.x[:1])[0].dtype for c in cases} == {np.dtype(np.int32), np.dtype(np.float32)}
    hosts = build_hosts([c.graph for c in cases], tmp_path)
    for case, host in zip(cases, hosts):
        runtimes = [lambda x, graph=case.graph: numpy_ref.predict(graph, x), host.predict]
        runtimes += [fast.FastModel(case.graph, isa).predict for isa in fast.supported_isas()]
        for predict in runtimes:
            (scores, labels), (one_scores, one_labels) = predict(case.x[:0]), predict(case.x[:1])
            assert scores.shape == (0, case.graph.num_classes) and labels.shape == (0,)
            assert (scores.dtype, labels.dtype) == (one_scores.dtype, one_labels.dtype)
        empty_but_wrong = np.zeros((0, 1, 2, 2), np.uint8)  # an empty batch is still checked
        for predict in runtimes:
            with pytest.raises(BnnkitError, match="graph input must be uint8 of shape"):
                predict(empty_but_wrong)


def test_popcount_peak_counts_bit_products():
    assert fast.popcount_peak("portable", seconds=0.01) > 1e8
