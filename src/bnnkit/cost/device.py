"""What a graph's Cortex-M4 image should take: flash and RAM estimated before it is built.

``bnnkit review --measure`` compares these with the measured image (``bnnkit.review.report``);
``graph_cost.profile`` and ``model_costs`` keep their parameters-only and activations-only
meaning. The model, each term as the C generator (``bnnkit.runtime.c``) lays the image out:

* flash = ``HARNESS_FLASH`` (start-up, semihosting harness, vector table) + the sections of the
  generated C compiled for the M4 with the image's flags (an object, not linked or run) that the
  linker keeps (``linked_bytes``): its code (``.text``) and its constants (``.rodata``, ``.data``);
* RAM = ``HARNESS_RAM`` + the harness's score buffer + the generated static buffers (the
  planned arena with the input's slot, the patch and int8 scratch) + the stack: ``HARNESS_STACK`` (the frame of the
  harness's ``main`` below the inference) + the deepest call chain from ``{prefix}_infer``,
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

from bnnkit.graph import Graph
from bnnkit.runtime.c import generate_c
from bnnkit.runtime.toolchain import CROSS_PREFIX

TARGET = "cortex-m4"
# The measured image less what the linker keeps of the compiled object of its generated C: 811-831 B over
# ebnn_cnn, ebnn16 and graphgen seeds 0-29, 819 on 25 of the 32 (benchmarks/device_estimate.py): the start-up
# code, semihosting and harness, no C library.
HARNESS_FLASH = 819
HARNESS_RAM = 8  # semihosting arguments
# main's frame below the call of {prefix}_infer (run_main is naked; reset_handler is on the main stack)
HARNESS_STACK = 40
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


# objdump -h -r -t of an object: its sections, its symbols, and the relocations of each section
_HEADER = re.compile(r"^\s*\d+ (\.(?:text|rodata|data)\S*)\s+([0-9a-f]+) ", re.M)
_SYMBOL = re.compile(r"^[0-9a-f]+ (.{7}) (\S+)\t[0-9a-f]+ (\S+)$", re.M)
_RELOCATIONS = re.compile(r"^RELOCATION RECORDS FOR \[(\S+)\]:\n.*\n((?:[0-9a-f]+ .*\n)*)", re.M)


def linked_bytes(objdump: str) -> dict[str, int]:
    """Bytes of ``text``, ``rodata`` and ``data`` that ``--gc-sections`` keeps of an object
    (``objdump -h -r -t`` of it, compiled with a section per function and per object): the
    sections of its global symbols and what their relocations reach. gcc emits some functions
    that no call is left to (a NOINLINE kernel whose calls were folded away); the linker drops
    them."""
    sizes = {name: int(n, 16) for name, n in _HEADER.findall(objdump)}
    home = {name: section for flags, section, name in _SYMBOL.findall(objdump)}
    roots = [section for flags, section, _ in _SYMBOL.findall(objdump) if flags[0] == "g"]
    refs: dict[str, set[str]] = {}
    for section, records in _RELOCATIONS.findall(objdump):
        for line in records.splitlines():
            target = line.split()[-1].partition("+0x")[0].partition("-0x")[0]  # a symbol or section, less its addend
            refs.setdefault(section, set()).add(home.get(target, target))
    kept: set[str] = set()
    todo = [r for r in roots if r in sizes]
    while todo:
        section = todo.pop()
        if section not in kept:
            kept.add(section)
            todo += [t for t in refs.get(section, ()) if t in sizes]
    section_bytes = dict.fromkeys(("text", "rodata", "data"), 0)
    for section in kept:
        section_bytes[section[1:].split(".")[0]] += sizes[section]
    return section_bytes


def compile_unit(
    sources: dict[str, str], unit: str, toolchain: str = CROSS_PREFIX, extra: tuple[str, ...] = ()
) -> tuple[dict[str, int], dict[str, set[str]], dict[str, int]]:
    """The C file ``unit`` of ``sources`` (file name -> text) compiled for the M4 with the image's
    flags and ``extra``: each function's frame in bytes, the functions of the file it calls, and
    the bytes of ``text``, ``rodata`` and ``data`` the linker keeps of the object (``linked_bytes``)."""
    from bnnkit.runtime.toolchain import CROSS_PACKAGES, cross_tools, find_tool, run_tool

    gcc, _ = cross_tools(toolchain)
    objdump = find_tool(f"{toolchain}objdump", "Arm cross compiler", CROSS_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="bnnkit-stack-") as d:
        for name, text in sources.items():
            (Path(d) / name).write_text(text)
        out = str(Path(d) / "unit.o")  # gcc writes unit.su and unit.ci beside it
        flags = [*_m4_flags(), *extra, "-fstack-usage", "-fcallgraph-info=su", "-c", str(Path(d) / unit), "-o", out]
        run_tool([gcc, *flags], f"compiling {unit} for the device estimate")
        graph = (Path(d) / "unit.ci").read_text()
        sections = run_tool([objdump, "-h", "-r", "-t", out], f"reading the sections of {unit}")
    frames = {_name(title): int(size) for title, size in _NODE.findall(graph)}
    calls: dict[str, set[str]] = {}
    for caller, callee in _EDGE.findall(graph):
        calls.setdefault(_name(caller), set()).add(_name(callee))
    return frames, calls, linked_bytes(sections)


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
    harness = HARNESS_RAM + 4 * graph.num_classes  # the scores; the image is read into the arena
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
    """``HARNESS_STACK`` recomputed: the frames on the process stack below the call of the
    inference (``run_main``, naked, and the harness's ``main``), in a build of ``graph``.
    ``reset_handler``'s frame is on the main stack, which the image's RAM does not count."""
    from importlib import resources

    from bnnkit.runtime.c_library import harness_sources
    from bnnkit.runtime.toolchain import MCU_HARNESS_CFLAGS

    mcu = resources.files("bnnkit.runtime") / "mcu"
    sources = {name: (mcu / name).read_text() for name in ("startup.c", "harness.c", "mcu.h")}
    sources |= generate_c(graph, "bnn") | harness_sources([graph], ["bnn"])
    startup, _, _ = compile_unit(sources, "startup.c", toolchain, MCU_HARNESS_CFLAGS)
    harness, _, _ = compile_unit(sources, "harness.c", toolchain, MCU_HARNESS_CFLAGS)
    return startup["run_main"] + harness["main"]
