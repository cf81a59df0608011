"""The Cortex-M runtime in QEMU against the NumPy reference: bit-identical scores and
labels on the M3 (soft float), M4 and M7 (hard float), plus the image's sizes, its stack
high-water mark and its errors.

Random graphs are built into one ELF per target, each graph under its own prefix, and
each is run by one QEMU launch over all its images. They are a sample of the seeded graphs
that tests/test_runtime_c.py checks on the host: a failure names the seed, and its
docstring says how to rebuild that graph."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import case_from_seed, ebnn16, ebnn_cnn, edge_cnn, narrow_case_from_seed

from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op
from bnnkit.graph.plan import plan_memory
from bnnkit.runtime import c as c_runtime
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.cortex_m import TARGETS, McuImage, McuSize, build_mcu, build_mcus

MISSING = [tool for tool in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not installed (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)",
)

N_GRAPHS = 60


@pytest.fixture(scope="module")
def cases():
    return [case_from_seed(seed) for seed in range(N_GRAPHS)]


def assert_same(image: McuImage, x: np.ndarray, what: str) -> np.ndarray:
    scores, labels = image.predict(x)
    ref_scores, ref_labels = numpy_ref.predict(image.graph, x)
    assert scores.dtype == np.float32 and labels.dtype == np.int64
    assert np.array_equal(scores, ref_scores.astype(np.float32)), f"{what}: scores differ"
    assert np.array_equal(labels, ref_labels), f"{what}: labels differ"
    return labels


@pytest.mark.slow
@needs_tools
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_random_graphs_are_bit_exact(cases, target, tmp_path):
    images = build_mcus([case.graph for case in cases], tmp_path, target)
    for case, image in zip(cases, images):
        assert_same(image, case.x, f"{target}, graph of seed {case.seed}")
    kinds = {(op.kind, case.graph.types[op.inputs[0]][0]) for case in cases for op in case.graph.ops}
    # the float paths (soft float on the M3) and the popcount of binary layers are exercised
    assert {
        ("affine", "i32"),
        ("affine", "f32"),
        ("add", "f32"),
        ("binary_conv2d", "bits"),
        ("binary_dense", "bits"),
    } <= kinds
    # and the real-valued path's float32 ops
    assert {("sign", "f32"), ("prelu", "f32"), ("meanpool", "f32"), ("maxpool", "f32"), ("conv2d_f32", "u8")} <= kinds


def _symbols(elf: Path) -> str:
    return subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
@needs_tools
def test_fashion_cnn_on_m4_is_bit_exact_and_measured(tmp_path):
    rng = np.random.default_rng(0)
    graph = ebnn_cnn(rng)
    x = rng.integers(0, 256, (128, 1, 28, 28), dtype=np.uint8)
    image = build_mcu(graph, tmp_path, "cortex-m4")
    run = image.run(x)
    ref_scores, ref_labels = numpy_ref.predict(graph, x)
    assert np.array_equal(run.scores, ref_scores.astype(np.float32)) and np.array_equal(run.labels, ref_labels)
    assert len(set(run.labels)) > 1

    # no Cortex-M has a popcount instruction: the bit trick, not libgcc's table, counts
    symbols = _symbols(image.elf)
    assert "bnn_infer" in symbols and "__popcount" not in symbols

    size, plan = image.size, plan_memory(graph)
    weight_bytes = sum(op.params["weight"].size // 8 for op in graph.ops if "weight" in op.params)
    assert weight_bytes <= size.rodata < weight_bytes + 4096  # + word padding, thresholds, descriptors
    assert 1000 < size.text < 16384
    assert size.bss >= plan.arena_bytes + 4 * graph.num_classes  # the image is read into the arena
    assert size.flash == size.text + size.rodata + size.data and size.stack == 8192
    assert 0 < run.stack_bytes_used < size.stack
    assert run.ram_bytes == size.data + size.bss + run.stack_bytes_used
    assert run.seconds > 0


@pytest.mark.slow
@needs_tools
def test_narrow_maps_stored_bit_dense_are_bit_exact_on_the_m4(tmp_path):
    """The bit-dense layout (1 to 31 channels, rows starting anywhere in a word) on the M4: the
    graphs of ``graphgen.narrow_case_from_seed`` that tests/test_runtime_c.py runs on the host."""
    cases = [narrow_case_from_seed(seed) for seed in range(N_GRAPHS)]
    stored = [plan_memory(case.graph).dense & plan_memory(case.graph).materialized for case in cases]
    assert sum(map(bool, stored)) > N_GRAPHS // 2
    for case, image in zip(cases, build_mcus([case.graph for case in cases], tmp_path, "cortex-m4")):
        assert_same(image, case.x, f"cortex-m4, narrow_case_from_seed({case.seed})")


@pytest.mark.slow
@needs_tools
def test_ebnn16_arena_on_m4_is_its_bit_dense_maps(tmp_path):
    """ebnn_cnn (16, 32): the arena holds the image (784 B) and the bit-dense 16-channel 14x14 map
    (3,136 bits) it becomes, later that map and the 32-channel 7x7 map, and nothing else; the
    harness keeps no image buffer of its own."""
    rng = np.random.default_rng(1)
    graph = ebnn16(rng)
    x = rng.integers(0, 256, (32, 1, 28, 28), dtype=np.uint8)
    image = build_mcu(graph, tmp_path, "cortex-m4")
    assert_same(image, x, "ebnn16 on cortex-m4")
    nm = subprocess.run(["arm-none-eabi-nm", "-S", str(image.elf)], capture_output=True, text=True, check=True)
    sizes = {line.split()[-1]: int(line.split()[1], 16) for line in nm.stdout.splitlines() if len(line.split()) == 4}
    assert sizes["bnn_arena"] == 784 + 3136 // 8 and "input" not in sizes


@needs_tools
@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m4"])
def test_int16_thresholds_at_their_edges_in_the_assembly(tmp_path, target):
    """The fused kernels read int16 thresholds, clamped, where every sum fits: the M4's assembly
    (the u8 patch in registers, the pair loop of 288-bit patches) and the M3's C, at the edges."""
    rng = np.random.default_rng(5)
    graph = edge_cnn(rng)
    assert "#define SIGN_THRESH_16" in c_runtime.generate_c(graph)["bnn.c"]
    x = np.concatenate([rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8), np.full((1, 1, 6, 6), 255, np.uint8)])
    labels = assert_same(build_mcu(graph, tmp_path, target), x, f"edge_cnn on {target}")
    assert len(set(labels.tolist())) > 1


