"""The C the generator copies (runtime/c_kernels/kernels.c) as C of its own: every section
compiles alone with exactly the sections it says it needs, the file is formatted, and the
toolchain module finds, names and runs the compilers (``$CC`` included)."""

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import case_from_seed

from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op
from bnnkit.runtime import c_library, numpy_ref, toolchain
from bnnkit.runtime.c import POPCOUNT_VARIANTS, THRESH16_DEFINE, generate_c
from bnnkit.runtime.host import build_host

C_KERNELS = Path(str(resources.files("bnnkit.runtime") / "c_kernels"))
MCU = Path(str(resources.files("bnnkit.runtime") / "mcu"))
# What a generated .c provides above its kernels: <stddef.h>, and <stdint.h> through its header.
PRELUDE = "#include <stddef.h>\n#include <stdint.h>\n"
# compiled, not only parsed: gcc -fsyntax-only does not report unused static functions
STRICT = [*toolchain.CFLAGS, "-c", "-o", os.devnull]


def defined_functions(text: str) -> set[str]:
    """The functions a section defines, written out or through a *_KERNEL(name, ...) macro."""
    return set(re.findall(r"^static \w+ (\w+)\(", text, re.M)) | set(re.findall(r"^\w+_KERNEL\((\w+),", text, re.M))


