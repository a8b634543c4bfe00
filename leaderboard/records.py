"""Run records as JSON lines: the committed, single input of the leaderboard.

``bench export`` writes one ``RunRecord.to_dict()`` per line into ``<out>/<suite>.jsonl``, lines sorted by
(suite, method, backbone, task, stage, seed, run_id), keys sorted, so exporting the same runs gives the
same bytes. Exporting adds the store's runs to the records already in the folder, so records from several
machines can be collected into one folder; a record already there (same run id) is kept byte for byte,
even when the store's version differs (a re-measured throughput, say): committed records change only
with ``replace``, which makes the folder hold exactly the store's export. A file whose contents would
not change is not written.

Every line is checked before anything uses it, and a bad one is refused in one line naming
``file:line``: not UTF-8, not JSON, NaN / Infinity (or a number too large for a float), a key twice in
one object, a spec that does not hash to its run id, or a field the leaderboard reads that has the
wrong type (``check_record``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
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


# ----- parsing a line -----------------------------------------------------------------------------


class _LineError(ValueError):
    """What is wrong with a line, raised from inside ``json.loads``."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _LineError(f"{text} is too large for a float: records hold only finite numbers")
    return value


def _no_constant(text: str) -> None:
    raise _LineError(f"{text} is not allowed: records hold only finite numbers (no NaN or Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _LineError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_line(data: bytes, where: str) -> Any:
    """One line's bytes as JSON, refused in one line (``where: ...``) unless it is UTF-8, valid JSON,
    holds only finite numbers and no key twice in an object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {err.start + 1})"
        ) from None
    try:
        return json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except _LineError as err:
        raise UserError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{where}: not valid JSON ({err})") from None


# ----- checking a record --------------------------------------------------------------------------


def _fits_float(v: int | float) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and _fits_float(v)


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and _fits_float(v)


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


# kind -> (test, what the message says it must be)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "integer": (_is_integer, "an integer"),
    "number": (_is_number, "a finite number"),
    "count": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "positive": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "numbers": (_list_of(_is_number), "a list of numbers"),
    "epsilons": (_list_of(lambda v: _is_number(v) and v >= 0), "a list of numbers >= 0"),
    "strings": (_list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "objects": (_list_of(lambda v: isinstance(v, dict)), "a list of objects"),
    "string map": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of strings",
    ),
    "fgsm option": (lambda v: v is False or isinstance(v, dict), "an object or false"),
    "unit": (lambda v: v in ("pixel", "embedding"), "'pixel' or 'embedding'"),
}
_ANNOTATION_KINDS = {"str": "string", "int": "integer", "dict": "object", "list": "list", "bool": "boolean"}
_SPEC_KINDS = {"protocol_source": "string map", "protocol_refs": "string map", "deviations": "objects"}

# The fields below the spec that the leaderboard reads (leaderboard/build.py), with their kinds. A rule
# applies when its parent is an object and the field is there; null counts as absent (the build reads it
# as missing), except for the kinds in NOT_NULL (the build reads a null there as a value, e.g. a null
# backbone_pretrained as random init).
NOT_NULL = frozenset({"boolean", "unit"})
SPEC_RULES: tuple[tuple[str, str], ...] = (
    ("protocol.backbone_pretrained", "boolean"),
    ("protocol.shots", "integer"),
    ("measure.fgsm", "fgsm option"),
    ("measure.fgsm.epsilons", "epsilons"),
    ("measure.fgsm.max_examples", "integer"),
)
RECORD_RULES: tuple[tuple[str, str], ...] = (
    ("provenance", "object"),
    ("error", "string"),
    ("attempts", "integer"),
    ("wall_time_s", "number"),
    ("started_at", "string"),
    ("finished_at", "string"),
    ("metrics", "object"),
    ("result", "object"),
    ("result.metric", "string"),
    ("result.deviations", "objects"),
    ("result.parameters", "object"),
    *((f"result.parameters.{k}", "count") for k in ("method", "with_head", "head", "backbone_total")),
    ("result.parameters.percent_of_backbone", "number"),
    ("result.parameters.percent_of_backbone_without_token_embedding", "number"),
    ("result.parameters.denominator", "string"),
    ("result.cost", "object"),
    ("result.cost.image_gmacs", "number"),
    ("result.cost.text_gmacs_per_prompt", "number"),
    ("result.train", "object"),
    ("result.train.images_per_second", "number"),
    ("result.train.seconds_per_epoch", "number"),
    ("result.train.device", "string"),
    ("result.train.dtype", "string"),
    ("result.train.memory", "object"),
    ("result.train.memory.peak_mib", "number"),
    ("result.train.memory.kind", "string"),
    ("result.eval", "object"),
    ("result.eval.images_per_second", "number"),
    ("result.robustness", "object"),
    ("result.robustness.fgsm", "object"),
    ("result.robustness.fgsm.eps", "epsilons"),
    ("result.robustness.fgsm.accuracy", "numbers"),
    ("result.robustness.fgsm.clean", "number"),
    ("result.robustness.fgsm.unit", "unit"),
    ("result.search", "object"),
    ("result.search.trials", "count"),
    ("result.search.search_seed", "integer"),
    ("result.search.selection_score", "number"),
    ("result.search.trial_run_ids", "strings"),
    ("result.search.grid", "object"),
    ("result.search.chosen", "object"),
    # selection inflation (leaderboard/build.py _selection_inflation) and the perf pass's speed ratio
    ("result.selection", "object"),
    ("result.selection.test_by_candidate", "numbers"),
    ("result.selection.selected_test", "number"),
    ("result.selection.candidates", "string"),
    ("result.perf", "object"),
    ("result.perf.step_time_ratio", "positive"),
)


def _show(value: Any) -> str:
    """A value as a message names it: its JSON kind, and a short repr of a scalar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{'a string' if isinstance(value, str) else 'a number'} ({text})"


def _wrong(where: str, field: str, value: Any, kind: str) -> UserError:
    return UserError(f"{where}: {field} must be {KINDS[kind][1]}, not {_show(value)}")


def _check_rules(where: str, root: dict[str, Any], prefix: str, rules: Iterable[tuple[str, str]]) -> None:
    for path, kind in rules:
        parent: Any = root
        *parents, name = path.split(".")
        for key in parents:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or name not in parent:
            continue
        if parent[name] is None and kind not in NOT_NULL:
            continue
        if not KINDS[kind][0](parent[name]):
            raise _wrong(where, prefix + path, parent[name], kind)


@dataclass(frozen=True)
class _SpecField:
    kind: str
    required: bool


@cache
def _spec_fields() -> dict[str, _SpecField]:
    """RunSpec's fields, their JSON kinds (from the annotations) and whether a spec must have them."""
    from petlbench.harness.spec import RunSpec

    out = {}
    for f in dataclasses.fields(RunSpec):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        kind = _SPEC_KINDS.get(f.name) or _ANNOTATION_KINDS[annotation.split("[")[0]]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = _SpecField(kind, required)
    return out


def check_record(record: Any, where: str) -> dict[str, Any]:
    """A record's shape and identity, refused in one line (``where: ...``): the spec's fields have
    RunSpec's types and hash to the run id (no hand edits); the status is a string; metrics are numbers;
    the result fields the leaderboard reads have their kinds (``RECORD_RULES``)."""
    from petlbench.harness.spec import RunSpec

    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict) or "run_id" not in record:
        raise UserError(f"{where}: not a run record (expected an object with run_id and spec)")
    if not isinstance(record["run_id"], str):
        raise _wrong(where, "run_id", record["run_id"], "string")
    spec = record["spec"]
    for name, field in _spec_fields().items():
        if name not in spec:
            if field.required:
                raise UserError(f"{where}: the spec is incomplete (it has no {name!r})")
            continue
        if not KINDS[field.kind][0](spec[name]):
            raise _wrong(where, f"spec.{name}", spec[name], field.kind)
    _check_rules(where, spec, "spec.", SPEC_RULES)
    if "status" in record and not isinstance(record["status"], str):
        raise _wrong(where, "status", record["status"], "string")
    _check_rules(where, record, "", RECORD_RULES)
    for key, value in (record.get("metrics") or {}).items():
        if value is not None and not _is_number(value):
            raise _wrong(where, f"metrics.{key}", value, "number")
    fgsm = ((record.get("result") or {}).get("robustness") or {}).get("fgsm") or {}
    eps, accuracy = fgsm.get("eps"), fgsm.get("accuracy")
    if eps and len(accuracy or []) != len(eps):
        raise UserError(
            f"{where}: result.robustness.fgsm.accuracy has {len(accuracy or [])} values for "
            f"{len(eps)} epsilons"
        )
    run_id = RunSpec.from_dict(spec).run_id
    if run_id != record["run_id"]:
        raise UserError(
            f"{where}: run_id {record['run_id']} is not the hash of its spec ({run_id}); "
            "the record was edited by hand or written by another harness version"
        )
    return record


