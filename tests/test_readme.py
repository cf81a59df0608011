"""The README's "Using it" and "Export and run on a device" run top to bottom as written,
at a reduced size.

The README holds what a user types. The test shrinks only the amount of work, by
appending flags to the commands (a later flag of the same name wins in argparse, so the
README's own values stay in the line): ``train`` gets ``--epochs 1 --limit-train 512``,
``export`` ``--check 200`` and ``run`` ``--limit 200``. Everything else — the order, the
paths, the recipe that makes the export possible — is the README's.
"""

import re
import shutil
from pathlib import Path

import pytest
from helpers.docblocks import ROOT, blocks, run_shell, user_env

SECTIONS = ("Using it", "Export and run on a device")
SMALLER = {"train": "--epochs 1 --limit-train 512", "export": "--check 200", "run": "--limit 200"}


def reduced(line: str) -> str:
    command, hash_, comment = line.partition("  #")  # the README aligns its comments two spaces or more away
    words = command.split()
    if len(words) >= 2 and words[0] == "bnnkit" and words[1] in SMALLER:
        command = f"{command.rstrip()} {SMALLER[words[1]]}"
    return f"{command.rstrip()}  #{comment}" if hash_ else command


def test_reduced_keeps_the_command_and_its_comment():
    assert (
        reduced("bnnkit run cnn.bnn --runtime c --json          # {...}")
        == "bnnkit run cnn.bnn --runtime c --json --limit 200  # {...}"
    )
    assert reduced("bnnkit profile cnn.bnn") == "bnnkit profile cnn.bnn"
    assert reduced("                                               # c: fast host kernels").strip().startswith("#")


def readme_commands() -> list[str]:
    found = [b for b in blocks(ROOT / "README.md") if b.heading in SECTIONS and b.lang == "bash"]
    assert [b.heading for b in found] == list(SECTIONS), "each section has one bash block"
    return [reduced(line) for b in found for line in b.code.splitlines()]


def test_readme_commands_need_no_quoting_in_any_shell():
    """zsh expands an unquoted [ ] as a glob and fails on no match; every README command line
    quotes them (inside '...' or "...")."""
    lines = [line for b in blocks(ROOT / "README.md") if b.lang == "bash" for line in b.code.splitlines()]
    lines += re.findall(r"`((?:bnnkit|pip|torchrun|python) [^`]*)`", (ROOT / "README.md").read_text())
    for line in lines:
        unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", line.partition("#")[0])
        assert "[" not in unquoted and "]" not in unquoted, line


@pytest.mark.slow
def test_using_it_runs_top_to_bottom(tmp_path):
    from bnnkit.data import resolve_dir

    if not (resolve_dir("fashion_mnist") or Path("/nonexistent")).is_dir():
        pytest.skip("the README's commands use Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("the README runs the graph on a Cortex-M4 in QEMU (gcc-arm-none-eabi, qemu-system-arm)")
    commands = readme_commands()
    assert any("--recipe embedded" in c for c in commands if c.startswith("bnnkit train"))
    proc = run_shell("\n".join(commands), tmp_path, user_env(tmp_path), timeout=1200)
    assert '"n": 10000' in proc.stdout  # eval on the whole test set
    assert "bit-identical scores" in proc.stdout and "energy, MCU datasheet model" in proc.stdout
    assert (tmp_path / "c_src/bnn.c").is_file() and (tmp_path / "fw/bnnkit-cortex-m4.elf").is_file()
