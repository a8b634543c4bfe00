"""`bench show` summaries, `bench runs` stage/grid columns and `bench methods NAME`."""

import json
from pathlib import Path

import pytest

from petlbench.cli import main
from petlbench.harness.show import format_point, grid_point, sparkline, summary_lines
from petlbench.harness.store import Store
from petlbench.methods.registry import get_method, method_options

RECORDS = Path(__file__).resolve().parents[2] / "leaderboard" / "records" / "mini.jsonl"


def _committed(run_id: str) -> dict:
    for line in RECORDS.read_text().splitlines():
        record = json.loads(line)
        if record["run_id"] == run_id:
            return record
    raise AssertionError(f"{run_id} is not a committed record")


def test_sparkline_scales_between_min_and_max():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3.0, 3.0]) == "▅▅"  # flat: the middle bar
    assert sparkline([1.0, None, float("nan"), 0.0]) == "█  ▁"
    assert sparkline([]) == ""


def test_summary_of_a_committed_lora_record_names_every_part():
    """A committed micro-CLIP LoRA cell (count, seed 1): 92.5% test, 16,384 parameters."""
    lines = summary_lines({**_committed("7a31d52c179c49c6"), "status": "finished"})
    text = "\n".join(lines)
    assert lines[0] == "run 7a31d52c179c49c6  [finished]  lora on micro-clip"
    assert "task count  seed 1  stage final" in lines[1]
    assert "metrics: accuracy 92.50, selection_accuracy 93.00" in lines
    assert "parameters: method 16,384, head 0, with head 16,384 (1.123% of all backbone parameters)" in lines
    (cost,) = [line for line in lines if line.startswith("cost: ")]
    assert cost.startswith("cost: image 0.0145 GMACs at 32 px; text 0.0147 per prompt x 4")
    assert "deviations: none" in lines
    assert "method options: alpha=8 dropout=0 merge=False rank=8 targets=q,v tower=image" in lines
    (selection,) = [line for line in lines if line.startswith("selection by epoch: ")]
    assert len(selection.split()[3]) == 10  # one bar per epoch of the 10-epoch protocol
    speed = "speed (this run, this machine): train 820.1 img/s over 10 epochs; eval 1954.1 img/s"
    assert f"{speed}; peak RSS 1174 MiB" in lines
    assert "FGSM (400 examples): clean " in text and "8/255" in text
    assert "epochs=10" in text and "lr=0.05" in text and "[layer]" in text


def test_summary_of_a_test_by_epoch_run_shows_what_test_selection_would_claim():
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "selection_accuracy": 50.0 + e} for e in range(4)]
    selection = {"candidates": "epochs", "selected_test": 61.0, "test_by_candidate": [40.0, 63.5, 62.0, 61.0]}
    record = {
        "run_id": "abc",
        "status": "finished",
        "spec": {"method": "vpt", "backbone": "micro-vit", "task": "t", "seed": 1},
        "result": {"history": history, "selection": selection},
    }
    lines = summary_lines(record)
    (curve,) = [line for line in lines if line.startswith("test by epoch: ")]
    assert curve.endswith("40.00 -> 61.00") and len(curve.split()[3]) == 4
    assert (
        "  selected 61.00; best over 4 epochs 63.50 (#2): a test-selected number would claim +2.50 "
        "(test is never read by training or selection)"
    ) in lines
    assert not any(
        line.startswith("test by epoch") for line in summary_lines({**record, "result": {"history": history}})
    )


def test_summary_of_a_failed_run_shows_the_error_line():
    record = {
        "run_id": "abc",
        "status": "failed",
        "spec": {"method": "vpt", "backbone": "tiny-vit", "task": "t", "seed": 1},
        "result": {},
        "error": "Traceback (most recent call last):\n  ...\nRuntimeError: boom",
    }
    lines = summary_lines(record)
    assert "error: RuntimeError: boom" in lines and not any(line.startswith("metrics") for line in lines)


def test_grid_point_is_the_searched_protocol_and_the_options_off_default():
    spec = {
        "protocol": {"lr": 0.125, "weight_decay": 0.001, "epochs": 100},
        "protocol_source": {"lr": "search", "weight_decay": "search", "epochs": "suite"},
        "method_config": {"num_tokens": 50, "deep": False},
    }
    defaults = {"num_tokens": 5, "deep": False}
    assert grid_point(spec, defaults) == {"lr": 0.125, "weight_decay": 0.001, "num_tokens": 50}
    assert format_point(grid_point(spec, defaults)) == "lr=0.125 weight_decay=0.001 num_tokens=50"
    assert grid_point(spec) == {"lr": 0.125, "weight_decay": 0.001}
    assert format_point({}) == "-"


def test_method_options_carry_defaults_ranges_and_help_from_the_config():
    options = {o.name: o for o in method_options(get_method("vpt"))}
    assert options["num_tokens"].default == 5 and options["num_tokens"].limits == (1, 4096)
    assert options["num_tokens"].help.startswith("p (KMnP/vpt NUM_TOKENS default")
    adapt = {o.name: o for o in method_options(get_method("adapt"))}
    # a comment block above a field is its help when the line has none
    assert adapt["target_tokens"].help.startswith("T_target: total active tokens")
    assert adapt["target_tokens"].type == "int | None"


def test_bench_methods_name_lists_options_and_unknown_is_one_line(capsys):
    assert main(["methods", "lora"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("lora: Hu et al., LoRA")
    assert "  rank: int = 8  in [1, 16,384]\n      r\n" in text
    assert "  targets: str = 'q,v'\n" in text
    assert main(["methods", "no-such-method"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'no-such-method'" in err[0]


def test_bench_show_summary_json_and_runs_columns(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    args = ["run", "--store", str(store), "--method", "linear", "--suite", "smoke", "--backbone", "tiny-vit"]
    assert main([*args, "--tasks", "shapes", "--protocol", "epochs=2", "--seeds", "3", "--no-fgsm"]) == 0
    with Store(store) as s:
        (rec,) = s.records()
    capsys.readouterr()
    assert main(["show", rec.run_id[:8], "--store", str(store)]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[0] == f"run {rec.run_id}  [finished]  linear on tiny-vit"
    assert any(line.startswith("loss by epoch:      ") for line in summary)
    assert len(summary) < 25  # a summary, not the record
    assert main(["show", rec.run_id[:8], "--store", str(store), "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["run_id"] == rec.run_id and raw["metrics"] == rec.metrics
    assert main(["runs", "--store", str(store)]) == 0
    header, row = capsys.readouterr().out.splitlines()  # off a terminal: tab-separated
    assert header.split("\t")[7:9] == ["stage", "grid point"]
    assert row.split("\t")[:1] == [rec.run_id[:12]] and row.split("\t")[7:9] == ["final", "-"]


@pytest.mark.parametrize("name", ["vpt", "adapt", "e2vpt", "coop", "lora", "prefix", "adapter"])
def test_every_option_of_the_built_ins_has_help(name):
    missing = [o.name for o in method_options(get_method(name)) if not o.help]
    assert not missing, f"{name}: options without help: {missing}"
