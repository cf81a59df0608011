"""Text tables of costs, shared by the model summary, the graph profile and the reports; no torch."""

from __future__ import annotations

from collections.abc import Sequence


def kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.2f} KiB"


def render_table(lines: Sequence[tuple[str, ...]], left: int, total: bool = True) -> list[str]:
    """Header, rows and (with ``total``) a total row as aligned text: the first ``left``
    columns flush left, numbers flush right, rules under the header and above the total."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    if total:
        text.insert(len(text) - 1, "-" * len(text[0]))
    return text