# ----- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordLine:
    """One checked record and the line it was read from (without its newline), kept byte for byte."""

    path: Path
    number: int
    text: str
    record: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.record["run_id"]


def read_record_lines(folder: str | Path) -> list[RecordLine]:
    """Every record line of ``folder/*.jsonl``, checked, in file and line order (a missing folder has
    none). A run id twice with different contents is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"records folder {folder} is a file, not a folder")
    lines: list[RecordLine] = []
    seen: dict[str, RecordLine] = {}
    for path in sorted(folder.glob("*" + SUFFIX)) if folder.is_dir() else []:
        for number, data in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not data.strip():
                continue
            where = f"{path}:{number}"
            record = check_record(parse_line(data, where), where)
            line = RecordLine(path, number, data.decode("utf-8"), record)
            first = seen.setdefault(line.run_id, line)
            if first.record != record:
                raise UserError(
                    f"{where}: run {line.run_id} appears twice with different contents "
                    f"(also at {first.path}:{first.number})"
                )
            lines.append(line)
    return lines


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record in ``folder/*.jsonl``, checked and sorted (a run in several lines once). A missing
    folder, or one with no records, is refused: the leaderboard is never built from nothing."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(
            f"records folder {folder} does not exist; export runs into it with "
            f"`bench export --out {folder}` or pass --records"
        )
    lines = read_record_lines(folder)
    if not lines:
        what = "no *.jsonl files" if not any(folder.glob("*" + SUFFIX)) else "only empty *.jsonl files"
        raise UserError(
            f"no run records in {folder} ({what}); export runs into it with `bench export --out {folder}`"
        )
    by_id = {line.run_id: line.record for line in lines}
    return sorted(by_id.values(), key=_sort_key)


# ----- writing ------------------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (via a temporary file and a rename) unless it already holds exactly
    that; returns whether it wrote."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _file_text(items: Iterable[tuple[dict[str, Any], str]]) -> str:
    """A records file's text: one line per run (the first given for a run id), sorted."""
    by_id: dict[str, tuple[dict[str, Any], str]] = {}
    for record, text in items:
        by_id.setdefault(record["run_id"], (record, text))
    return "".join(text + "\n" for _, text in sorted(by_id.values(), key=lambda item: _sort_key(item[0])))


