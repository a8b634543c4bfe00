"""The records path refuses bad input in one line naming ``file:line`` (or the run), and export never
rewrites a committed record unless asked to (``--replace``)."""

from __future__ import annotations

import copy
import json
import re
import sqlite3
from pathlib import Path

import pytest
from test_leaderboard import make_record  # the leaderboard tests' record builder (same folder)

from petlbench.cli import main
from petlbench.cli.leaderboard import installed_suite
from petlbench.errors import UserError
from petlbench.harness.spec import RunSpec
from petlbench.harness.store import Store
from petlbench.leaderboard.build import build_leaderboard, validate
from petlbench.leaderboard.records import (
    NOT_NULL,
    RECORD_RULES,
    SPEC_RULES,
    check_record,
    export_store,
    load_records,
    record_line,
)

COMMITTED = Path(__file__).resolve().parents[2] / "leaderboard" / "records"


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one non-empty stderr line without a traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _set(record: dict, path: str, value) -> dict:
    out = copy.deepcopy(record)
    *parents, name = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[name] = value
    return out


def _with_spec(record: dict, **changes) -> dict:
    """A record whose spec has ``changes`` and whose run id is still its spec's hash (so only the type
    check can refuse it)."""
    out = copy.deepcopy(record)
    out["spec"].update(changes)
    out["run_id"] = RunSpec.from_dict(out["spec"]).run_id
    return out


GOOD = record_line(make_record("colors", 2, 50.0))
BASE = make_record("colors", 1, 40.0, fgsm=[30.0, 20.0, 10.0, 5.0])
BASE_LINE = record_line(BASE)

# (what is wrong, the second line's bytes, a word the message must hold)
BAD_LINES = [
    ("NaN", BASE_LINE.replace('"accuracy":40.0', '"accuracy":NaN').encode(), "NaN"),
    ("Infinity", BASE_LINE.replace('"accuracy":40.0', '"accuracy":Infinity').encode(), "Infinity"),
    ("-Infinity", BASE_LINE.replace('"lr":0.1', '"lr":-Infinity').encode(), "-Infinity"),
    ("overflow", BASE_LINE.replace('"accuracy":40.0', '"accuracy":1e999').encode(), "1e999"),
    ("not UTF-8", BASE_LINE.replace("colors", "col\udcffrs").encode("utf-8", "surrogateescape"), "UTF-8"),
    ("not JSON", BASE_LINE[:-5].encode(), "not valid JSON"),
    (
        "key twice",
        BASE_LINE.replace('{"accuracy":40.0', '{"accuracy":40.0,"accuracy":99.0').encode(),
        "twice",
    ),
    ("not an object", b"[1, 2]", "not a run record"),
    ("seed a string", record_line(_set(BASE, "spec.seed", "one")).encode(), "spec.seed"),
    ("seed a bool", record_line(_set(BASE, "spec.seed", True)).encode(), "spec.seed"),
    (
        "spec field missing",
        record_line({**BASE, "spec": {k: v for k, v in BASE["spec"].items() if k != "task"}}).encode(),
        "'task'",
    ),
    ("method_config a list", record_line(_with_spec(BASE, method_config=[1])).encode(), "spec.method_config"),
    ("suite_version an int", record_line(_with_spec(BASE, suite_version=2)).encode(), "spec.suite_version"),
    (
        "metric value a string",
        record_line(_set(BASE, "metrics.accuracy", "forty")).encode(),
        "metrics.accuracy",
    ),
    ("metric value a list", record_line(_set(BASE, "metrics.accuracy", [40.0])).encode(), "metrics.accuracy"),
    ("result a list", record_line({**BASE, "result": [1]}).encode(), "result must be an object"),
    ("status a number", record_line({**BASE, "status": 3}).encode(), "status"),
    ("status null", record_line({**BASE, "status": None}).encode(), "status"),
    (
        "parameters a string",
        record_line(_set(BASE, "result.parameters", "many")).encode(),
        "result.parameters",
    ),
    (
        "a parameter count a string",
        record_line(_set(BASE, "result.parameters.method", "320")).encode(),
        "result.parameters.method",
    ),
    (
        "gmacs a list",
        record_line(_set(BASE, "result.cost.image_gmacs", [1.0])).encode(),
        "result.cost.image_gmacs",
    ),
    (
        "fgsm accuracy strings",
        record_line(_set(BASE, "result.robustness.fgsm.accuracy", ["a"] * 4)).encode(),
        "result.robustness.fgsm.accuracy",
    ),
    (
        "fgsm accuracy too short",
        record_line(_set(BASE, "result.robustness.fgsm.accuracy", [1.0])).encode(),
        "1 values for 4 epsilons",
    ),
    (
        "search trials a string",
        record_line(_set(BASE, "result.search", {"trials": "many"})).encode(),
        "result.search.trials",
    ),
    ("hand-edited spec", record_line(_set(BASE, "spec.seed", 7)).encode(), "not the hash of its spec"),
]


