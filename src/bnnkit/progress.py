"""Progress of long work: a tqdm bar on a terminal, a plain line now and then in a log.

tqdm redraws its bar in place with carriage returns. Written to a file or a pipe (CI,
``nohup``, ``2> log``) every redraw stays: one demo left 258 KB of them. Off a terminal,
``progress`` therefore prints one whole line at most every ``interval`` seconds, and one
when a loop that printed ends, so a log can be read and grepped. ``stage`` announces a
step that has no iterations to count (a QEMU launch, a compilation) and its time.

``progress`` takes the subset of tqdm's interface that bnnkit uses — iteration,
``update``, ``set_postfix``, ``set_postfix_str``, ``write``, ``close``, ``with`` — so a
call site swaps ``tqdm(...)`` for ``progress(...)`` and nothing else. Everything goes to
stderr except ``write``, which prints to stdout like ``tqdm.write`` (results, not noise).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

INTERVAL = 30.0  # seconds between lines off a terminal: a line per epoch or run, not per batch


def write(message: str, file: TextIO | None = None) -> None:
    """Print ``message`` (to stdout by default) without tearing a bar on the terminal."""
    from tqdm import tqdm

    tqdm.write(message, file=file if file is not None else sys.stdout)


class Progress:
    """An iterable (or a manual counter, with ``update``) that reports as it goes."""

    write = staticmethod(write)

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = INTERVAL,
        tty: bool | None = None,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.n = initial
        self.desc, self.unit, self.interval = desc, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.postfix = ""
        self.lines = 0  # plain lines printed so far
        self._closed = False
        self._bar = None
        if enabled and (_is_terminal(self.stream) if tty is None else tty):
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=initial,
                desc=desc,
                unit=unit,
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
            )
        self._start = self._last = time.monotonic()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this Progress counts with update(); it was given nothing to iterate")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()))

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.lines:  # a loop short enough to print nothing stays silent
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._last = now
        elapsed = now - self._start
        count = (
            f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else f"{self.n:,} {self.unit}"
        )
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        postfix = f"; {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} after {_duration(elapsed)}{rate}{postfix}", file=self.stream, flush=True)
        self.lines += 1


def progress(iterable: Iterable | None = None, **options: Any) -> Progress:
    """``tqdm(iterable, ...)`` for bnnkit: options ``total``, ``initial``, ``desc``,
    ``unit``, ``enabled`` (False: silent), ``stream`` (default stderr), ``interval``
    (seconds between plain lines) and ``tty`` (default: whether ``stream`` is a terminal)."""
    return Progress(iterable, **options)


@contextlib.contextmanager
def stage(desc: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """Say ``desc ...`` when a step starts and how long it took when it ends."""
    if not enabled:
        yield
        return
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    write(f"{desc} ...", stream)
    yield
    write(f"{desc}: done in {_duration(time.monotonic() - start)}", stream)


def _length(iterable: Iterable | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