def write_records(records: Iterable[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Write records as ``<suite>.jsonl`` files (replacing those files; one that would not change is
    left alone); returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per_suite: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for record in records:
        per_suite[_file_name(record["spec"]["suite"])].append((record, record_line(record)))
    return [
        folder / name
        for name, items in sorted(per_suite.items())
        if _write_if_changed(folder / name, _file_text(items))
    ]


# ----- export -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_store`` did, counted in run ids. ``added``: new in the folder; ``kept``: already
    in the folder and left byte for byte (only without ``replace``), ``kept_differing`` of them differ
    from the store's version; ``replaced``: already in the folder, now the store's version (only with
    ``replace``; a line equal to the store's stays as it is); ``dropped``: in the folder but not in the
    store, removed (only with ``replace``). ``files``: the files written (a file whose bytes would not
    change is not); ``removed``: the files deleted (``replace``: files left with no record)."""

    added: int
    kept: int
    kept_differing: int
    replaced: int
    dropped: int
    files: tuple[Path, ...]
    removed: tuple[Path, ...]

    @property
    def exported(self) -> int:
        """The store's runs taken (finished, or every one with ``include_failed``)."""
        return self.added + self.kept + self.replaced


def _non_finite(value: Any, path: str) -> str | None:
    """The first place (``metrics.accuracy``) in ``value`` that holds NaN or an infinity, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value}"
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = []
    for where, item in items:
        found = _non_finite(item, where)
        if found:
            return found
    return None


def _exportable(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A store's record as the records folder holds it (JSON-normalised: tuples become lists), or
    refused in one line naming the run."""
    try:
        line = record_line(record)
    except ValueError:
        found = _non_finite(record, "") or "a value is not a finite number"
        raise UserError(
            f"{where}: {found}, and JSON records cannot hold NaN or infinity: nothing was exported "
            f"(see `bench show {record['run_id']}`; re-run it or remove it from the store)"
        ) from None
    return check_record(json.loads(line), where)


def export_store(
    store_path: str | Path,
    folder: str | Path,
    *,
    include_failed: bool = False,
    replace: bool = False,
) -> ExportSummary:
    """Export a store's runs (finished only, unless ``include_failed``) into ``folder``.

    Without ``replace`` the store's new runs are added and every record already in the folder is kept
    byte for byte, including those of the same run id (even when the store's version differs). With
    ``replace`` the folder holds exactly the store's export afterwards: same-id records are replaced by
    the store's version (left as they are when equal) and the folder's records of runs not in the store
    are dropped. Only files whose contents change are written; a run that cannot be exported (a NaN or
    infinity, a wrong-typed field) refuses the whole export in one line naming it."""
    from petlbench.harness.store import Store

    store_path = Path(store_path)
    if not store_path.exists():
        raise UserError(f"no results store at {store_path}; run `bench run ...` first or pass --store")
    with Store(store_path) as store:
        exported = {
            r.run_id: _exportable(r.to_dict(), f"{store_path}: run {r.run_id}")
            for r in store.records()
            if r.status == "finished" or include_failed
        }
    folder = Path(folder)
    lines = read_record_lines(folder)
    current: dict[str, RecordLine] = {}
    for line in lines:
        current.setdefault(line.run_id, line)
    files: dict[Path, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    if not replace:  # every existing line stays, in its file
        for line in lines:
            files[line.path].append((line.record, line.text))
    touched: set[Path] = set()
    added = kept = differ = replaced = 0
    for run_id, record in sorted(exported.items()):
        old = current.get(run_id)
        same = old is not None and record_line(old.record) == record_line(record)
        text = old.text if old is not None and (same or not replace) else record_line(record)
        if old is None:
            added += 1
        elif replace:
            replaced += 1
        else:
            kept += 1
            differ += not same
        if old is None or replace:
            path = folder / _file_name(record["spec"]["suite"])
            files[path].append((record, text))
            touched.add(path)
    dropped = len(set(current) - set(exported)) if replace else 0
    removed: list[Path] = []
    if replace and folder.is_dir():
        for old_path in sorted(folder.glob("*" + SUFFIX)):
            if old_path not in touched:
                old_path.unlink()
                removed.append(old_path)
    written = []
    if touched:
        folder.mkdir(parents=True, exist_ok=True)
        written = [p for p in sorted(touched) if _write_if_changed(p, _file_text(files[p]))]
    return ExportSummary(added, kept, differ, replaced, dropped, tuple(written), tuple(removed))
