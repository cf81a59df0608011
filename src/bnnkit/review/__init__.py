"""The empirical review: a grid of recipes × seeds trained locally or on Ray, one SQLite
store of results, resumable at any point, then tables and plots of accuracy against cost.

The names below are imported on first use: the grid and the runner train (torch), the report reads the
store (SQLite) and draws (matplotlib), so `bnnkit report` runs without torch."""

from bnnkit import _lazy_attributes

_LAZY = {
    **dict.fromkeys(
        ["Grid", "RunSpec", "expand", "load_grid", "methods_override", "preset_names"], "bnnkit.review.grid"
    ),
    **dict.fromkeys(["summarize", "write_report"], "bnnkit.review.report"),
    **dict.fromkeys(["EXECUTORS", "execute", "run_review"], "bnnkit.review.runner"),
    "Store": "bnnkit.review.store",
}

__all__ = sorted(_LAZY)

__getattr__ = _lazy_attributes(__name__, _LAZY)