def compile_unit(tmp_path: Path, name: str, source: str, *flags: str) -> None:
    path = tmp_path / f"{name}.c"
    path.write_text(source)
    proc = subprocess.run(["gcc", *STRICT, *flags, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kernel {name} {' '.join(flags)}:\n{proc.stderr}"


def test_each_kernel_compiles_with_exactly_what_it_needs(tmp_path):
    """A section with its closure alone, under -Wall -Wextra -Werror: a need left out is an
    undeclared function or struct, a need too many an unused static function; both fail."""
    kernels = c_library.kernels()
    callable_ = [name for name, k in kernels.items() if name in defined_functions(k.text)]
    # the 14 kernels the emitter calls, and the helpers they call
    assert {"input_conv_sign", "binary_conv_sign", "threshold", "affine_f32", "argmax_i32", "bit_at"} <= set(callable_)
    for name in callable_:
        closure = c_library.closure([name])
        # the kernel itself is kept by taking its address, as a call in {prefix}_infer would
        keep = f"typedef void (*bnnkit_fn)(void);\nbnnkit_fn bnnkit_keep = (bnnkit_fn){name};\n"
        source = PRELUDE + "\n\n".join(c_library.kernel_sources([name])) + "\n" + keep
        variants = POPCOUNT_VARIANTS if "popcount" in closure else ("default",)
        for variant in variants:
            compile_unit(tmp_path, name, source, *([] if variant == "default" else [f"-DBNNKIT_POPCOUNT_{variant}"]))


def test_the_kernel_file_compiles_on_its_own():
    for variant in POPCOUNT_VARIANTS:
        cmd = ["gcc", *STRICT, "-Wno-unused-function", f"-DBNNKIT_POPCOUNT_{variant}", str(C_KERNELS / "kernels.c")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_sections_come_after_what_they_need_and_reach_the_generated_c_unmarked():
    kernels = c_library.kernels()
    order = list(kernels)
    for name, kernel in kernels.items():
        assert all(order.index(need) < order.index(name) for need in kernel.needs), name
        closure = c_library.closure([name])
        assert closure == [n for n in order if n in closure] and set(kernel.needs) <= set(closure)
    for seed in range(8):
        source = generate_c(case_from_seed(seed).graph, "net")["net.c"].replace(f"{THRESH16_DEFINE}\n\n", "")
        called = set(re.findall(r"^    (?:return )?(\w+)\(", source.split("int net_infer(")[1], re.M))
        kernels_part = "\n\n".join(c_library.kernel_sources(called))
        assert f'#include "net.h"\n\n{kernels_part}\n\nstatic ' in source and "bnnkit:kernel" not in source


def test_a_need_not_defined_above_or_a_section_defined_twice_is_an_error():
    with pytest.raises(ValueError, match="^kernels.c: kernel b needs c, not defined above it$"):
        c_library.parse_kernels("/* bnnkit:kernel a */\nint a;\n/* bnnkit:kernel b needs a c */\nint b;\n")
    with pytest.raises(ValueError, match="^x.c: kernel a is defined twice$"):
        c_library.parse_kernels("/* bnnkit:kernel a */\nint a;\n/* bnnkit:kernel a */\nint b;\n", "x.c")
    parsed = c_library.parse_kernels("head\n/* bnnkit:kernel a */\nint a;\n\n/* bnnkit:kernel b needs a */\nint b;\n")
    assert [(k.name, k.needs, k.text) for k in parsed.values()] == [("a", (), "int a;"), ("b", ("a",), "int b;")]


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format not installed (Debian: clang-format)")
def test_the_c_is_formatted():
    """`make format-c` (the project's .clang-format) would change nothing."""
    files = [*sorted(C_KERNELS.glob("*.[ch]")), *sorted(MCU.glob("*.[ch]"))]  # what `make format-c` formats
    proc = subprocess.run(
        ["clang-format", "--dry-run", "-Werror", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr


# --- the toolchain ----------------------------------------------------------------------


def _tiny_graph() -> Graph:
    w = np.random.default_rng(0).random((3, 12)) < 0.5
    return Graph(
        (3, 2, 2),
        [Op("flatten", ["input"], "f"), Op("input_dense", ["f"], "d", {}, {"weight": w}), Op("argmax", ["d"], "y")],
    )


def test_c_portable_compiles_with_cc_and_its_flags(tmp_path, monkeypatch):
    """$CC as make takes it: a command and its flags. The wrapper records every call."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "my-cc"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec gcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", f"{wrapper} -DBNNKIT_POPCOUNT_TABLE")
    from bnnkit.runtime.registry import RUNTIMES

    graph = _tiny_graph()
    x = np.random.default_rng(1).integers(0, 256, (8, 3, 2, 2), dtype=np.uint8)
    with RUNTIMES["c-portable"].prepare(graph) as predictor:
        got = predictor.predict(x)
    calls = log.read_text().splitlines()
    assert len(calls) == 3  # the model, the harness, the link
    assert all(call.startswith("-DBNNKIT_POPCOUNT_TABLE -std=c99") for call in calls)
    assert sorted(Path(call.split(" -c ")[1].split()[0]).name for call in calls[:2]) == ["g0.c", "harness.c"]
    want = numpy_ref.predict(graph, x)
    assert np.array_equal(got.scores, want[0]) and np.array_equal(got.labels, want[1])


def test_a_missing_compiler_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "bnnkit-no-such-cc")
    with pytest.raises(BnnkitError) as error:
        build_host(_tiny_graph(), tmp_path)
    assert str(error.value) == (
        "no C compiler 'bnnkit-no-such-cc' found; install the Debian package gcc (apt-get install gcc), or set $CC"
    )
    with pytest.raises(BnnkitError) as error:
        toolchain.cross_tools("bnnkit-no-such-")
    assert str(error.value) == (
        "no Arm cross compiler 'bnnkit-no-such-gcc' found; install the Debian packages gcc-arm-none-eabi "
        "libnewlib-arm-none-eabi (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"
    )


def test_a_failing_tool_is_one_line_then_its_output(tmp_path):
    fails = ["sh", "-c", "echo 'x.c:1: error: oops' >&2; exit 3"]
    with pytest.raises(BnnkitError) as error:
        toolchain.run_tool(fails, "C compilation")
    assert (
        str(error.value)
        == "C compilation failed: sh -c 'echo '\"'\"'x.c:1: error: oops'\"'\"' >&2; exit 3'\nx.c:1: error: oops"
    )
    with pytest.raises(BnnkitError) as error:
        toolchain.run_tool(fails, "linking", [("nothing like it", "no"), ("oops", "the model is too big")])
    assert str(error.value) == "linking failed: the model is too big\nx.c:1: error: oops"
    with pytest.raises(BnnkitError) as error:
        toolchain.run_tool([str(tmp_path / "gone")], "linking")
    assert str(error.value) == f"linking failed: cannot run '{tmp_path / 'gone'}' (No such file or directory)"
    assert toolchain.run_tool(["sh", "-c", "echo fine"], "echo") == "fine\n"