@pytest.mark.parametrize("verb", ["build", "check"])
@pytest.mark.parametrize(("what", "line", "word"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_a_bad_line_is_refused_in_one_line_naming_file_and_line(tmp_path, capsys, verb, what, line, word):
    records = tmp_path / "records"
    records.mkdir()
    (records / "smoke.jsonl").write_bytes(GOOD.encode() + b"\n" + line + b"\n")
    flag = "--out" if verb == "build" else "--dir"
    said = _refused(capsys, ["leaderboard", verb, "--records", str(records), flag, str(tmp_path / "lb")])
    assert f"{records / 'smoke.jsonl'}:2:" in said and word in said, said
    assert not (tmp_path / "lb").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "rule", [*RECORD_RULES, *(("spec." + p, k) for p, k in SPEC_RULES)], ids=lambda r: r[0]
)
def test_every_field_the_build_reads_is_checked_and_null_is_absent(rule):
    path, kind = rule
    record = make_record("colors", 1, 40.0, fgsm=[30.0, 20.0, 10.0, 5.0])
    record["result"]["search"] = {"trials": 2, "trial_run_ids": ["a"], "selection_score": 1.0}
    wrong = {"string": 3, "unit": "metres"}.get(kind, "x" if kind != "fgsm option" else [1])
    bad = _set(record, path, wrong)
    if path.startswith("spec."):
        bad = _with_spec(bad)
    with pytest.raises(UserError, match=f"^here: {re.escape(path)} must be "):
        check_record(bad, "here")
    empty = _set(record, path, None)
    if path.startswith("spec."):
        empty = _with_spec(empty)
    if path == "result.robustness.fgsm.accuracy":  # epsilons without accuracies: no grid to average
        with pytest.raises(UserError, match="has 0 values for 4 epsilons"):
            check_record(empty, "here")
        return
    if kind in NOT_NULL:  # the build would read null as a value here
        with pytest.raises(UserError, match=f"^here: {re.escape(path)} must be .*, not null$"):
            check_record(empty, "here")
        return
    check_record(empty, "here")
    validate(build_leaderboard([empty], suites=installed_suite))  # what passes the check builds


def test_the_committed_records_pass_the_checks():
    records = load_records(COMMITTED)
    assert records and all(RunSpec.from_dict(r["spec"]).run_id == r["run_id"] for r in records)


@pytest.mark.parametrize("verb", ["build", "check"])
def test_no_records_is_refused_not_built_into_an_empty_leaderboard(tmp_path, capsys, verb):
    flag = "--out" if verb == "build" else "--dir"
    out = str(tmp_path / "lb")
    said = _refused(capsys, ["leaderboard", verb, "--records", str(tmp_path / "nonexistent"), flag, out])
    assert "nonexistent does not exist" in said
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no records here\n")
    said = _refused(capsys, ["leaderboard", verb, "--records", str(tmp_path / "empty"), flag, out])
    assert "no run records in" in said and "no *.jsonl files" in said
    (tmp_path / "empty" / "smoke.jsonl").write_text("\n")
    said = _refused(capsys, ["leaderboard", verb, "--records", str(tmp_path / "empty"), flag, out])
    assert "only empty *.jsonl files" in said
    said = _refused(
        capsys, ["leaderboard", verb, "--records", str(tmp_path / "empty" / "notes.txt"), flag, out]
    )
    assert "is a file, not a folder" in said
    assert not (tmp_path / "lb").exists()


# ----- export ---------------------------------------------------------------------------------------


def _store(path: Path, *records: dict) -> Path:
    with Store(path) as store:
        for r in records:
            store.import_record(r)
    return path


def _export(capsys, store: Path, out: Path, *extra: str) -> str:
    capsys.readouterr()
    assert main(["export", "--store", str(store), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def test_export_keeps_a_committed_record_byte_for_byte_unless_replace(tmp_path, capsys):
    first = make_record("colors", 1, 40.0)
    store = _store(tmp_path / "s.sqlite", first)
    out = tmp_path / "records"
    said = _export(capsys, store, out)
    assert said.startswith(f"exported from {store}: added 1, kept 0 already in {out}, replaced 0; wrote ")
    path = out / "smoke.jsonl"
    committed, mtime = path.read_bytes(), path.stat().st_mtime_ns
    # the same spec re-measured (throughput under load): the store's version now differs
    with Store(store) as s:
        s.update_result(first["run_id"], {**first["result"], "train": {"images_per_second": 22.0}})
    said = _export(capsys, store, out)
    assert f"added 0, kept 1 already in {out} (1 of them differ from the store; --replace" in said
    assert "wrote nothing" in said
    assert path.read_bytes() == committed and path.stat().st_mtime_ns == mtime  # not even rewritten
    # a new run id is added; the kept line stays as it was
    second = make_record("shapes", 1, 70.0)
    _store(store, second)
    said = _export(capsys, store, out)
    assert "added 1, kept 1" in said and str(path) in said
    lines = path.read_bytes().splitlines(keepends=True)
    assert committed in lines and len(lines) == 2
    # --replace: the store's version wins; a record the store does not hold is dropped
    other = make_record("position", 1, 33.0)
    (out / "smoke.jsonl").write_bytes(path.read_bytes() + (record_line(other) + "\n").encode())
    said = _export(capsys, store, out, "--replace")
    assert "added 0, kept 0 already in" in said and "replaced 2, dropped 1 not in the store" in said
    by_id = {r["run_id"]: r for r in load_records(out)}
    assert set(by_id) == {first["run_id"], second["run_id"]}
    assert by_id[first["run_id"]]["result"]["train"] == {"images_per_second": 22.0}
    # replacing again changes nothing, so writes nothing
    again = path.read_bytes()
    said = _export(capsys, store, out, "--replace")
    assert "replaced 2, dropped 0" in said and "wrote nothing" in said and path.read_bytes() == again


def test_export_keeps_a_non_canonical_committed_line_as_it_is(tmp_path, capsys):
    first, second = make_record("colors", 1, 40.0), make_record("shapes", 1, 70.0)
    out = tmp_path / "records"
    out.mkdir()
    hand = json.dumps(first, indent=None).encode() + b"\r"  # valid, but not the canonical form
    (out / "smoke.jsonl").write_bytes(hand + b"\n")
    _export(capsys, _store(tmp_path / "s.sqlite", first, second), out)
    assert (out / "smoke.jsonl").read_bytes() == hand + b"\n" + record_line(second).encode() + b"\n"


def test_export_is_byte_stable_whatever_the_order(tmp_path):
    records = [make_record(t, s, 40.0 + s) for t in ("colors", "shapes") for s in (1, 2)]
    a = export_store(_store(tmp_path / "a.sqlite", *records), tmp_path / "a")
    export_store(_store(tmp_path / "b.sqlite", *reversed(records)), tmp_path / "b")
    assert (a.added, a.kept, a.replaced, a.exported) == (4, 0, 0, 4)
    assert (tmp_path / "a" / "smoke.jsonl").read_bytes() == (tmp_path / "b" / "smoke.jsonl").read_bytes()
    lines = (tmp_path / "a" / "smoke.jsonl").read_text().splitlines()
    assert lines == [record_line(json.loads(line)) for line in lines]


def test_export_refuses_a_store_run_with_a_non_finite_number_naming_it(tmp_path, capsys):
    good, bad = make_record("colors", 1, 40.0), make_record("colors", 2, 50.0)
    store = _store(tmp_path / "s.sqlite", good)
    spec = RunSpec.from_dict(bad["spec"])
    with Store(store) as s:
        s.mark_running(spec, {})
        s.mark_finished(spec.run_id, {"accuracy": float("inf")}, bad["result"], 1.0, {})
    out = tmp_path / "records"
    said = _refused(capsys, ["export", "--store", str(store), "--out", str(out)])
    assert f"run {spec.run_id}" in said and "metrics.accuracy is inf" in said and "NaN or infinity" in said
    assert not out.exists()  # nothing was exported


def test_export_refuses_a_store_run_that_would_not_load(tmp_path, capsys):
    record = make_record("colors", 1, 40.0)
    store = _store(tmp_path / "s.sqlite", record)
    db = sqlite3.connect(store)
    db.execute("UPDATE runs SET metrics = ?", ('{"accuracy": "forty"}',))
    db.commit()
    db.close()
    said = _refused(capsys, ["export", "--store", str(store), "--out", str(tmp_path / "records")])
    assert f"run {record['run_id']}: metrics.accuracy must be a finite number" in said


def test_export_refuses_a_bad_committed_line_before_writing(tmp_path, capsys):
    out = tmp_path / "records"
    out.mkdir()
    (out / "smoke.jsonl").write_bytes(GOOD.encode() + b"\n" + b'{"run_id": NaN}\n')
    before = (out / "smoke.jsonl").read_bytes()
    store = _store(tmp_path / "s.sqlite", make_record("shapes", 1, 70.0))
    said = _refused(capsys, ["export", "--store", str(store), "--out", str(out)])
    assert f"{out / 'smoke.jsonl'}:2:" in said and "NaN" in said
    assert (out / "smoke.jsonl").read_bytes() == before
