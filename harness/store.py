"""The results store: one SQLite row per run (spec, status, metrics, result, provenance).

SQLite because it is embedded, survives a killed process (each write is its own transaction) and
lets `bench leaderboard` and `bench runs` query without a server. Only the driver process writes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

from .spec import RunSpec, canonical_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    method TEXT NOT NULL,
    backbone TEXT NOT NULL,
    suite TEXT NOT NULL,
    task TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    metrics TEXT,
    result TEXT,
    provenance TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    wall_time_s REAL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_method_suite ON runs (method, suite);
"""

STATUSES = ("running", "finished", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _load(text: str | None) -> Any:
    return json.loads(text) if text else {}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    spec: RunSpec
    status: str
    metrics: dict[str, Any]
    result: dict[str, Any]
    provenance: dict[str, Any]
    error: str | None
    attempts: int
    wall_time_s: float | None
    started_at: str | None
    finished_at: str | None

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def backbone(self) -> str:
        return self.spec.backbone

    @property
    def suite(self) -> str:
        return self.spec.suite

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def seed(self) -> int:
        return self.spec.seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "spec": self.spec.to_dict(),
            "status": self.status,
            "metrics": self.metrics,
            "result": self.result,
            "provenance": self.provenance,
            "error": self.error,
            "attempts": self.attempts,
            "wall_time_s": self.wall_time_s,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path} is not a petlbench results store ({err})") from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"],
            spec=RunSpec.from_dict(json.loads(row["spec"])),
            status=row["status"],
            metrics=_load(row["metrics"]),
            result=_load(row["result"]),
            provenance=_load(row["provenance"]),
            error=row["error"],
            attempts=row["attempts"],
            wall_time_s=row["wall_time_s"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    def get(self, run_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return self._row(row) if row is not None else None

    def is_finished(self, run_id: str) -> bool:
        rec = self.get(run_id)
        return rec is not None and rec.status == "finished"

    def resolve(self, prefix: str) -> RunRecord:
        """A run by its id or an unambiguous prefix of it."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE run_id LIKE ? ORDER BY run_id", (prefix.replace("%", "") + "%",)
        ).fetchall()
        if not rows:
            raise UserError(f"no run with id {prefix!r} in {self.path}; `bench runs` lists them")
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:5])
            raise UserError(f"run id prefix {prefix!r} is ambiguous ({ids}...); give more characters")
        return self._row(rows[0])

    def records(
        self,
        *,
        method: str | None = None,
        suite: str | None = None,
        status: str | None = None,
        backbone: str | None = None,
    ) -> list[RunRecord]:
        where, args = [], []
        for col, value in (("method", method), ("suite", suite), ("status", status), ("backbone", backbone)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY suite, method, backbone, task, seed, run_id"
        return [self._row(r) for r in self._db.execute(sql, args).fetchall()]

    def mark_running(self, spec: RunSpec, provenance: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                """INSERT INTO runs (run_id, spec, method, backbone, suite, task, seed, status,
                       provenance, attempts, started_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, 1, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status = 'running', error = NULL,
                       provenance = excluded.provenance, attempts = attempts + 1,
                       started_at = excluded.started_at""",
                (
                    spec.run_id,
                    canonical_json(spec.to_dict()),
                    spec.method,
                    spec.backbone,
                    spec.suite,
                    spec.task,
                    spec.seed,
                    canonical_json(provenance),
                    _now(),
                ),
            )

    def mark_finished(
        self,
        run_id: str,
        metrics: dict[str, Any],
        result: dict[str, Any],
        wall_time_s: float,
        provenance: dict[str, Any],
    ) -> None:
        with self._db:
            cur = self._db.execute(
                """UPDATE runs SET status = 'finished', metrics = ?, result = ?, provenance = ?,
                       wall_time_s = ?, error = NULL, finished_at = ? WHERE run_id = ?""",
                (
                    canonical_json(metrics),
                    canonical_json(result),
                    canonical_json(provenance),
                    wall_time_s,
                    _now(),
                    run_id,
                ),
            )
        if cur.rowcount != 1:
            raise KeyError(f"run {run_id} was never marked running")

    def mark_failed(self, run_id: str, error: str) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET status = 'failed', error = ? WHERE run_id = ?", (error, run_id))

    def update_result(self, run_id: str, result: dict[str, Any]) -> None:
        with self._db:
            cur = self._db.execute(
                "UPDATE runs SET result = ? WHERE run_id = ?", (canonical_json(result), run_id)
            )
        if cur.rowcount != 1:
            raise KeyError(f"no run {run_id}")

    def import_record(self, record: dict[str, Any]) -> None:
        """Insert a record exported by `RunRecord.to_dict` (committed leaderboard records, Ray workers)."""
        spec = RunSpec.from_dict(record["spec"])
        with self._db:
            self._db.execute(
                """INSERT OR REPLACE INTO runs (run_id, spec, method, backbone, suite, task, seed, status,
                       metrics, result, provenance, error, attempts, wall_time_s, started_at, finished_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    spec.run_id,
                    canonical_json(spec.to_dict()),
                    spec.method,
                    spec.backbone,
                    spec.suite,
                    spec.task,
                    spec.seed,
                    record.get("status", "finished"),
                    canonical_json(record.get("metrics") or {}),
                    canonical_json(record.get("result") or {}),
                    canonical_json(record.get("provenance") or {}),
                    record.get("error"),
                    int(record.get("attempts", 1)),
                    record.get("wall_time_s"),
                    record.get("started_at"),
                    record.get("finished_at"),
                ),
            )
