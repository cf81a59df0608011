"""Writing the files users keep: each one replaced all at once (temp file + fsync + rename),
so an interruption at any instant leaves the old file or the new one, never half of one.

No torch here: the C code generator writes through these too, and must start fast.
"""

from __future__ import annotations

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