def _dense_graph(width: int) -> Graph:
    rng = np.random.default_rng(width)
    ops = [
        Op("flatten", ["input"], "f"),
        Op("input_dense", ["f"], "d1", {}, {"weight": rng.random((256, 256)) < 0.5}),
        Op(
            "threshold",
            ["d1"],
            "s",
            {},
            {"thresh": rng.integers(-500, 500, 256).astype(np.int32), "flip": rng.random(256) < 0.5},
        ),
        Op("binary_dense", ["s"], "d2", {}, {"weight": rng.random((width, 256)) < 0.5}),
        Op("argmax", ["d2"], "y"),
    ]
    return Graph((1, 16, 16), ops)


@needs_tools
def test_sizes_follow_the_weights_and_every_target_runs(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    small = build_mcu(_dense_graph(16), tmp_path / "small", "cortex-m4").size
    big = build_mcu(_dense_graph(1024), tmp_path / "big", "cortex-m4").size
    extra_weights = (1024 - 16) * 256 // 8
    assert extra_weights <= big.rodata - small.rodata < extra_weights + 64
    # the compiler specialises a kernel called once to its layer's constants: code differs a little
    assert abs(big.text - small.text) < 128 and big.data == small.data
    extra_arena = plan_memory(_dense_graph(1024)).arena_bytes - plan_memory(_dense_graph(16)).arena_bytes
    assert big.bss - small.bss == extra_arena + 4 * (1024 - 16)  # and the harness's scores
    texts = {}
    for target in TARGETS:
        image = build_mcu(_dense_graph(16), tmp_path / target, target, stack_size=1024)
        assert_same(image, x, target)
        texts[target] = image.size.text
        assert image.size.stack == 1024 and 0 < image.run(x[:1]).stack_bytes_used < 1024
    assert texts["cortex-m3"] > texts["cortex-m4"]  # the M3 links the soft-float routines


@needs_tools
def test_stack_overflow_is_reported(tmp_path):
    image = build_mcu(ebnn16(np.random.default_rng(0)), tmp_path, "cortex-m3", stack_size=64)
    with pytest.raises(BnnkitError, match="stack overflow"):
        image.predict(np.zeros((2, 1, 28, 28), np.uint8))


def _tiny_graph() -> Graph:
    w = np.ones((2, 4), bool)
    ops = [Op("flatten", ["input"], "f"), Op("input_dense", ["f"], "d", {}, {"weight": w}), Op("argmax", ["d"], "y")]
    return Graph((1, 2, 2), ops)


def _with_body(monkeypatch, body: str) -> None:
    """Replace the generated inference function by one that runs ``body``."""
    real = c_runtime.generate_c

    def generate(graph, prefix):
        sources = real(graph, prefix)
        sources[f"{prefix}.c"] = (
            f'#include "{prefix}.h"\nstatic uint8_t image[4];\n'
            f"uint8_t *{prefix}_input_buffer(void)\n{{\n    return image;\n}}\n"
            f"int {prefix}_infer(const uint8_t *input, float *scores)\n"
            f"{{\n    (void)input;\n    (void)scores;\n    {body}\n}}\n"
        )
        return sources

    monkeypatch.setattr(c_runtime, "generate_c", generate)  # build_mcus writes through c.write_sources


@needs_tools
def test_faults_and_hangs_are_errors(tmp_path, monkeypatch):
    x = np.zeros((1, 1, 2, 2), np.uint8)
    _with_body(monkeypatch, "__builtin_trap();")  # an undefined instruction: UsageFault
    with pytest.raises(BnnkitError, match=r"(?s)status 4 \(fault\).*exception 0x00000006"):
        build_mcu(_tiny_graph(), tmp_path / "trap", "cortex-m7").predict(x)
    _with_body(monkeypatch, "for (;;) {}")
    with pytest.raises(BnnkitError, match="did not finish 1 images in 1 s"):
        build_mcu(_tiny_graph(), tmp_path / "hang", "cortex-m4").run(x, timeout=1)


@needs_tools
def test_compile_errors_carry_the_compiler_output(tmp_path, monkeypatch):
    _with_body(monkeypatch, "return missing;")
    with pytest.raises(BnnkitError, match="(?s)C compilation failed.*arm-none-eabi-gcc.*missing"):
        build_mcu(_tiny_graph(), tmp_path, "cortex-m3")


@needs_tools
def test_the_image_links_no_c_library(tmp_path, monkeypatch):
    # newlib's memcpy, memset and strlen were 0.7 KB of every image: a call of one fails the link
    _with_body(monkeypatch, "extern int rand(void);\n    return rand();")
    with pytest.raises(BnnkitError, match="(?s)links no C library.*undefined reference to .rand"):
        build_mcu(_tiny_graph(), tmp_path, "cortex-m4")
    monkeypatch.undo()
    elf = build_mcu(_tiny_graph(), tmp_path / "plain", "cortex-m4").elf
    nm = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    assert not {"memcpy", "memset", "strlen"} & {line.split()[-1] for line in nm.splitlines()}


@needs_tools
def test_an_image_larger_than_the_board_is_an_error(tmp_path):
    ops = [
        Op("input_conv2d", ["input"], "c", {"stride": 1, "padding": 0}, {"weight": np.ones((5, 1, 1, 1), bool)}),
        Op("maxpool", ["c"], "p", {"kernel": 64, "stride": 64}),
        Op("flatten", ["p"], "f"),
        Op("argmax", ["f"], "y"),
    ]
    graph = Graph((1, 512, 512), ops)
    assert plan_memory(graph).arena_bytes > 4 << 20
    with pytest.raises(BnnkitError, match="(?s)does not fit the MPS2 board.*RAM"):
        build_mcu(graph, tmp_path, "cortex-m4")


def test_missing_toolchain_names_the_packages(tmp_path):
    with pytest.raises(BnnkitError, match="bnnkit-no-such-gcc.*gcc-arm-none-eabi libnewlib-arm-none-eabi"):
        build_mcu(_tiny_graph(), tmp_path, toolchain="bnnkit-no-such-")


def test_missing_newlib_names_the_packages(tmp_path):
    # a stand-in compiler that fails as arm-none-eabi-gcc does without newlib's headers
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "gcc": """echo "x.c:1:10: fatal error: stdint.h: No such file or directory" >&2; exit 1""",
        "size": "",
    }
    for tool, script in scripts.items():
        (bin_dir / f"fake-{tool}").write_text(f"#!/bin/sh\n{script}\nexit 0\n")
        (bin_dir / f"fake-{tool}").chmod(0o755)
    with pytest.raises(BnnkitError, match="newlib's C headers are missing.*libnewlib-arm-none-eabi"):
        build_mcu(_tiny_graph(), tmp_path / "work", toolchain=f"{bin_dir}/fake-")


