"""The empirical review: a grid of recipes × seeds trained locally or on Ray, one SQLite
store of results, resumable at any point, then tables and plots of accuracy against cost."""

from bnnkit.review.grid import Grid, RunSpec, expand, load_grid, methods_override, preset_names
from bnnkit.review.report import summarize, write_report
from bnnkit.review.runner import EXECUTORS, execute, run_review
from bnnkit.review.store import Store

__all__ = [
    "EXECUTORS",
    "Grid",
    "RunSpec",
    "Store",
    "execute",
    "expand",
    "load_grid",
    "methods_override",
    "preset_names",
    "run_review",
    "summarize",
    "write_report",
]
