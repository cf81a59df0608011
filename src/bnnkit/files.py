"""The files users keep. Each is written all at once (temp file + fsync + rename), so an
interruption at any instant leaves the old file or the new one, never half of one; a log
of JSON lines is read back with every bad line named.

No torch here: the C code generator writes through these too, and must start fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bnnkit.errors import BnnkitError

# Read once, at import: reading the umask means setting it, which would race with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` all at once; a failure to write is a ``BnnkitError``
    naming the file, and leaves any previous version untouched."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        # mkstemp makes its file private (0600); the result gets the mode a plain open() would give it
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # The rename is durable only once the directory entry is on disk too.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BnnkitError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise


def make_dir(path: str | Path, what: str) -> Path:
    """``mkdir -p``, with a ``BnnkitError`` naming ``path`` where that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnnkitError(f"{path}: cannot create the {what} ({exc.strerror})") from None
    return path


def read_json_lines(path: str | Path, what: str, key: str, fix: str) -> list[dict]:
    """The records of a JSON-lines file, each an object with ``key``, blank lines skipped; a
    line that is not one is a ``BnnkitError`` naming the line, ``what`` it should have been
    and ``fix``. A missing file has no records."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise BnnkitError(f"{path}: cannot read ({exc.strerror})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or key not in row:
            raise BnnkitError(f"{path}: line {number} is not {what}{fix}")
        rows.append(row)
    return rows