def test_missing_qemu_names_the_package(tmp_path):
    image = McuImage(
        _tiny_graph(), tmp_path / "x.elf", TARGETS["cortex-m4"], 0, McuSize(0, 0, 0, 0, 8), qemu="bnnkit-no-such-qemu"
    )
    with pytest.raises(BnnkitError, match="'bnnkit-no-such-qemu' found; install the Debian package qemu-system-arm"):
        image.predict(np.zeros((1, 1, 2, 2), np.uint8))


def test_bad_arguments_are_errors(tmp_path):
    with pytest.raises(
        BnnkitError, match="unknown Cortex-M target 'cortex-m0'; choose one of cortex-m3, cortex-m4, cortex-m7"
    ):
        build_mcu(_tiny_graph(), tmp_path, "cortex-m0")
    with pytest.raises(BnnkitError, match="stack_size must be a positive multiple of 8"):
        build_mcu(_tiny_graph(), tmp_path, stack_size=100)
    with pytest.raises(BnnkitError, match="one distinct prefix per graph"):
        build_mcus([_tiny_graph(), _tiny_graph()], tmp_path, prefixes=["a", "a"])
    image = McuImage(_tiny_graph(), tmp_path / "x.elf", TARGETS["cortex-m4"], 0, McuSize(0, 0, 0, 0, 8))
    with pytest.raises(BnnkitError, match="uint8"):
        image.predict(np.zeros((1, 1, 2, 2), np.float32))


