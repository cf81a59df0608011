"""The files users keep. Each is written all at once (temp file + fsync + rename), so an
interruption at any instant leaves the old file or the new one, never half of one; a log
of JSON lines is read back with every bad line named. A directory that a job writes over
its whole span (a run, a review, a fit) is held by one process at a time.

No torch here: the C code generator writes through these too, and must start fast.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bnnkit.errors import BnnkitError

# Read once, at import: reading the umask means setting it, which would race with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# atomic_write's temporaries: ".NAME.PID.RANDOM.tmp" (PID since this version; before, ".NAME.RANDOM.tmp")
_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")
# A temporary this old whose writer is gone was left by a kill; younger ones may belong to a
# writer in another PID namespace (a container sharing the directory) that is still at work.
STALE_SECONDS = 10.0
LOCK = ".bnnkit.lock"


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` all at once; a failure to write is a ``BnnkitError``
    naming the file, and leaves any previous version untouched."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    remove_stale_temporaries(path.parent)
    tmp = None
    try:
        # mkstemp makes its file private (0600); the result gets the mode a plain open() would give it
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries that a killed ``atomic_write`` left in ``directory`` (kill -9
    between create and rename); returns them. Only files named the way atomic_write names
    them, older than ``STALE_SECONDS`` and whose writer's PID is no live process are
    removed: another writer's temporary in the same directory is never touched."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or (match["pid"] is not None and _alive(int(match["pid"]))):
            continue
        with suppress(OSError):
            if (
                entry.is_file(follow_symlinks=False)
                and now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            ):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or no PID at all: not ours to judge
    return True


@contextmanager
def exclusive(directory: str | Path, what: str) -> Iterator[None]:
    """Hold ``directory``'s lock (``LOCK``, an flock) for the span of the block: a second
    bnnkit process that wants to write it gets a ``BnnkitError`` naming the holder's PID.
    The kernel drops the lock when its holder dies (kill -9 included), so a lock file left
    behind blocks nobody; a holder that finishes removes it."""
    path = Path(directory) / LOCK
    fd = _lock(path, what)
    try:
        yield
    finally:
        # Unlinked while still held: whoever opened it meanwhile sees it replaced, and retries.
        with suppress(OSError):
            path.unlink()
        os.close(fd)


def _lock(path: Path, what: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BnnkitError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise BnnkitError(
                f"{path.parent}: another bnnkit process (PID {holder}) is writing this {what}; "
                "wait for it to finish or choose another directory"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)  # its holder finished and removed it between our open and our flock
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    # The holder writes its PID just after it gets the lock: give it a moment.
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


@contextmanager
def created_dir(path: str | Path, what: str) -> Iterator[Path]:
    """``make_dir(path)`` for the span of a job that may fail: where it does, the
    directories this call created are removed again if they are empty, so a failed job
    (a full disk, a bad input found late) leaves no empty directory behind."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    make_dir(path, what)
    try:
        yield path
    except BaseException:
        for p in missing:
            try:
                p.rmdir()
            except OSError:  # not empty: someone else's files, or what the job keeps
                break
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
