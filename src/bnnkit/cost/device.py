"""What a graph's Cortex-M4 image should take: flash and RAM estimated before it is built.

``bnnkit review --measure`` compares these with the measured image (``bnnkit.review.report``);
``graph_cost.profile`` and ``model_costs`` keep their parameters-only and activations-only
meaning. The model, each term as the C generator (``bnnkit.runtime.c``) lays the image out:

* flash = ``HARNESS_FLASH`` (start-up, semihosting harness, vector table, the libc functions they
  pull in) + the sections of the generated C compiled for the M4 with the image's flags (an
  object, not linked or run): its code (``.text``) and its constants (``.rodata``, ``.data``);
* RAM = ``HARNESS_RAM`` + the harness's input and score buffers + the generated static buffers
  (the planned arena, the patch and int8 scratch) + the stack: ``HARNESS_STACK`` (the frames of
  the start-up and ``main`` below the inference) + the deepest call chain from ``{prefix}_infer``,
  found by compiling the generated C for the M4 with the image's flags (an object, not linked or
  run): arm-none-eabi-gcc's ``-fstack-usage`` gives each function's frame and
  ``-fcallgraph-info=su`` its calls. The frames are what gcc reserves: which kernels it inlines
  into ``{prefix}_infer`` or specialises to a layer changes them by hundreds of bytes, so no table
  of kernel frames predicts them (one was tried: 26% to 32% short on deep stacks). The device
  writes a little less than it reserves, so the measured stack is at most this and a few dozen
  bytes below it.

HARNESS_FLASH is the measured image less that object on M4 builds (docs/review-protocol.md
section 5 has the tables); ``harness_stack()`` recomputes HARNESS_STACK from the harness sources,
and a slow test keeps the two equal.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.graph import Graph
from bnnkit.runtime.c import generate_c
from bnnkit.runtime.toolchain import CROSS_PREFIX

TARGET = "cortex-m4"
# The measured image less the compiled object of its generated C: 1,229-2,069 B over ebnn_cnn, ebnn16, the
# even graphgen seeds 0-28 and seed 23 (the libc functions the harness pulls in, section alignment, code the
# linker drops); 1,850 puts every one of those 18 builds within ±10% (-8.4% to +8.4%).
HARNESS_FLASH = 1850
HARNESS_RAM = 8  # semihosting arguments
HARNESS_STACK = 56  # reset_handler 8 + main 48: the frames below the call of {prefix}_infer
_CTYPE_BYTES = {"uint8_t": 1, "int8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4, "float": 4}
_ARRAY = re.compile(r"^static (const )?(\w+) \w+\[(\d+)\]", re.M)


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _buffers(source: str) -> int:
    """Bytes of the generated C's static buffers (its arrays that are not ``const``)."""
    return sum(
        _align4(_CTYPE_BYTES[ctype] * int(n))
        for is_const, ctype, n in _ARRAY.findall(source)
        if not is_const and ctype in _CTYPE_BYTES
    )


def _m4_flags() -> list[str]:
    from bnnkit.runtime.cortex_m import TARGETS
    from bnnkit.runtime.toolchain import MCU_CFLAGS

    return [*TARGETS[TARGET].cflags, *MCU_CFLAGS]


_NODE = re.compile(r'^node: \{ title: "([^"]+)" label: "[^"]*\\n(\d+) bytes', re.M)
_EDGE = re.compile(r'^edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', re.M)


def _name(title: str) -> str:
    return title.rsplit(":", 1)[-1]  # gcc titles a static function "file.c:name"


_SECTION = re.compile(r"^\.(text|rodata|data)\S*\s+(\d+)", re.M)


def compile_unit(
    sources: dict[str, str], unit: str, toolchain: str = CROSS_PREFIX
) -> tuple[dict[str, int], dict[str, set[str]], dict[str, int]]:
    """The C file ``unit`` of ``sources`` (file name -> text) compiled for the M4 with the image's
    flags: each function's frame in bytes, the functions of the file it calls, and the object's
    bytes of ``text``, ``rodata`` and ``data`` sections."""
    from bnnkit.runtime.toolchain import cross_tools, run_tool

    gcc, size = cross_tools(toolchain)
    with tempfile.TemporaryDirectory(prefix="bnnkit-stack-") as d:
        for name, text in sources.items():
            (Path(d) / name).write_text(text)
        out = str(Path(d) / "unit.o")  # gcc writes unit.su and unit.ci beside it
        flags = [*_m4_flags(), "-fstack-usage", "-fcallgraph-info=su", "-c", str(Path(d) / unit), "-o", out]
        run_tool([gcc, *flags], f"compiling {unit} for the device estimate")
        graph = (Path(d) / "unit.ci").read_text()
        sections = run_tool([size, "-A", out], f"reading the sections of {unit}")
    frames = {_name(title): int(size) for title, size in _NODE.findall(graph)}
    calls: dict[str, set[str]] = {}
    for caller, callee in _EDGE.findall(graph):
        calls.setdefault(_name(caller), set()).add(_name(callee))
    section_bytes = dict.fromkeys(("text", "rodata", "data"), 0)
    for kind, n in _SECTION.findall(sections):
        section_bytes[kind] += int(n)
    return frames, calls, section_bytes


def deepest_chain(function: str, frames: dict[str, int], calls: dict[str, set[str]]) -> int:
    """``function``'s frame plus the deepest chain of its callees (a callee without a frame, one
    outside the file such as a libc function, counts 0). The generated C calls nothing
    recursively."""
    return frames.get(function, 0) + max((deepest_chain(c, frames, calls) for c in calls.get(function, ())), default=0)


def device_estimate(graph: Graph) -> dict[str, Any]:
    """The estimated Cortex-M4 flash and RAM of ``graph``'s image, with the parts that add up to
    them. Compiles the generated C for its sections and stack: needs the Arm cross compiler."""
    sources = generate_c(graph, "bnn")
    frames, calls, sections = compile_unit(sources, "bnn.c")
    code = HARNESS_FLASH + sections["text"]
    constants = sections["rodata"] + sections["data"]
    buffers = _buffers(sources["bnn.c"])
    harness = HARNESS_RAM + _align4(int(np.prod(graph.input_shape))) + 4 * graph.num_classes
    stack = HARNESS_STACK + deepest_chain("bnn_infer", frames, calls)
    return {
        "target": TARGET,
        "flash_bytes": code + constants,
        "ram_bytes": harness + buffers + stack,
        "code_bytes": code,
        "constant_bytes": constants,
        "buffer_bytes": buffers + harness,
        "stack_bytes": stack,
    }


def harness_stack(graph: Graph, toolchain: str = CROSS_PREFIX) -> int:
    """``HARNESS_STACK`` recomputed: the frames on the path from the M4 start-up to the call of
    the inference (``reset_handler``, ``run_main``, the harness's ``main``), in a build of ``graph``."""
    from importlib import resources

    from bnnkit.runtime.c_library import harness_sources

    mcu = resources.files("bnnkit.runtime") / "mcu"
    sources = {name: (mcu / name).read_text() for name in ("startup.c", "harness.c", "mcu.h")}
    sources |= generate_c(graph, "bnn") | harness_sources([graph], ["bnn"])
    startup, _, _ = compile_unit(sources, "startup.c", toolchain)
    harness, _, _ = compile_unit(sources, "harness.c", toolchain)
    return startup["reset_handler"] + startup["run_main"] + harness["main"]
