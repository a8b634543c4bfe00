"""Run records as JSON lines: the committed, single input of the leaderboard.

``bench export`` writes one ``RunRecord.to_dict()`` per line into ``<out>/<suite>.jsonl``, lines sorted by
(suite, method, backbone, task, stage, seed, run_id), keys sorted, so re-exporting the same runs gives the
same bytes. Exporting merges with the records already in the folder (by run id; the store wins), so records
from several machines can be collected into one folder.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

SUFFIX = ".jsonl"


def record_line(record: dict[str, Any]) -> str:
    """One record as one canonical JSON line (sorted keys, no whitespace, ASCII)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sort_key(record: dict[str, Any]) -> tuple[Any, ...]:
    spec = record["spec"]
    return (
        spec["suite"],
        spec["method"],
        spec["backbone"],
        spec["task"],
        spec.get("stage", "final"),
        int(spec["seed"]),
        record["run_id"],
    )


def _file_name(suite: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", suite).strip("._") or "suite"
    return safe + SUFFIX


def check_record(record: Any, where: str) -> dict[str, Any]:
    """A record's shape and identity: its run id must be the hash of its spec (no hand edits)."""
    from petlbench.harness.spec import RunSpec

    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict) or "run_id" not in record:
        raise UserError(f"{where}: not a run record (expected an object with run_id and spec)")
    try:
        spec = RunSpec.from_dict(record["spec"])
    except TypeError as err:
        raise UserError(f"{where}: the spec is incomplete ({err})") from None
    if spec.run_id != record["run_id"]:
        raise UserError(
            f"{where}: run_id {record['run_id']} is not the hash of its spec ({spec.run_id}); "
            "the record was edited by hand or written by another harness version"
        )
    return record


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record in ``folder/*.jsonl`` (a missing or empty folder gives no records), sorted."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"records folder {folder} is a file, not a folder")
    by_id: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*" + SUFFIX)) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg})") from None
            check_record(record, where)
            if record["run_id"] in by_id and by_id[record["run_id"]] != record:
                raise UserError(f"{where}: run {record['run_id']} appears twice with different contents")
            by_id[record["run_id"]] = record
    return sorted(by_id.values(), key=_sort_key)


def write_records(records: Iterable[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Write records as ``<suite>.jsonl`` files (replacing those files); returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        per_suite[_file_name(record["spec"]["suite"])].append(record)
    written = []
    for name, items in sorted(per_suite.items()):
        path = folder / name
        text = "".join(record_line(r) + "\n" for r in sorted(items, key=_sort_key))
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def export_store(
    store_path: str | Path,
    folder: str | Path,
    *,
    include_failed: bool = False,
    replace: bool = False,
) -> tuple[int, list[Path]]:
    """Export a store's runs (finished only, unless ``include_failed``) into ``folder``, merged with the
    records already there (unless ``replace``). Returns (records exported, files written)."""
    from petlbench.harness.store import Store

    store_path = Path(store_path)
    if not store_path.exists():
        raise UserError(f"no results store at {store_path}; run `bench run ...` first or pass --store")
    with Store(store_path) as store:
        exported = [r.to_dict() for r in store.records() if r.status == "finished" or include_failed]
    exported = [json.loads(record_line(r)) for r in exported]  # normalise (e.g. tuples -> lists)
    folder = Path(folder)
    existing = [] if replace else load_records(folder)
    merged = {r["run_id"]: r for r in existing}
    merged.update({r["run_id"]: r for r in exported})
    if replace and folder.is_dir():
        for old in folder.glob("*" + SUFFIX):
            old.unlink()
    return len(exported), write_records(merged.values(), folder)
