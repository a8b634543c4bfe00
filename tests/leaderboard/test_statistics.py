"""Leaderboard statistics: Student t quantiles without scipy, 95% CIs over seeds, ranks by CI with
ties, the headline average, and the selection-inflation / speed-ratio fields read from records."""

from __future__ import annotations

import csv
import io
import math

import pytest
from test_leaderboard import fake_suites, make_record  # the leaderboard tests' helpers (same folder)

from petlbench.cli.leaderboard import installed_suite
from petlbench.leaderboard.build import build_leaderboard, ci95, ci_ranks, t_quantile, validate
from petlbench.leaderboard.render import average_table, fmt_rank, records_used, render_csv, task_table


def test_t_quantiles_match_their_closed_forms_and_tables():
    # df = 1: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)) = 4.3026527297494638...
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-13)
    assert t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-13)
    assert t_quantile(0.975, 2) == pytest.approx(4.3026527297494638, rel=1e-13)
    # the printed tables (Student t, two-sided 95%), to their digits
    for df, table in ((3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045), (30, 2.042), (120, 1.980)):
        assert round(t_quantile(0.975, df), 3) == table, df
    # many seeds: towards the normal's 1.959964 (scipy.stats.t.ppf(0.975, 10000) = 1.960201239890626)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960201239890626, rel=1e-10)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_t_quantiles_agree_with_scipy_when_it_is_there():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 41):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-12), (p, df)


def test_ci95_on_known_numbers():
    # 40, 50, 60: mean 50, sample std 10, n 3 -> 50 -/+ 4.30265 * 10 / sqrt(3)
    low, high = ci95(50.0, 10.0, 3)
    assert (low, high) == (pytest.approx(25.158622882496687, rel=1e-12), pytest.approx(74.84137711750331))
    assert ci95(33.0, 0.0, 1) is None and ci95(None, None, 0) is None
    assert ci95(55.0, 0.0, 3) == [55.0, 55.0]  # no spread: a zero-width interval


def test_ci_ranks_count_the_rows_statistically_better_and_tie_the_rest():
    ranks = ci_ranks([("a", [10.0, 20.0]), ("b", [15.0, 25.0]), ("c", [26.0, 30.0]), ("d", None)])
    assert ranks["c"] == {"position": 1, "tied_with": [], "out_of": 3}
    # c's interval lies above a's and b's; a and b overlap: both rank 2, tied
    assert ranks["a"] == {"position": 2, "tied_with": ["b"], "out_of": 3}
    assert ranks["b"] == {"position": 2, "tied_with": ["a"], "out_of": 3}
    assert ranks["d"] == {"position": None, "tied_with": [], "out_of": 3}  # no interval: not ranked
    assert [fmt_rank(ranks[k]) for k in "abcd"] == ["=2", "=2", "1", "-"]
    # touching intervals are not separated (lower bound must be strictly above)
    assert ci_ranks([("x", [1.0, 2.0]), ("y", [2.0, 3.0])])["x"]["position"] == 1


def _three_methods() -> list[dict]:
    values = {"vpt": (80.0, 81.0, 82.0), "bitfit": (79.0, 80.0, 81.0), "linear": (60.0, 61.0, 62.0)}
    return [
        make_record("colors", seed, v, method=m, config=None if m == "vpt" else {})
        for m, vs in values.items()
        for seed, v in zip((1, 2, 3), vs, strict=True)
    ]


def test_rows_carry_ci95_and_tied_ranks_per_task():
    doc = build_leaderboard(_three_methods(), [], suites=installed_suite)
    validate(doc)
    rows = {r["method"]: r for r in doc["rows"]}
    vpt, bitfit, linear = rows["vpt"], rows["bitfit"], rows["linear"]
    assert vpt["ci95"] == [pytest.approx(78.5159, rel=1e-5), pytest.approx(83.4841, rel=1e-5)]
    assert vpt["rank"] == {"position": 1, "tied_with": [bitfit["cell_id"]], "out_of": 3}
    assert bitfit["rank"] == {"position": 1, "tied_with": [vpt["cell_id"]], "out_of": 3}
    assert linear["rank"] == {"position": 3, "tied_with": [], "out_of": 3}  # two rows are better
    table = task_table(doc, "smoke", "2")
    ranks = {row[3]: row[table.header.index("rank")] for row in table.rows}
    assert ranks == {"vpt": "=1", "bitfit": "=1", "linear": "3"}
    assert "[78.52, 83.48]" in [row[table.header.index("95% CI")] for row in table.rows]
    # one seed: no interval, no rank
    (row,) = build_leaderboard([make_record("colors", 1, 50.0)], [], suites=installed_suite)["rows"]
    assert row["ci95"] is None and row["rank"]["position"] is None


