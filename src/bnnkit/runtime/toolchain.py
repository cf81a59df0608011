"""The C toolchains of every C path: which compiler, which flags, and one way to run a tool.

Host builds (the generated C of ``c-portable``, the fast kernels of ``c``, the QEMU
instruction-counting plugin) use ``host_cc``: the ``cc`` a caller passes, else ``$CC``
(split like a shell word list, as make does: ``CC="ccache gcc"`` works), else ``gcc``,
else ``cc``. Cortex-M builds use the ``arm-none-eabi-`` tools (``cross_tools``). A missing
tool is one error line naming the Debian package that brings it; a failing tool is one
line saying what failed, then the tool's own output (a compiler's diagnostics).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from bnnkit.errors import BnnkitError

# The generated C, on the host and on the device: strict C99, and floats rounded as the
# NumPy reference rounds them (no FMA contraction).
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-ffp-contract=off")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")
# The fast host kernels (host_kernels/bconv.c): a shared library; each instruction set's code
# carries its own target attribute, so one build serves every CPU. OPENMP is tried first.
FAST_CFLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unknown-pragmas")
OPENMP = ("-fopenmp",)
# The Cortex-M image: sections per function so the linker drops what no model calls. No C
# library is linked (newlib's memcpy, memset and strlen were 0.7 KB of flash), so gcc must not
# turn the start-up code's copy and zeroing loops, the semihosting string length or a kernel's
# loop into calls of them; libgcc, after the objects, brings the M3's soft floats.
MCU_CFLAGS = (*CFLAGS, "-ffunction-sections", "-fdata-sections", "-fno-tree-loop-distribute-patterns")
MCU_LDFLAGS = ("-nostdlib", "-Wl,--gc-sections")
# The start-up code, semihosting and harness (mcu/): a few dozen instructions per image, so
# they are built for size.
MCU_HARNESS_CFLAGS = ("-Os",)
MCU_LDLIBS = ("-lgcc",)
# The QEMU TCG plugin (mcu/insn_count.c), loaded by the host's QEMU.
PLUGIN_CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC")

HOST_PACKAGES = "gcc"
CROSS_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi"
QEMU_PACKAGE = "qemu-system-arm"
QEMU = "qemu-system-arm"  # the emulator of the Cortex-M runtimes
CROSS_PREFIX = "arm-none-eabi-"


def install_hint(packages: str) -> str:
    plural = "s" if " " in packages else ""
    return f"install the Debian package{plural} {packages} (apt-get install {packages})"


def find_tool(name: str, what: str, packages: str) -> str:
    """The path of ``name``, or a ``BnnkitError`` naming the packages that bring it."""
    path = shutil.which(name)
    if path is None:
        raise BnnkitError(f"no {what} {name!r} found; {install_hint(packages)}")
    return path


def host_cc(cc: str | Sequence[str] | None = None) -> list[str]:
    """The host C compiler as a command (the compiler, then any flags ``$CC`` carries)."""
    if cc is None:
        cc = os.environ.get("CC") or next((name for name in ("gcc", "cc") if shutil.which(name)), None)
        if cc is None:
            raise BnnkitError(f"no C compiler (gcc or cc) found; {install_hint(HOST_PACKAGES)}, or set $CC")
    command = shlex.split(cc) if isinstance(cc, str) else list(cc)
    if not command:
        raise BnnkitError("$CC is set but empty; name a C compiler (e.g. CC=gcc)")
    if shutil.which(command[0]) is None:
        raise BnnkitError(f"no C compiler {command[0]!r} found; {install_hint(HOST_PACKAGES)}, or set $CC")
    return command


def cross_tools(prefix: str = CROSS_PREFIX) -> tuple[str, str]:
    """The Arm cross compiler and its ``size`` tool."""
    gcc, size = (find_tool(f"{prefix}{tool}", "Arm cross compiler", CROSS_PACKAGES) for tool in ("gcc", "size"))
    return gcc, size


def run_tool(cmd: Sequence[str], what: str, hints: Sequence[tuple[str, str]] = ()) -> str:
    """Run ``cmd``; its stdout. On failure a ``BnnkitError``: ``what failed:`` and the first
    of ``hints`` — (text to find in the tool's output, what it means) — that matches, else
    the command, then the tool's output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True)
    except OSError as e:  # the tool vanished or is not executable: the same one line as a missing one
        raise BnnkitError(f"{what} failed: cannot run {cmd[0]!r} ({e.strerror})") from None
    if proc.returncode == 0:
        return proc.stdout
    output = (proc.stderr + proc.stdout).strip()
    why = next((meaning for needle, meaning in hints if needle in output), shlex.join(cmd))
    raise BnnkitError(f"{what} failed: {why}\n{output}")
