"""The Cortex-M runtime: the C of ``bnnkit.runtime.c`` cross-compiled for an Arm Cortex-M3,
M4 or M7 and run in QEMU's MPS2 boards (AN385, AN386, AN500).

The image is the project's own: start-up code (vector table, reset handler, fault
handlers), a linker script for the boards' memory map and a harness, all in ``mcu/``, no
vendor SDK. The harness exchanges files with the host through Arm semihosting, so one QEMU
launch runs a whole batch of images; it also reports the stack's high-water mark, found by
painting the stack at reset. Sizes come from the ELF's sections (``arm-none-eabi-size``).

A run whose stack reached the bottom of its region fails with "stack overflow" (the
stack sits at the bottom of RAM and the fault handlers have their own, so the report
survives the overflow). An overflow by less than one stack frame can leave the bottom
word unwritten; it then shows as a fault or as wrong results, so leave a margin over
``stack_bytes_used``.

Toolchain (``bnnkit.runtime.toolchain``): ``arm-none-eabi-gcc`` with newlib's headers
(``stdint.h``, ``string.h``); no C library is linked, only ``libgcc`` for soft floats on the M3.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import make_dir
from bnnkit.graph import Graph
from bnnkit.graph.plan import plan_memory
from bnnkit.progress import stage
from bnnkit.runtime.c import write_sources
from bnnkit.runtime.c_library import harness_sources
from bnnkit.runtime.numpy_ref import check_input
from bnnkit.runtime.toolchain import (
    CROSS_PACKAGES,
    CROSS_PREFIX,
    MCU_CFLAGS,
    MCU_HARNESS_CFLAGS,
    MCU_LDFLAGS,
    MCU_LDLIBS,
    PLUGIN_CFLAGS,
    QEMU,
    QEMU_PACKAGE,
    cross_tools,
    find_tool,
    host_cc,
    install_hint,
    run_tool,
)


@dataclass(frozen=True)
class Target:
    name: str
    machine: str  # the QEMU board
    cflags: tuple[str, ...]
    clock_hz: float  # a typical part's clock, for the latency estimate (see latency_estimate)
    part: str
    # The part's datasheet run-mode current per MHz and the supply it is quoted at, for the
    # device energy estimate; None where we have no datasheet figure to cite.
    ua_per_mhz: float | None = None
    volts: float | None = None
    datasheet: str | None = None


TARGETS = {
    "cortex-m3": Target(
        "cortex-m3", "mps2-an385", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), 72e6, "STM32F103"
    ),
    "cortex-m4": Target(
        "cortex-m4",
        "mps2-an386",
        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        80e6,
        "STM32L412",
        79.0,
        3.0,
        "STM32L412xx datasheet DS12469 Rev 7: 79 µA/MHz run mode, LDO, at VDD 3.0 V assumed",
    ),
    "cortex-m7": Target(
        "cortex-m7",
        "mps2-an500",
        ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
        216e6,
        "STM32F746",
    ),
}


def latency_estimate(target: Target, instructions: float) -> dict[str, Any]:
    """Cycles and milliseconds per inference from a counted instruction total, under a
    stated model: one cycle per instruction (the M3/M4 issue single-cycle ALU operations
    and the code here is mostly those; loads, taken branches and flash wait states add
    cycles, the M7's dual issue removes some), at the clock of a typical part; and, where
    the part's datasheet gives its run-mode current, the energy of those cycles."""
    estimate: dict[str, Any] = {
        "cycles_estimate": instructions,
        "clock_hz": target.clock_hz,
        "part": target.part,
        "latency_ms_estimate": 1e3 * instructions / target.clock_hz,
        "latency_model": "1 cycle per instruction",
    }
    if target.ua_per_mhz is not None and target.volts is not None:
        # I/MHz × V is energy per cycle: µA/MHz × V = pJ per cycle
        estimate["energy_uj_estimate"] = instructions * target.ua_per_mhz * target.volts * 1e-6
        estimate["energy_model"] = f"{target.ua_per_mhz * target.volts:g} pJ per cycle, {target.datasheet}"
    return estimate


_MCU_SOURCES = ("startup", "semihost", "harness")
# A prefix names the model's .c and .h: these would overwrite the harness's own files.
_TAKEN_PREFIXES = ("bnnkit_models", "mcu", *_MCU_SOURCES)
# What the cross compiler's and linker's complaints mean
_TOO_BIG = (
    "the image does not fit the MPS2 board's 4 MiB of code memory or 4 MiB of RAM (see bnnkit/runtime/mcu/mps2.ld)"
)
_HINTS = (
    ("stdint.h: No such file", f"newlib's C headers are missing; {install_hint(CROSS_PACKAGES)}"),
    (
        "undefined reference to",
        "the image links no C library (toolchain.MCU_LDFLAGS) and the code calls a function it lacks",
    ),
    ("overflowed", _TOO_BIG),
    ("will not fit in region", _TOO_BIG),
)
_TRAILER = 0x4B4E4E42  # "BNNK", after the last record of bnnkit.out
# the harness's exit statuses (mcu/mcu.h): the image prints no text for them
_EXIT_STATUS = {
    2: "cannot open bnnkit.in or bnnkit.out through semihosting",
    3: "bnnkit.in names no model of this image",
    4: "fault",
    5: "stack overflow; build with a larger stack_size",
    6: "bnnkit.in ends with a partial image",
    7: "cannot read an image from bnnkit.in",
    8: "cannot write bnnkit.out",
}


@dataclass(frozen=True)
class McuSize:
    """Section sizes of the ELF in bytes (all of its models together). Not counted: the
    256-byte stack of the reset and fault handlers, an artefact of the harness."""

    text: int  # code and the vector table (flash)
    rodata: int  # constants: weights, thresholds, layer descriptors (flash)
    data: int  # initialised variables (flash and RAM)
    bss: int  # zeroed variables: the arenas and the harness's buffers (RAM)
    stack: int  # reserved for the stack (RAM)

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def static_ram(self) -> int:
        return self.data + self.bss


@dataclass(frozen=True)
class McuRun:
    """What one QEMU launch returned."""

    scores: np.ndarray  # float32 (N, classes)
    labels: np.ndarray  # int64 (N,)
    stack_bytes_used: int  # high-water mark of main's stack: harness, inference, exception frames
    ram_bytes: int  # data + bss + stack used
    seconds: float  # wall time of the launch, boot included
    instructions: int | None = None  # guest instructions of the launch, when counted
    # with layer marks: the running count at each bnnkit_layer_mark() (before every step of each image, then after it)
    marks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class McuImage:
    """A graph compiled into a Cortex-M ELF; ``run``/``predict`` execute it in QEMU."""

    graph: Graph
    elf: Path
    target: Target
    index: int  # which of the ELF's models
    size: McuSize
    qemu: str = QEMU
    mark_address: int | None = None  # of bnnkit_layer_mark() in an image built with layer_marks

    def run(self, x: np.ndarray, *, timeout: float | None = None, count_instructions: bool = False) -> McuRun:
        """Run uint8 images (N, C, H, W) in one QEMU launch; ``timeout`` in seconds
        defaults to 60 plus one per image. With ``count_instructions`` the launch's guest
        instructions are counted (boot and harness included) by bnnkit's TCG plugin."""
        x = np.ascontiguousarray(check_input(self.graph, x))
        qemu = find_tool(self.qemu, "emulator", QEMU_PACKAGE)
        limit = 60.0 + len(x) if timeout is None else timeout
        machine = self.target.machine
        cmd = [qemu, "-machine", machine, "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(self.elf.resolve())]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="bnnkit-qemu-") as tmp:
            if count_instructions:
                counted = Path(tmp) / "instructions.txt"
                mark = "" if self.mark_address is None else f",mark={self.mark_address:x}"
                cmd[1:1] = ["-plugin", f"{_instruction_counter(Path(tmp))},out={counted}{mark}"]
            (Path(tmp) / "bnnkit.in").write_bytes(struct.pack("<I", self.index) + x.tobytes())
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, timeout=limit)
            except subprocess.TimeoutExpired:
                raise BnnkitError(
                    f"{self.elf} did not finish {len(x)} images in {limit:g} s on QEMU {machine}"
                ) from None
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                why = _EXIT_STATUS.get(proc.returncode, "QEMU failed")
                output = (proc.stderr + proc.stdout).decode(errors="replace").strip()
                raise BnnkitError(
                    f"{self.elf} exited with status {proc.returncode} ({why}) on QEMU {machine}:\n{output}"
                )
            out = (Path(tmp) / "bnnkit.out").read_bytes()
            counts = [int(line) for line in counted.read_text().split()] if count_instructions else []
        k = self.graph.num_classes
        record = np.dtype([("scores", "<f4", (k,)), ("label", "<i4")])
        if len(out) != len(x) * record.itemsize + 8 or struct.unpack_from("<I", out, len(out) - 8)[0] != _TRAILER:
            raise BnnkitError(f"{self.elf} wrote {len(out)} bytes for {len(x)} images")
        records = np.frombuffer(out, dtype=record, count=len(x))
        used = self.size.stack - struct.unpack_from("<I", out, len(out) - 4)[0]
        return McuRun(
            scores=records["scores"].astype(np.float32).reshape(len(x), k),
            labels=records["label"].astype(np.int64),
            stack_bytes_used=used,
            ram_bytes=self.size.static_ram + used,
            seconds=seconds,
            instructions=counts[0] if count_instructions else None,
            marks=tuple(counts[1:]) if count_instructions and self.mark_address is not None else None,
        )

    def counted_run(self, x: np.ndarray) -> tuple[McuRun, float]:
        """A launch over images ``x`` with instructions counted, and the mean instructions
        of one inference (with the harness's read and write of its image): that launch, with
        ``x[0]`` run once more in front, minus a launch of ``x[0]`` alone. So boot and
        harness set-up cancel out, and so does the harness's scan of the stack at the end,
        whose length depends on how deep the inference went. The run returned has the extra
        image first. Counts are deterministic; they vary between images only where pooling
        stops early."""
        if len(x) == 0:
            raise BnnkitError("counting instructions needs at least one image")
        base = self.run(x[:1], count_instructions=True).instructions
        run = self.run(np.concatenate([x[:1], x]), count_instructions=True)
        assert base is not None and run.instructions is not None  # count_instructions
        return run, (run.instructions - base) / len(x)

    def instructions_per_inference(self, x: np.ndarray) -> float:
        """Mean guest instructions of one inference over images ``x`` (see ``counted_run``)."""
        return self.counted_run(x)[1]

    def layer_instructions(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean guest instructions of each step of the memory plan (``plan_memory(graph).steps``)
        over images ``x``, float64 (steps,), and of the whole inference as ``counted_run``
        counts it, from the same image, which must be built with ``layer_marks``. A step's
        count runs from its mark to the next one, so it includes the call of its kernel and of
        its mark (a few instructions); the last step's ends after the inference returns. What
        the whole counts beyond the steps is the harness's work for one image."""
        if self.mark_address is None:
            raise BnnkitError(f"{self.elf} was built without layer marks (build_mcu(..., layer_marks=True))")
        run, whole = self.counted_run(x)
        steps, n = len(plan_memory(self.graph).steps), len(x) + 1  # counted_run's extra image first
        marks = np.asarray(run.marks, dtype=np.int64)
        if marks.size != n * (steps + 1):
            raise BnnkitError(f"{self.elf} left {marks.size} layer marks for {n} images of {steps} steps")
        return np.diff(marks.reshape(n, steps + 1)[1:], axis=1).mean(axis=0), whole

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 (N, classes) and labels int64 (N,) of uint8 images (N, C, H, W)."""
        result = self.run(x)
        return result.scores, result.labels

    def measure(self, x: np.ndarray, progress: bool = False) -> tuple[McuRun, dict[str, Any]]:
        """Run images ``x`` and count instructions on the first ``COUNTED_IMAGES``: the run,
        and a report of everything measured (JSON-ready). With ``progress`` each phase says
        when it starts and ends (one QEMU launch runs a whole batch, so there is nothing
        finer to count)."""
        name = self.target.name
        with stage(f"{name}: {len(x):,} images in QEMU {self.target.machine}", progress):
            run = self.run(x)
        with stage(f"{name}: counting instructions on {min(len(x), COUNTED_IMAGES)} images", progress):
            instructions = self.instructions_per_inference(x[:COUNTED_IMAGES])
        return run, device_report(self, run, instructions, min(len(x), COUNTED_IMAGES))


COUNTED_IMAGES = 20  # instructions are counted on the first images: the mean needs no more


def measure(
    graph: Graph, target: str, x: np.ndarray, workdir: str | Path, progress: bool = False
) -> tuple[McuRun, dict[str, Any]]:
    """Build ``graph`` for ``target`` under ``workdir``, then ``McuImage.measure`` images ``x``."""
    with stage(f"{target}: cross-compiling", progress):
        image = build_mcu(graph, workdir, target)
    return image.measure(x, progress)


def device_report(image: McuImage, run: McuRun, instructions: float, counted_on: int) -> dict[str, Any]:
    """What ``bnnkit run --json`` reports of a device (JSON-ready): the image's sections, the
    run's stack and RAM, the instructions of one inference and the estimates made from them."""
    size = image.size
    return {
        "target": image.target.name,
        "board": image.target.machine,
        "text": size.text,
        "rodata": size.rodata,
        "data": size.data,
        "bss": size.bss,
        "flash_bytes": size.flash,
        "stack_bytes_used": run.stack_bytes_used,
        "ram_bytes": run.ram_bytes,
        "instructions_per_inference": instructions,
        "instructions_counted_on": counted_on,
        **latency_estimate(image.target, instructions),
    }


def _instruction_counter(workdir: Path) -> Path:
    """bnnkit's QEMU TCG plugin (mcu/insn_count.c) built with the host C compiler."""
    source = workdir / "insn_count.c"
    source.write_text((resources.files("bnnkit.runtime") / "mcu" / "insn_count.c").read_text())
    plugin = workdir / "libinsn_count.so"
    run_tool([*host_cc(), *PLUGIN_CFLAGS, "-o", str(plugin), str(source)], "building the instruction-counting plugin")
    return plugin


def _symbol_address(toolchain: str, elf: Path, name: str) -> int:
    """The address of function ``name`` in ``elf``, without the Thumb bit."""
    nm = find_tool(f"{toolchain}nm", "Arm cross compiler", CROSS_PACKAGES)
    for line in run_tool([nm, str(elf)], "arm-none-eabi-nm").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16) & ~1
    raise BnnkitError(f"{elf} has no symbol {name}")


def _section_sizes(size_tool: str, elf: Path) -> dict[str, int]:
    sizes = {}
    for line in run_tool([size_tool, "-A", str(elf)], "arm-none-eabi-size").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def require_toolchain(toolchain: str = CROSS_PREFIX, qemu: str | None = None) -> tuple[str, str]:
    """The cross compiler and ``size`` tool (and with ``qemu``, that the emulator is there),
    or a ``BnnkitError`` naming the packages: callers check before spending minutes on
    anything else."""
    tools = cross_tools(toolchain)
    if qemu is not None:
        find_tool(qemu, "emulator", QEMU_PACKAGE)
    return tools


def build_mcus(
    graphs: Sequence[Graph],
    workdir: str | Path,
    target: str = "cortex-m4",
    *,
    prefixes: Sequence[str] | None = None,
    stack_size: int = 8192,
    toolchain: str = CROSS_PREFIX,
    qemu: str = QEMU,
    cflags: Sequence[str] = (),
    layer_marks: bool = False,
) -> list[McuImage]:
    """Compile ``graphs`` into one ELF for ``target`` (a key of ``TARGETS``) under
    ``workdir``, each graph under its own prefix (default ``g0``, ``g1``, ...).
    ``toolchain`` prefixes the tool names (``gcc``, ``size``); ``stack_size`` bytes are
    reserved for the stack; ``cflags`` are added to the compiler's (e.g. a popcount
    variant, ``-DBNNKIT_POPCOUNT_TABLE``). With ``layer_marks`` the code marks each layer for
    ``McuImage.layer_instructions`` (a few instructions more per layer)."""
    if target not in TARGETS:
        raise BnnkitError(f"unknown Cortex-M target {target!r}; choose one of {', '.join(TARGETS)}")
    if not graphs:
        raise BnnkitError("build_mcus needs at least one graph")
    if stack_size <= 0 or stack_size % 8:
        raise BnnkitError(f"stack_size must be a positive multiple of 8, not {stack_size}")
    prefixes = list(prefixes) if prefixes is not None else [f"g{i}" for i in range(len(graphs))]
    if len(prefixes) != len(graphs) or len(set(prefixes)) != len(prefixes) or set(prefixes) & set(_TAKEN_PREFIXES):
        raise BnnkitError(f"need one distinct prefix per graph, none of {', '.join(_TAKEN_PREFIXES)}; not {prefixes}")
    cc, size_tool = require_toolchain(toolchain)

    work = make_dir(workdir, "build directory")
    for graph, prefix in zip(graphs, prefixes):
        write_sources(graph, work, prefix, scratch=True, layer_marks=layer_marks)
    mcu = resources.files("bnnkit.runtime") / "mcu"
    for name in (*(f"{s}.c" for s in _MCU_SOURCES), "mcu.h", "mps2.ld"):
        (work / name).write_text((mcu / name).read_text())
    for name, text in harness_sources(graphs, prefixes).items():
        (work / name).write_text(text)

    flags = [*TARGETS[target].cflags, *MCU_CFLAGS, *cflags, *(["-DBNNKIT_LAYER_MARKS"] if layer_marks else [])]
    units = {**dict.fromkeys(prefixes, ()), **dict.fromkeys(_MCU_SOURCES, MCU_HARNESS_CFLAGS)}
    with ThreadPoolExecutor() as pool:
        compiles = (
            [cc, *flags, *own, "-c", str(work / f"{u}.c"), "-o", str(work / f"{u}.o")] for u, own in units.items()
        )
        list(pool.map(lambda cmd: run_tool(cmd, "C compilation", _HINTS), compiles))
    elf = work / f"bnnkit-{target}.elf"
    run_tool(
        [cc, *flags, *MCU_LDFLAGS, f"-Wl,--defsym=__stack_size={stack_size}", "-T", str(work / "mps2.ld"),
         f"-Wl,-Map={elf.with_suffix('.map')}", *(str(work / f"{u}.o") for u in units), *MCU_LDLIBS, "-o", str(elf)],
        "linking",
        _HINTS,
    )  # fmt: skip
    sections = _section_sizes(size_tool, elf)
    size = McuSize(
        text=sections.get(".text", 0),
        rodata=sections.get(".rodata", 0) + sections.get(".ARM.exidx", 0),
        data=sections.get(".data", 0),
        bss=sections.get(".bss", 0),
        stack=sections.get(".stack", 0),
    )
    mark = _symbol_address(toolchain, elf, "bnnkit_layer_mark") if layer_marks else None
    return [McuImage(graph, elf, TARGETS[target], i, size, qemu, mark) for i, graph in enumerate(graphs)]


def build_mcu(
    graph: Graph,
    workdir: str | Path,
    target: str = "cortex-m4",
    *,
    prefix: str = "bnn",
    stack_size: int = 8192,
    toolchain: str = CROSS_PREFIX,
    qemu: str = QEMU,
    cflags: Sequence[str] = (),
    layer_marks: bool = False,
) -> McuImage:
    """Compile ``graph`` with the start-up code and the semihosting harness into an ELF
    for ``target`` under ``workdir`` (see ``build_mcus`` for the options)."""
    return build_mcus(
        [graph],
        workdir,
        target,
        prefixes=[prefix],
        stack_size=stack_size,
        toolchain=toolchain,
        qemu=qemu,
        cflags=cflags,
        layer_marks=layer_marks,
    )[0]
