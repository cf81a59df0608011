"""The code blocks of the project's Markdown pages, and a shell to run them in as a user
would: the tests that keep README.md and docs/python-api.md runnable use both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bnnkit

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(bnnkit.__file__).resolve().parents[1]  # the sources under test, not an installed copy


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    heading: str  # the last Markdown heading before the block
    marker: str | None  # an HTML comment on the line just before the fence, e.g. "file: my_models.py"


def blocks(path: Path) -> list[Block]:
    found, heading, marker = [], "", None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```") and line[3:].strip():
            end = lines.index("```", i + 1)
            found.append(Block(line[3:].strip(), "\n".join(lines[i + 1 : end]) + "\n", heading, marker))
            marker, i = None, end
        elif line.startswith("#"):
            heading, marker = line.lstrip("#").strip(), None
        elif m := re.fullmatch(r"<!--\s*(.*?)\s*-->", line.strip()):
            marker = m.group(1)
        elif line.strip():
            marker = None  # a marker belongs to the block right after it
        i += 1
    return found


def user_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``bnnkit`` is the console script of the sources under test:
    ``python -P`` leaves the current directory off ``sys.path``, as the installed script does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "bnnkit"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -P -m bnnkit "$@"\n')
    script.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def run_shell(script: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``script`` in bash, stopping at the first failing command."""
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{script}\nexit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc
