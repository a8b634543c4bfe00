"""What `bench leaderboard build` writes besides the JSON: leaderboard.csv (one line per cell and per
entry average, documented header), and `bench leaderboard plot` (any two columns)."""

from __future__ import annotations

import csv
import io

import pytest
from test_leaderboard import fake_suites, sample_records  # the leaderboard tests' helpers (same folder)

from petlbench.cli import main
from petlbench.cli.leaderboard import installed_suite
from petlbench.leaderboard.build import OUTPUTS, build, build_leaderboard, check
from petlbench.leaderboard.records import write_records
from petlbench.leaderboard.render import CSV_HEADER, PLOT_COLUMNS, render_csv, render_plot


def _lines(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == CSV_HEADER
    return list(reader)


def test_csv_has_one_line_per_cell_and_per_entry_average():
    doc = build_leaderboard(sample_records(), [], suites=installed_suite)
    lines = _lines(render_csv(doc))
    cells = [x for x in lines if x["kind"] == "cell"]
    assert len(cells) == len(doc["rows"]) == 4
    (colors,) = [x for x in cells if x["scope"] == "colors" and x["method"] == "vpt"]
    assert (colors["mean"], colors["std"], colors["n"]) == ("50.0", "10.0", "3")
    assert float(colors["ci95_low"]) == pytest.approx(25.1586, rel=1e-5)
    assert float(colors["ci95_high"]) == pytest.approx(74.8414, rel=1e-5)
    assert (colors["rank"], colors["tied"], colors["selected"]) == ("1", "false", "true")
    assert (colors["params_method"], colors["params_with_head"]) == ("320", "710")
    assert (colors["image_gmacs"], colors["fgsm_accuracy"]) == ("0.0025", "7.0")  # at the largest eps
    assert colors["fgsm_eps"] == "0.0313725"  # 8/255, 6 significant digits
    assert (colors["group"], colors["metric"], colors["deviations"]) == ("appearance", "accuracy", "")
    assert colors["speed_ratio"] == "" and colors["selection_inflation"] == ""  # no data: empty
    (position,) = [x for x in cells if x["scope"] == "position"]
    assert (position["n"], position["ci95_low"], position["rank"]) == ("1", "", "")  # one seed
    # per entry: its headline, the other average (mean over tasks) and its group averages
    vpt = [x for x in lines if x["method"] == "vpt" and x["kind"] != "cell"]
    assert [(x["kind"], x["scope"]) for x in vpt] == [
        ("headline", "mean of group means"),
        ("average", "mean over tasks"),
        ("group", "appearance"),
        ("group", "structured"),
        ("group", "real"),
        ("group", "shifted"),
    ]
    assert vpt[0]["mean"] == "" and vpt[0]["rank"] == ""  # vpt misses groups: no headline, no rank
    assert all(x["rank"] == "" for x in vpt[1:])  # only cells and headlines are ranked
    assert float(vpt[1]["mean"]) == pytest.approx((50 + 80 + 33) / 3, rel=1e-5)
    assert (vpt[2]["mean"], vpt[2]["std"], vpt[2]["n"]) == ("65.0", "10.0", "3")
    assert len(lines) == 4 + 2 * 6


def test_build_writes_the_csv_and_check_compares_it(tmp_path):
    write_records(sample_records(), tmp_path / "records")
    doc = build(tmp_path / "records", tmp_path / "lb", suites=installed_suite)
    assert "leaderboard.csv" in OUTPUTS
    text = (tmp_path / "lb" / "leaderboard.csv").read_text()
    assert text == render_csv(doc) and text.splitlines()[0] == ",".join(CSV_HEADER)
    assert check(tmp_path / "records", tmp_path / "lb", suites=installed_suite) == []
    (tmp_path / "lb" / "leaderboard.csv").write_text(text.replace("50.0", "51.0"))
    assert check(tmp_path / "records", tmp_path / "lb", suites=installed_suite) == ["leaderboard.csv"]


@pytest.fixture
def ungrouped():
    """The smoke suite's tasks without groups: the headline is the mean over tasks, never null here."""
    return fake_suites(dict.fromkeys(["colors", "shapes", "position"]))


@pytest.mark.parametrize(("x", "y"), [("params", "accuracy"), ("gmacs", "accuracy"), ("memory", "params")])
def test_bench_leaderboard_plot_takes_any_two_columns(tmp_path, capsys, ungrouped, x, y):
    write_records(sample_records(), tmp_path / "records")
    build(tmp_path / "records", tmp_path / "lb", suites=ungrouped)
    out = tmp_path / "plot.svg"
    lb = str(tmp_path / "lb" / "leaderboard.json")
    assert main(["leaderboard", "plot", "--leaderboard", lb, "--out", str(out), "--x", x, "--y", y]) == 0
    assert f"plot: {y} vs {x}" in capsys.readouterr().out
    svg = out.read_text()
    assert f"smoke v2: {y} vs {x}" in svg
    assert PLOT_COLUMNS[x].label.format(headline="mean over tasks") in svg
    assert PLOT_COLUMNS[y].label.format(headline="mean over tasks") in svg
    assert ">vpt<" in svg and ">linear<" in svg  # both entries have both values


def test_plot_png_no_data_and_bad_input(tmp_path, capsys):
    write_records(sample_records(), tmp_path / "records")
    build(tmp_path / "records", tmp_path / "lb", suites=installed_suite)
    lb = str(tmp_path / "lb" / "leaderboard.json")
    assert main(["leaderboard", "plot", "--leaderboard", lb, "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # speed ratio is recorded by nobody yet: the panel says so instead of plotting nothing silently
    doc = build_leaderboard(sample_records(), [], suites=installed_suite)
    assert b"no entry has both speed-ratio and accuracy" in render_plot(doc, "speed-ratio", "accuracy")["svg"]
    assert render_plot(doc, "gmacs", "accuracy") == render_plot(doc, "gmacs", "accuracy")  # deterministic
    capsys.readouterr()
    for argv, said in (
        (["--x", "flops"], "invalid choice: 'flops'"),
        (["--x", "params", "--y", "params"], "plot two different columns"),
        (["--out", str(tmp_path / "p.pdf")], "written as .svg or .png, not '.pdf'"),
        (["--leaderboard", str(tmp_path / "none.json")], "no leaderboard there"),
    ):
        full = ["leaderboard", "plot", "--leaderboard", lb, "--out", str(tmp_path / "q.svg"), *argv]
        assert main(full) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