def test_the_headline_is_the_mean_of_group_means_with_its_own_ci():
    suites = fake_suites({"colors": "g1", "shapes": "g1", "position": "g2"})
    base = {"colors": 60.0, "shapes": 80.0, "position": 40.0}
    records = [make_record(t, s, v + (-1 if s == 1 else 1)) for t, v in base.items() for s in (1, 2)]
    doc = build_leaderboard(records, [], suites=suites)
    validate(doc)
    (entry,) = doc["entries"]
    assert doc["suites"][0]["headline"]["key"] == "average_of_groups"
    assert "vtab1k.yaml:L9-10" in doc["suites"][0]["headline"]["what"]
    assert entry["average"]["mean"] == 60.0  # mean over tasks: (60 + 80 + 40) / 3
    head = entry["headline"]
    assert (head["key"], head["name"], head["mean"]) == ("average_of_groups", "mean of group means", 55.0)
    # per-seed headlines 54 and 56: std sqrt(2), n 2, t(0.975, 1) = 12.7062
    assert head["std"] == pytest.approx(math.sqrt(2), rel=1e-5) and head["n_seeds"] == 2
    assert head["ci95"] == [pytest.approx(42.2938, rel=1e-5), pytest.approx(67.7062, rel=1e-5)]
    assert entry["average_of_groups"] == 55.0 and entry["rank"]["position"] == 1
    table = average_table(doc, "smoke", "2")
    assert table.header[3] == "mean of group means ± std [95% CI] (seeds)"
    assert table.rows[0][3] == "55.00 ± 1.41 [42.29, 67.71] (n=2)"
    assert "mean over tasks" in table.header and "mean of groups" not in table.header


def test_entries_are_ranked_by_headline_and_incomplete_ones_are_not():
    ungrouped = fake_suites({"colors": None})  # no groups: the headline is the mean over tasks
    lora = [make_record("colors", s, 90.0 + s, method="lora", config={}) for s in (1, 2)]
    records = _three_methods() + lora
    doc = build_leaderboard(records, [], suites=ungrouped)
    validate(doc)
    entries = {e["method"]: e for e in doc["entries"]}
    assert all(e["headline"]["key"] == "average" for e in entries.values())
    assert entries["lora"]["headline"]["ci95"] == [
        pytest.approx(91.5 - 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6),
        pytest.approx(91.5 + 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6),
    ]
    # lora [85.15, 97.85] lies above vpt [78.52, 83.48] and bitfit [77.52, 82.48], which overlap (=2);
    # linear [58.52, 63.48] lies below all three
    assert entries["lora"]["rank"]["position"] == 1
    assert entries["vpt"]["rank"]["position"] == 2 and entries["bitfit"]["rank"]["position"] == 2
    assert entries["linear"]["rank"]["position"] == 4
    table = average_table(doc, "smoke", "2")
    assert {row[1]: row[0] for row in table.rows} == {"bitfit": "=2", "linear": "4", "lora": "1", "vpt": "=2"}
    lines = csv.DictReader(io.StringIO(render_csv(doc)))
    heads = {x["method"]: (x["rank"], x["tied"]) for x in lines if x["kind"] == "headline"}
    assert heads == {
        "bitfit": ("2", "true"),
        "linear": ("4", "false"),
        "lora": ("1", "false"),
        "vpt": ("2", "true"),
    }
    # a suite task without a result: the entry is not ranked
    doc = build_leaderboard(_three_methods(), [], suites=fake_suites({"colors": None, "shapes": None}))
    assert all(e["rank"]["position"] is None and not e["complete"] for e in doc["entries"])


