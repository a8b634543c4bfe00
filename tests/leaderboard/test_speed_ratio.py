"""The leaderboard's speed column: one dedicated perf measurement per cell (`bench perf
--for-records`), the method's train step interleaved with the plain backbone's, read by the build
from the perf/ folder beside the records."""

import json
from pathlib import Path

import pytest

from petlbench.cli import main
from petlbench.cli.leaderboard import installed_suite
from petlbench.errors import UserError
from petlbench.leaderboard.build import build, load_perf

RECORDS = Path(__file__).resolve().parents[2] / "leaderboard" / "records" / "mini.jsonl"
# bitfit on micro-vit and zero-shot on micro-clip (count, seed 1)
PICKED = {"45066ff6116131bf", "d489dadde8b0be57"}


def _records(folder: Path) -> Path:
    lines = [line for line in RECORDS.read_text().splitlines() if json.loads(line)["run_id"] in PICKED]
    assert len(lines) == 2
    folder.mkdir(parents=True)
    (folder / "mini.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_perf_pass_writes_one_line_per_cell_and_the_build_shows_it(tmp_path, capsys):
    records = _records(tmp_path / "board" / "records")
    out = tmp_path / "board" / "perf" / "mini.jsonl"
    argv = ["perf", "--for-records", str(records), "--out", str(out), "--steps", "2", "--batch-size", "4"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    cells = [(p["method"], p["backbone"]) for p in lines]  # in canonical order (backbone first)
    assert cells == [("zeroshot", "micro-clip"), ("bitfit", "micro-vit")]
    zeroshot, bitfit = lines
    assert bitfit["x_plain"] > 0 and bitfit["batch_size"] == 4 and bitfit["steps"] == 2
    assert bitfit["x_plain"] == bitfit["method_step_ms"] / bitfit["plain_step_ms"]
    assert zeroshot["x_plain"] is None and "trains nothing" in zeroshot["note"]
    assert "[2/2] bitfit on micro-vit: " in capsys.readouterr().out
    doc = build(records, tmp_path / "board", suites=installed_suite)
    rows = {(r["method"], r["backbone"]): r for r in doc["rows"]}
    measured = pytest.approx(bitfit["x_plain"], rel=1e-5)
    assert rows[("bitfit", "micro-vit")]["efficiency"]["speed_ratio"] == measured
    assert rows[("zeroshot", "micro-clip")]["efficiency"]["speed_ratio"] is None
    assert doc["inputs"]["perf"]["cells"] == 2 and doc["inputs"]["perf"]["hardware"] == [bitfit["hardware"]]
    entry = next(e for e in doc["entries"] if e["method"] == "bitfit")
    assert entry["efficiency"]["speed_ratio"] == measured


def test_a_bad_perf_line_is_one_error_naming_it(tmp_path):
    line = {"format": "petlbench.perf/1", "method": "vpt", "backbone": "x", "x_plain": 0}
    (tmp_path / "mini.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(UserError, match=r"mini.jsonl:1: a perf line needs"):
        load_perf(tmp_path)
    (tmp_path / "mini.jsonl").write_text("{nope\n")
    with pytest.raises(UserError, match=r"mini.jsonl:1: not valid JSON"):
        load_perf(tmp_path)
    assert load_perf(tmp_path / "missing") == []


def test_perf_needs_a_method_and_backbone_or_records(capsys):
    assert main(["perf", "--method", "vpt"]) == 2
    assert "give --method and --backbone, or --for-records" in capsys.readouterr().err
