"""Run identity and the SQLite store: hashing, lifecycle, prefixes, clear errors."""

import sqlite3

import pytest

from petlbench.errors import UserError
from petlbench.harness.spec import RunSpec
from petlbench.harness.store import Store


def _spec(**over):
    base = dict(
        method="vpt",
        method_config={"num_tokens": 5, "deep": False},
        backbone="tiny-vit",
        suite="smoke",
        suite_version="1",
        task="colors",
        protocol={"epochs": 2, "lr": 0.1},
        seed=1,
    )
    return RunSpec(**(base | over))


def test_run_id_is_a_hash_of_the_canonical_spec():
    a = _spec()
    b = _spec(method_config={"deep": False, "num_tokens": 5}, protocol={"lr": 0.1, "epochs": 2})
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert _spec(seed=2).run_id != a.run_id
    assert _spec(method_config={"num_tokens": 6, "deep": False}).run_id != a.run_id
    assert _spec(measure={"fgsm": {"eps": [0.01]}}).run_id != a.run_id
    assert RunSpec.from_dict(a.to_dict()) == a


def test_lifecycle_attempts_and_update(tmp_path):
    spec = _spec()
    with Store(tmp_path / "runs" / "s.sqlite") as store:
        assert store.get(spec.run_id) is None
        store.mark_running(spec, {"git": {}})
        store.mark_failed(spec.run_id, "RuntimeError: boom")
        rec = store.get(spec.run_id)
        assert rec.status == "failed" and rec.error == "RuntimeError: boom" and rec.attempts == 1
        store.mark_running(spec, {"git": {}})
        store.mark_finished(spec.run_id, {"accuracy": 50.0}, {"metric": "accuracy"}, 1.5, {"git": {"x": 1}})
    with Store(tmp_path / "runs" / "s.sqlite") as store:  # survives reopening
        rec = store.get(spec.run_id)
        assert rec.status == "finished" and rec.attempts == 2 and rec.error is None
        assert rec.metrics == {"accuracy": 50.0} and rec.wall_time_s == 1.5
        assert rec.spec == spec and rec.spec.method == "vpt" and rec.spec.task == "colors"
        assert store.is_finished(spec.run_id)
        store.update_result(spec.run_id, {"metric": "accuracy", "robustness": {}})
        assert store.get(spec.run_id).result["robustness"] == {}
        with pytest.raises(KeyError):
            store.mark_finished("0" * 16, {}, {}, 0.0, {})


def test_filters_and_prefix_resolution(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        specs = [_spec(seed=s) for s in range(4)] + [_spec(method="linear", method_config={})]
        for s in specs:
            store.mark_running(s, {})
        assert len(store.records()) == 5
        assert [r.spec.method for r in store.records(method="linear")] == ["linear"]
        assert [r.spec.seed for r in store.records(method="vpt")] == [0, 1, 2, 3]
        target = specs[0].run_id
        assert store.resolve(target[:12]).run_id == target
        with pytest.raises(UserError, match="no run"):
            store.resolve("zzzz")
        with pytest.raises(UserError, match="ambiguous"):
            store.resolve("")


def test_not_a_store_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a petlbench results store"):
        Store(junk)
    sqlite3.connect(tmp_path / "fine.sqlite").close()
    Store(tmp_path / "fine.sqlite").close()  # an empty database becomes a store


def test_version_1_specs_keep_their_run_ids_and_load_as_version_2_fields():
    """Spec version 2 made ``pretrained`` a field; a version-1 spec still hashes to the run id it was
    stored under, in both stored forms the committed records hold: the legacy one (no version,
    ``backbone_pretrained`` in the protocol) and version 1 written back in the field layout."""
    import json
    from pathlib import Path

    from petlbench.harness.spec import SPEC_VERSION

    records = Path(__file__).resolve().parents[2] / "leaderboard" / "records" / "mini.jsonl"
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    legacy = [r for r in lines if "version" not in r["spec"]]
    written_back = [r for r in lines if r["spec"].get("version") == 1]
    current = [r for r in lines if r["spec"].get("version") == SPEC_VERSION]  # runs made since
    assert legacy and written_back and current
    assert len(legacy) + len(written_back) + len(current) == len(lines)
    assert all("pretrained" in r["spec"] for r in written_back + current)
    for record in current:
        spec = RunSpec.from_dict(record["spec"])
        assert spec.version == SPEC_VERSION and spec.run_id == record["run_id"]
        assert RunSpec.from_dict(spec.to_dict()).run_id == record["run_id"]
    for record in legacy + written_back:
        spec = RunSpec.from_dict(record["spec"])
        assert spec.version == 1 and spec.run_id == record["run_id"]
        assert "backbone_pretrained" not in spec.protocol
        stored = record["spec"]
        expected = stored["pretrained"] if "version" in stored else stored["protocol"]["backbone_pretrained"]
        assert spec.pretrained is expected
        again = RunSpec.from_dict(spec.to_dict())  # as the store writes it back
        assert again == spec and again.run_id == record["run_id"]
    fresh = RunSpec.from_dict({**RunSpec.from_dict(legacy[0]["spec"]).to_dict(), "version": SPEC_VERSION})
    assert fresh.version == 2 and fresh.run_id != legacy[0]["run_id"]
    assert "pretrained" in fresh.canonical_json() and "backbone_pretrained" not in fresh.canonical_json()
    random_init = RunSpec.from_dict({**fresh.to_dict(), "pretrained": False})
    assert random_init.run_id != fresh.run_id