@needs_tools
def test_cli_run_on_cortex_m_reports_agreement_and_footprint(tmp_path, capsys):
    import json

    import torch

    from bnnkit.cli import main
    from bnnkit.export import export_model
    from bnnkit.models import create_model

    torch.manual_seed(0)
    graph = export_model(create_model("ebnn_cnn", 10, (1, 8, 8), "embedded", channels=[8, 16]), (1, 8, 8))
    graph.meta["dataset"] = "digits"
    graph.save(tmp_path / "m.bnn")
    assert main(["run", str(tmp_path / "m.bnn"), "--runtime", "cortex-m3", "--limit", "200", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 200 and r["agreement"] == 1.0 and r["bit_exact"]
    d = r["device"]
    assert d["board"] == "mps2-an385" and d["flash_bytes"] == d["text"] + d["rodata"] + d["data"]
    assert d["ram_bytes"] == d["data"] + d["bss"] + d["stack_bytes_used"] and d["bss"] >= plan_memory(graph).arena_bytes


@needs_tools
def test_instruction_counts_are_deterministic_and_track_the_work(tmp_path):
    from bnnkit.apps.fit import Candidate, candidate_graph

    rng = np.random.default_rng(0)
    big = ebnn_cnn(rng)  # the small_cnn shape: ~19M binary MACs
    x = rng.integers(0, 256, (3, *big.input_shape), dtype=np.uint8)
    image = build_mcu(big, tmp_path / "big", "cortex-m4")
    first = image.run(x, count_instructions=True)
    again = image.run(x, count_instructions=True)
    assert first.instructions == again.instructions > 0
    per_image = image.instructions_per_inference(x)
    # x[0] once more in front, minus x[0] alone: boot and the end-of-run stack scan cancel
    assert per_image == (image.run(np.concatenate([x[:1], x]), count_instructions=True).instructions
                         - image.run(x[:1], count_instructions=True).instructions) / 3  # fmt: skip
    one = image.instructions_per_inference(x[:1])
    assert abs(one - per_image) < 0.2 * per_image  # only early-stopping pools make images differ
    tiny = candidate_graph(Candidate("ebnn_cnn", {"channels": [8], "kernel": 3}), big.input_shape, 10)
    tiny_count = build_mcu(tiny, tmp_path / "tiny", "cortex-m4").instructions_per_inference(x[:1])
    assert 0 < 20 * tiny_count < per_image  # 8 channels vs 32-32-64-64-256: far less work


@needs_tools
def test_profile_shows_measured_beside_analytic(tmp_path, capsys):
    import json

    from bnnkit.apps.fit import Candidate, candidate_graph
    from bnnkit.cli import main

    graph = candidate_graph(Candidate("ebnn_cnn", {"channels": [8, 16], "kernel": 3}), (1, 8, 8), 10)
    graph.save(tmp_path / "m.bnn")
    assert main(["profile", str(tmp_path / "m.bnn"), "--target", "cortex-m4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    d = r["device"]
    assert d["flash_bytes"] > r["totals"]["weight_bytes"]  # code and word padding on top of the packed weights
    assert (
        d["ram_bytes"] >= r["memory"]["arena_bytes"]
        and d["instructions_per_inference"] > r["totals"]["binary_macs"] / 32
    )
    assert main(["profile", str(tmp_path / "m.bnn"), "--target", "cortex-m4"]) == 0
    assert "measured on cortex-m4" in capsys.readouterr().out


@needs_tools
@pytest.mark.slow
def test_per_layer_instructions_sum_to_the_inference_and_macs_match_graph_cost(tmp_path, capsys):
    import json

    from bnnkit.apps.fit import Candidate, candidate_graph
    from bnnkit.cli import main
    from bnnkit.cost.graph_cost import profile

    rng = np.random.default_rng(3)
    graph = candidate_graph(Candidate("ebnn_cnn", {"channels": [16, 32], "kernel": 3}), (1, 12, 12), 10)
    x = rng.integers(0, 256, (2, *graph.input_shape), dtype=np.uint8)
    marked = build_mcu(graph, tmp_path / "marked", "cortex-m4", layer_marks=True)
    assert_same(marked, x, "built with layer marks")
    per_step, whole = marked.layer_instructions(x)
    steps = plan_memory(graph).steps
    assert per_step.shape == (len(steps),) and (per_step > 0).all()
    # the harness's loop between two inferences (read an image, write its scores, the mark
    # after the inference) is all the whole count holds beyond the layers
    assert 0 < whole - per_step.sum() <= 80
    # a mark is a call and a return per step: the plain build counts that much less
    plain = build_mcu(graph, tmp_path / "plain", "cortex-m4").instructions_per_inference(x)
    assert 0 < whole - plain <= 6 * (len(steps) + 1)
    graph.save(tmp_path / "m.bnn")
    assert main(["profile", str(tmp_path / "m.bnn"), "--target", "cortex-m4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["device"]
    assert [layer["ops"] for layer in d["layers"]] == [list(step.ops) for step in steps]
    macs = [op["binary_macs"] for op in profile(graph)["layers"]]
    assert [layer["binary_macs"] for layer in d["layers"]] == [sum(macs[i] for i in step.ops) for step in steps]
    assert sum(layer["binary_macs"] for layer in d["layers"]) == profile(graph)["totals"]["binary_macs"] > 0
    # profile counts one black image: its layers and harness add up to its whole count
    total = sum(layer["instructions"] for layer in d["layers"]) + d["harness_instructions"]
    assert 0 < d["harness_instructions"] <= 80 and abs(total - d["instructions_per_inference"]) <= 6 * (len(steps) + 1)
    for layer in d["layers"]:
        if layer["binary_macs"]:
            assert layer["instructions_per_binary_mac"] == layer["instructions"] / layer["binary_macs"]
    assert main(["profile", str(tmp_path / "m.bnn"), "--target", "cortex-m4"]) == 0
    assert "measured per layer on cortex-m4" in capsys.readouterr().out
    with pytest.raises(BnnkitError, match="built without layer marks"):
        build_mcu(graph, tmp_path / "plain", "cortex-m4").layer_instructions(x)


@needs_tools
@pytest.mark.slow
def test_the_u8_layer_sums_with_usada8_where_the_core_has_dsp(tmp_path):
    from bnnkit.apps.fit import Candidate, candidate_graph

    graph = candidate_graph(Candidate("ebnn_cnn", {"channels": [8, 16], "kernel": 3}), (1, 10, 10), 10)
    x = np.random.default_rng(4).integers(0, 256, (6, 1, 10, 10), dtype=np.uint8)
    disassembly = {}
    for name, target, flags in (("m4", "cortex-m4", []), ("m4-plain", "cortex-m4", ["-DBNNKIT_NO_DSP"]),
                                ("m3", "cortex-m3", []), ("m7", "cortex-m7", [])):  # fmt: skip
        image = build_mcu(graph, tmp_path / name, target, cflags=flags)
        assert_same(image, x, name)
        disassembly[name] = subprocess.run(
            ["arm-none-eabi-objdump", "-d", str(image.elf)], capture_output=True, text=True, check=True
        ).stdout
    assert "usada8" in disassembly["m4"] and "usada8" in disassembly["m7"]
    assert "usada8" not in disassembly["m3"] and "usada8" not in disassembly["m4-plain"]


@needs_tools
def test_cli_build_writes_an_image_that_runs(tmp_path, capsys):
    import json

    from bnnkit.apps.fit import Candidate, candidate_graph
    from bnnkit.cli import main

    graph = candidate_graph(Candidate("ebnn_cnn", {"channels": [8], "kernel": 3}), (1, 8, 8), 10)
    graph.save(tmp_path / "m.bnn")
    assert main(["build", str(tmp_path / "m.bnn"), "--target", "cortex-m7", "-o", str(tmp_path / "m7"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    elf = Path(r["elf"])
    assert elf.is_file() and r["board"] == "mps2-an500" and r["flash_bytes"] == r["text"] + r["rodata"] + r["data"]
    # the ELF on disk is the one a run uses: same bytes from a fresh build of the same graph
    again = build_mcu(graph, tmp_path / "again", "cortex-m7")
    assert again.size.flash == r["flash_bytes"]
    image = McuImage(graph, elf, TARGETS["cortex-m7"], 0, again.size)
    assert_same(image, np.random.default_rng(1).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8), "built by the CLI")
    assert main(["build", str(tmp_path / "m.bnn"), "--target", "host", "-o", str(tmp_path / "host"), "--json"]) == 0
    assert Path(json.loads(capsys.readouterr().out)["executable"]).is_file()


@pytest.mark.slow
@needs_tools
def test_every_popcount_variant_is_bit_exact_on_the_m3(tmp_path):
    from bnnkit.runtime.c import POPCOUNT_VARIANTS

    rng = np.random.default_rng(2)
    graph = ebnn_cnn(rng)
    x = rng.integers(0, 256, (4, *graph.input_shape), dtype=np.uint8)
    sizes, symbols = {}, {}
    for variant in POPCOUNT_VARIANTS:
        image = build_mcu(graph, tmp_path / variant, "cortex-m3", cflags=[f"-DBNNKIT_POPCOUNT_{variant}"])
        assert_same(image, x, variant)
        sizes[variant] = image.size
        symbols[variant] = _symbols(image.elf)
    # the table variant carries its 256 bytes; the builtin is libgcc's routine on the M3
    assert sizes["TABLE"].rodata >= sizes["SWAR"].rodata + 256
    assert "__popcountsi2" in symbols["BUILTIN"] and "__popcountsi2" not in symbols["SWAR"]
