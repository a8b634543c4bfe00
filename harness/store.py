"""The results store: one SQLite row per run (spec, status, metrics, result, provenance).

SQLite because it is embedded, survives a killed process (each write is its own transaction) and
lets `bench leaderboard` and `bench runs` query without a server. Only driver processes write.

One training per spec: a process *claims* a spec before training it (the row becomes ``running``
with the process as ``owner``) and keeps a heartbeat on every row it owns. A second process given
the same spec finds the claim alive and waits for it (then reports the stored result) instead of
training it again; a claim whose owner died (its pid is gone on this host, or its heartbeat is older
than ``STALE_AFTER_S``) is taken over, and the run resumes from its checkpoint. Such a dead claim is
shown as ``interrupted``, not ``running``.

The file records its schema version (``PRAGMA user_version``); a file that is not a petlbench store,
or one of another schema, is refused in one line.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

from .spec import RunSpec, canonical_json

SCHEMA_VERSION = 2  # 1: the first release (no owner / heartbeat columns); 2: claims
COLUMNS = (
    "run_id",
    "spec",
    "method",
    "backbone",
    "suite",
    "task",
    "seed",
    "status",
    "metrics",
    "result",
    "provenance",
    "error",
    "attempts",
    "wall_time_s",
    "started_at",
    "finished_at",
    "owner",
    "heartbeat_at",
)
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
    finished_at TEXT,
    owner TEXT,
    heartbeat_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_method_suite ON runs (method, suite);
"""
HEARTBEAT_S = 10.0  # how often a process refreshes the rows it owns
STALE_AFTER_S = 90.0  # a claim with no heartbeat for this long belongs to a process that is gone

STATUSES = ("running", "finished", "failed")  # stored; "interrupted" is a dead "running"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _load(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_is_alive(owner: str | None, heartbeat_at: str | None, now: datetime | None = None) -> bool:
    """Whether the process that owns a running row still runs: a fresh heartbeat, and on this host
    a live pid."""
    beat = _parse_time(heartbeat_at)
    if not owner or beat is None:
        return False
    if (now or datetime.now(timezone.utc)) - beat > timedelta(seconds=STALE_AFTER_S):
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return True