def test_selection_inflation_and_speed_ratio_are_read_from_the_records_and_shown_as_dashes_when_absent():
    records = [make_record("colors", 1, 55.0), make_record("colors", 2, 70.0)]
    records[0]["result"]["selection"] = {"test_by_candidate": [50.0, 62.0, 58.0], "candidates": "epochs"}
    records[1]["result"]["selection"] = {
        "test_by_candidate": [70.0, 71.0],
        "selected_test": 70.0,
        "candidates": "epochs",
    }
    for r, ratio in zip(records, (1.25, 1.35), strict=True):
        r["result"]["perf"] = {"step_time_ratio": ratio}
    doc = build_leaderboard(records, [], suites=installed_suite)
    validate(doc)
    (row,) = doc["rows"]
    assert row["selection_inflation"] == {
        "selected_test": 62.5,
        "best_test": 66.5,
        "gap": 4.0,  # (62 - 55 + 71 - 70) / 2
        "n": 2,
        "candidates": "epochs",
    }
    assert row["efficiency"]["speed_ratio"] == 1.3
    (entry,) = doc["entries"]
    assert entry["selection_inflation"] == {"gap": 4.0, "n_tasks": 1}
    assert entry["efficiency"]["speed_ratio"] == 1.3
    table = task_table(doc, "smoke", "2")
    assert table.rows[0][table.header.index("selection inflation")] == "4.00"
    assert table.rows[0][table.header.index("speed ratio")] == "1.30"
    plain = build_leaderboard([make_record("colors", 1, 55.0)], [], suites=installed_suite)
    assert plain["rows"][0]["selection_inflation"] is None
    assert plain["rows"][0]["efficiency"]["speed_ratio"] is None
    table = average_table(plain, "smoke", "2")
    assert table.rows[0][table.header.index("speed ratio")] == "-"
    assert table.rows[0][table.header.index("selection inflation")] == "-"


def test_a_test_by_epoch_rerun_joins_its_cell_and_each_seed_counts_once():
    """A ``--test-by-epoch`` re-run of a seed has its own run id but computes the same numbers: it
    lands in the plain runs' cell, replaces that seed's plain record (it measured more), and the
    seed is counted once."""
    import dataclasses

    from petlbench.harness.spec import RunSpec

    plain = [make_record("colors", 1, 55.0), make_record("colors", 2, 70.0)]
    rerun = make_record("colors", 1, 55.0)
    spec = RunSpec.from_dict(rerun["spec"])
    flagged = dataclasses.replace(spec, measure={**spec.measure, "test_by_epoch": True})
    rerun["spec"], rerun["run_id"] = flagged.to_dict(), flagged.run_id
    assert rerun["run_id"] != plain[0]["run_id"]
    rerun["result"]["selection"] = {"test_by_candidate": [50.0, 60.0, 55.0], "selected_test": 55.0}
    for records in (plain + [rerun], [rerun] + plain):  # the same board whatever the file order
        doc = build_leaderboard(records, [], suites=installed_suite)
        validate(doc)
        (row,) = doc["rows"]
        assert row["n"] == 2 and row["mean"] == 62.5
        assert sorted(r["run_id"] for r in row["runs"]) == sorted([rerun["run_id"], plain[1]["run_id"]])
        assert row["selection_inflation"]["gap"] == 5.0 and row["selection_inflation"]["n"] == 1
        assert (doc["inputs"]["records"], doc["inputs"]["used"], doc["inputs"]["superseded_same_seed"]) == (
            3,
            2,
            1,
        )
        assert "2 of 3 records used: finished, final stage, one per seed (1 re-run of a seed" in records_used(
            doc
        )
    # without the re-run the board is the plain one, and two plain copies of a seed count once
    doc = build_leaderboard(plain, [], suites=installed_suite)
    assert (
        "superseded_same_seed" not in doc["inputs"]
        and records_used(doc) == "2 of 2 records used: finished, final stage"
    )
    doc = build_leaderboard(plain + [dict(plain[0])], [], suites=installed_suite)
    assert doc["rows"][0]["n"] == 2
