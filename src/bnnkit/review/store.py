"""The review's results: one SQLite file, ``DIR/review.sqlite``, one row per run.

    runs(key PRIMARY KEY,            SHA-256 of the run's configuration and limits
         label, category, kind, study, seed, epochs, model, dataset, limit_train, limit_test,
         config_json,                the RunConfig (recipe included) that rebuilds the run
         status,                     pending | running | done | failed
         stage,                      screen | confirm (bnnkit review --stage)
         top1_final, top1_best,      test accuracy after the last epoch, best over epochs (the
                                     report shows the final one only: choices use validation)
         val_final, val_best,        validation accuracy after the last epoch, best over epochs,
         val_best_epoch, val_curve_json  the epoch of the best, every epoch's (null without validation)
         train_seconds,              training time summed over epochs (resumes included)
         costs_json,                 every cost of bnnkit.cost.model_costs
         cost_<name>...,             the numeric ones again as columns, added as they appear
         error, started_at, finished_at, host,
         measure_target,             the device a finished run was measured on (bnnkit review --measure)
         measure_json,               that device's whole report (Prediction.measured()), or null
         measure_error,              one line: why the run has no measurement (its recipe does not export)
         device_<name>...)           the report's numbers again as columns (MEASURED)
    meta(key PRIMARY KEY, value)     facts every run of the store shares: "validation" (the split's
                                     rule, size and the SHA-256 of its image indices)

Only the review's driver process writes (the workers return their outcome to it), so the
file never sees concurrent writers; WAL mode lets ``bnnkit report`` read while a review
writes, and every commit is durable, so a kill -9 loses at most the run in progress.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnnkit.errors import BnnkitError

if TYPE_CHECKING:  # the grid builds training configs (torch); the store and the report need none
    from bnnkit.review.grid import RunSpec

BASELINE_LABEL, COMBINATION = "baseline", "combination"  # the labels of the rows that are not one method

FILENAME = "review.sqlite"
STATUSES = ("pending", "running", "done", "failed")
COST_PREFIX = "cost_"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    category TEXT NOT NULL,
    kind TEXT NOT NULL,
    study TEXT NOT NULL,
    seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    limit_train INTEGER,
    limit_test INTEGER,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
    top1_final REAL,
    top1_best REAL,
    train_seconds REAL,
    costs_json TEXT,
    error TEXT,
    started_at TEXT,
    finished_at TEXT,
    host TEXT
)
"""
# Added after the first stores were written: ALTER TABLE adds them to an older store on open.
LATER_COLUMNS = {
    "stage": "TEXT NOT NULL DEFAULT 'screen'",
    "val_final": "REAL",
    "val_best": "REAL",
    "val_best_epoch": "INTEGER",
    "val_curve_json": "TEXT",
    "measure_target": "TEXT",
    "measure_json": "TEXT",
    "measure_error": "TEXT",
}
# device_<name>: the report's figure kept as a column (bnnkit.runtime.cortex_m.device_report)
MEASURED = {
    "flash_bytes": "flash_bytes",
    "ram_bytes": "ram_bytes",
    "stack_bytes": "stack_bytes_used",
    "data_bytes": "data",
    "bss_bytes": "bss",
    "instructions": "instructions_per_inference",
    "energy_uj": "energy_uj_estimate",
    # bnnkit.cost.device's estimate of the measured graph (review.measure.measure_run adds it)
    "estimated_flash_bytes": "estimated_flash_bytes",
    "estimated_ram_bytes": "estimated_ram_bytes",
}
LATER_COLUMNS |= {f"device_{name}": "REAL" for name in MEASURED}
META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    """The runs table of ``DIR/review.sqlite``; ``Store(DIR, create=False)`` only reads an existing one."""

    def __init__(self, directory: str | Path, create: bool = True):
        self.path = Path(directory) / FILENAME
        if not create and not self.path.is_file():
            raise BnnkitError(
                f"{directory}: no review store ({FILENAME}); run `bnnkit review GRID --out {directory}` first"
            )
        try:
            # Autocommit; writes open their own transactions. The timeout covers a reader
            # holding the file briefly while the WAL is checkpointed.
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise BnnkitError(f"{self.path}: cannot open the review store ({exc})") from None

    def _migrate(self) -> None:
        """The tables, and the columns later versions added, in one write transaction: two processes
        opening one store at once (a review and its report) would otherwise both add a missing column."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(SCHEMA)
            self.db.execute(META_SCHEMA)
            present = {row["name"] for row in self.db.execute("PRAGMA table_info(runs)")}
            for name, kind in LATER_COLUMNS.items():
                if name not in present:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self.db:  # BEGIN … COMMIT, or ROLLBACK on an error
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(sql, tuple(params))

    def add(self, specs: Iterable[RunSpec]) -> None:
        """Pending rows for the runs not yet in the store; known runs keep their row."""
        rows = [
            (
                s.key,
                s.label,
                s.category,
                s.kind,
                s.study,
                s.config.seed,
                s.config.epochs,
                s.config.model,
                s.config.dataset,
                s.limit_train,
                s.limit_test,
                json.dumps(s.config.to_dict(), sort_keys=True),
                s.stage,
            )
            for s in specs
        ]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (key, label, category, kind, study, seed, epochs, model, dataset,"
                " limit_train, limit_test, config_json, stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def statuses(self) -> dict[str, str]:
        return {key: status for key, status in self.db.execute("SELECT key, status FROM runs")}

    def start(self, key: str, host: str) -> None:
        self._write(
            "UPDATE runs SET status = 'running', started_at = ?, host = ?, error = NULL WHERE key = ?",
            (now(), host, key),
        )

    def finish(self, key: str, outcome: dict[str, Any]) -> None:
        """Record what a worker returned: the metrics and costs of a done run, or the error of a failed one."""
        if outcome["status"] == "failed":
            self._write(
                "UPDATE runs SET status = 'failed', error = ?, finished_at = ?, host = ? WHERE key = ?",
                (outcome["error"], now(), outcome.get("host"), key),
            )
            return
        costs = outcome["costs"]
        numeric = {
            k: float(v)
            for k, v in costs.items()
            if _column_name(k) and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        with self.db:
            # Immediate: the columns this run's costs need and the row are written as one.
            self.db.execute("BEGIN IMMEDIATE")
            present = {row["name"] for row in self.db.execute("PRAGMA table_info(runs)")}
            for name in numeric:
                if COST_PREFIX + name not in present:
                    self.db.execute(f'ALTER TABLE runs ADD COLUMN "{COST_PREFIX}{name}" REAL')
            assignments = "".join(f', "{COST_PREFIX}{name}" = ?' for name in numeric)
            self.db.execute(
                "UPDATE runs SET status = 'done', top1_final = ?, top1_best = ?, val_final = ?, val_best = ?,"
                " val_best_epoch = ?, val_curve_json = ?, train_seconds = ?, costs_json = ?,"
                f" error = NULL, finished_at = ?, host = ?{assignments} WHERE key = ?",
                (
                    outcome["top1_final"],
                    outcome["top1_best"],
                    outcome.get("val_final"),
                    outcome.get("val_best"),
                    outcome.get("val_best_epoch"),
                    json.dumps(outcome["val_curve"]) if outcome.get("val_curve") else None,
                    outcome["train_seconds"],
                    json.dumps(costs),
                    now(),
                    outcome.get("host"),
                    *numeric.values(),
                    key,
                ),
            )

    def unmeasured(self, keys: Iterable[str], target: str) -> list[str]:
        """Of ``keys``, the finished runs with neither a measurement on ``target`` nor a refusal."""
        wanted = set(keys)
        rows = self.db.execute(
            "SELECT key FROM runs WHERE status = 'done' AND (measure_target IS NULL OR measure_target != ?)"
            " ORDER BY rowid",
            (target,),
        )
        return [row["key"] for row in rows if row["key"] in wanted]

    def record_measurement(
        self, key: str, target: str | None, report: dict[str, Any] | None, error: str | None
    ) -> None:
        """A run's device report, or the one-line reason it has none."""
        values = [None if report is None else report.get(source) for source in MEASURED.values()]
        assignments = "".join(f", device_{name} = ?" for name in MEASURED)
        self._write(
            f"UPDATE runs SET measure_target = ?, measure_json = ?, measure_error = ?{assignments} WHERE key = ?",
            (target, None if report is None else json.dumps(report, sort_keys=True), error, *values, key),
        )

    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row["value"])
        except (TypeError, ValueError):
            raise BnnkitError(f"{self.path}: meta {key!r} is not JSON; the store is damaged") from None

    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def rows(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.db.execute("SELECT * FROM runs ORDER BY rowid")]

    def cost_columns(self) -> list[str]:
        """The cost names that have a column, in the order they were first recorded."""
        names = [row["name"] for row in self.db.execute("PRAGMA table_info(runs)")]
        return [n.removeprefix(COST_PREFIX) for n in names if n.startswith(COST_PREFIX)]


def _column_name(name: str) -> bool:
    # Cost names become column names, so only plain identifiers do (all keep their place in costs_json).
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None