def new_owner() -> str:
    """``host:pid:nonce``: who holds a claim (the nonce tells two stores of one process apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
    owner: str | None = None
    heartbeat_at: str | None = None

    @property
    def state(self) -> str:
        """The stored status, except that a ``running`` row whose owner is gone is ``interrupted``."""
        if self.status == "running" and not claim_is_alive(self.owner, self.heartbeat_at):
            return "interrupted"
        return self.status

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


def _spec_columns(spec: RunSpec) -> tuple[Any, ...]:
    """The row's identity columns: run id, the spec's JSON, and the fields ``records()`` filters on."""
    return (
        spec.run_id,
        canonical_json(spec.to_dict()),
        spec.method,
        spec.backbone,
        spec.suite,
        spec.task,
        spec.seed,
    )


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.owner = new_owner()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        if self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; pass --store FILE.sqlite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"cannot create the results store at {self.path}: {err.strerror or err} "
                f"({self.path.parent} is not a writable folder)"
            ) from None
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._open()
        except sqlite3.OperationalError as err:
            raise UserError(f"cannot open the results store at {self.path}: {err}") from None
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path} is not a petlbench results store ({err})") from None
        self._db.row_factory = sqlite3.Row

    def _open(self) -> None:
        """Create a new store, upgrade a schema-1 store of ours, refuse anything else."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            with self._db:
                self._db.executescript(SCHEMA)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        columns = tuple(r[1] for r in self._db.execute("PRAGMA table_info(runs)")) if "runs" in tables else ()
        if version == 0 and columns == COLUMNS[:-2]:  # schema 1 (it set no user_version): add the claim
            with self._db:
                self._db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
                self._db.execute("ALTER TABLE runs ADD COLUMN heartbeat_at TEXT")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if version == 0:
            raise UserError(
                f"{self.path} is not a petlbench results store (it holds table(s) "
                f"{', '.join(sorted(tables)) or 'none'}, not the runs table of schema {SCHEMA_VERSION})"
            )
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.path} is a petlbench store of schema {version}; this petlbench reads schema "
                f"{SCHEMA_VERSION}: use the petlbench that wrote it, or another --store"
            )
        if columns != COLUMNS:
            raise UserError(
                f"{self.path} is not a petlbench store of schema {SCHEMA_VERSION}: its runs table has "
                f"columns {', '.join(columns) or 'none'}"
            )

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, row: sqlite3.Row) -> RunRecord:
        where = f"{self.path}: run {row['run_id']!r}"
        try:
            spec = RunSpec.from_dict(json.loads(row["spec"]))
            loaded = {k: _load(row[k]) for k in ("metrics", "result", "provenance")}
        except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as err:
            raise UserError(
                f"{where} is not a petlbench run of store schema {SCHEMA_VERSION} "
                f"({err.__class__.__name__}: {err})"
            ) from None
        if not all(isinstance(v, dict) for v in loaded.values()):
            raise UserError(f"{where} holds metrics/result/provenance that are not JSON objects")
        return RunRecord(
            run_id=row["run_id"],
            spec=spec,
            status=row["status"],
            metrics=loaded["metrics"],
            result=loaded["result"],
            provenance=loaded["provenance"],
            error=row["error"],
            attempts=row["attempts"],
            wall_time_s=row["wall_time_s"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            owner=row["owner"],
            heartbeat_at=row["heartbeat_at"],
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

    def claim(self, spec: RunSpec, provenance: dict[str, Any]) -> str:
        """Claim ``spec`` for this process: ``"claimed"`` (its row is now running, owned by this
        store, attempts counted), ``"finished"`` (nothing to do) or ``"busy"`` (another live process
        holds it). A dead owner's claim is taken over. One transaction, so two processes never both
        claim one spec."""
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT status, owner, heartbeat_at FROM runs WHERE run_id = ?", (spec.run_id,)
            ).fetchone()
            if row is not None and row[0] == "finished":
                return "finished"
            if (
                row is not None
                and row[0] == "running"
                and row[1] != self.owner
                and claim_is_alive(row[1], row[2])
            ):
                return "busy"
            self._db.execute(
                """INSERT INTO runs (run_id, spec, method, backbone, suite, task, seed, status,
                       provenance, attempts, started_at, owner, heartbeat_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, 1, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status = 'running', error = NULL,
                       provenance = excluded.provenance, attempts = attempts + 1,
                       started_at = excluded.started_at, owner = excluded.owner,
                       heartbeat_at = excluded.heartbeat_at""",
                (
                    *_spec_columns(spec),
                    canonical_json(provenance),
                    now,
                    self.owner,
                    now,
                ),
            )
        self._start_heartbeat()
        return "claimed"

    def mark_running(self, spec: RunSpec, provenance: dict[str, Any]) -> None:
        """Claim ``spec`` whoever holds it (tests and tools that know no one else runs it)."""
        if self.claim(spec, provenance) == "busy":
            raise UserError(f"run {spec.run_id} is being run by another process")

    def _start_heartbeat(self) -> None:
        """One daemon thread per store refreshes ``heartbeat_at`` of every running row it owns."""
        if self._heartbeat is not None:
            return

        def beat() -> None:
            db = sqlite3.connect(self.path, timeout=30)
            try:
                while not self._stop.wait(HEARTBEAT_S):
                    try:
                        with db:
                            db.execute(
                                "UPDATE runs SET heartbeat_at = ? WHERE owner = ? AND status = 'running'",
                                (_now(), self.owner),
                            )
                    except sqlite3.Error:
                        pass  # a busy database: the next beat tries again
            finally:
                db.close()

        self._heartbeat = threading.Thread(target=beat, name="petlbench-store-heartbeat", daemon=True)
        self._heartbeat.start()

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
                    *_spec_columns(spec),
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
