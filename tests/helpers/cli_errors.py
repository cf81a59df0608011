"""The harness for user errors at the command line: exit 2, one `error:` line, nothing written."""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bnnkit.cli import main


@dataclass
class Bad:
    args: list[str]
    names: str  # the file (or tool) the message must name
    problem: str  # and a word of what is wrong with it
    outputs: list[Path] = field(default_factory=list)  # must not appear, or stay byte for byte as they were


@dataclass
class Ctx:
    tmp: Path
    run: Path  # a trained run, and its exported graph: copied before any change
    graph: Path
    monkeypatch: pytest.MonkeyPatch

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        return dst


def snapshot(path: Path):
    """What is at ``path``: None, a file's bytes, or a directory's files and their bytes."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def assert_one_clear_line(bad: Bad, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``bnnkit BAD.args`` exits 2 with one ``error:`` line naming the file and the problem, and writes nothing."""
    before = {p: snapshot(p) for p in bad.outputs}
    capsys.readouterr()
    assert main(bad.args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert bad.names in err and bad.problem.lower() in err.lower(), err
    assert "Traceback" not in out + err and out == ""
    for path, was in before.items():
        assert snapshot(path) == was, f"{path} was written"
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"
