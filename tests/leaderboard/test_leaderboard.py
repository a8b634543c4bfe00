"""The leaderboard: records -> leaderboard.json (schema-valid), aggregation over seeds, views, the
`bench export` / `bench leaderboard build|check` commands, determinism of every output file."""

from __future__ import annotations

import copy
import json
import random
import shlex
import shutil
import statistics

import pytest

from petlbench.cli import main
from petlbench.cli.leaderboard import installed_suite
from petlbench.harness.spec import RunSpec
from petlbench.harness.store import Store
from petlbench.leaderboard.build import (
    OUTPUTS,
    InstalledSuite,
    SuiteLookup,
    build,
    build_leaderboard,
    check,
    load_reported,
    mean_std,
    validate,
)
from petlbench.leaderboard.records import export_store, load_records, record_line, write_records
from petlbench.leaderboard.render import pareto_front, render_html, render_markdown

PROTOCOL = {
    "batch_size": 32,
    "epochs": 30,
    "eval_batch_size": 256,
    "eval_split": "test",
    "grad_clip": 1.0,
    "lr": 0.1,
    "momentum": 0.9,
    "optimizer": "sgd",
    "selection_split": "val",
    "shots": None,
    "train_split": "train",
    "warmup_epochs": 1.0,
    "weight_decay": 0.0001,
    "schedule": "linear_warmup_cosine_step",
    "warmup_lr": 1e-05,
    "augmentation": "none",
}
CONFIG = {
    "deep": False,
    "depth": None,
    "dropout": 0.0,
    "num_tokens": 5,
    "text_tokens": None,
    "tower": "image",
}
FGSM = {"epsilons": [1 / 255, 2 / 255, 4 / 255, 8 / 255], "max_examples": 500}


def fake_suites(groups: dict[str, str | None]) -> SuiteLookup:
    """A suite lookup in which every suite is installed as version 2 with these tasks (in this order)
    and groups, and an empty protocol (so a reproduce command names every protocol field)."""
    suite = InstalledSuite("2", tuple(groups), dict(groups), lambda task, method: {})
    return lambda name: suite


def make_record(
    task: str,
    seed: int,
    accuracy: float,
    *,
    method: str = "vpt",
    backbone: str = "tiny-vit",
    selection: float | None = None,
    protocol: dict | None = None,
    config: dict | None = None,
    stage: str = "final",
    status: str = "finished",
    fgsm: list[float] | None = None,
) -> dict:
    given = {**PROTOCOL, **(protocol or {})}
    pretrained = bool(given.pop("backbone_pretrained", True))
    spec = RunSpec(
        method=method,
        method_config=dict(CONFIG if config is None else config),
        backbone=backbone,
        suite="smoke",
        suite_version="2",
        task=task,
        protocol=given,
        pretrained=pretrained,
        seed=seed,
        stage=stage,
        measure={"fgsm": FGSM},
    )
    result = {
        "metric": "accuracy",
        "parameters": {
            "method": 320,
            "head": 390,
            "with_head": 710,
            "percent_of_backbone": 0.25,
            "denominator": "all backbone parameters",
            "backbone_total": 128000,
        },
        "cost": {"image_gmacs": 0.0025, "unit": "GMACs"},
        "train": {
            "images_per_second": 300.0 + seed,
            "device": "cpu",
            "dtype": "float32",
            "memory": {"kind": "peak RSS", "peak_mib": 800.0},
        },
        "eval": {"images_per_second": 2000.0},
    }
    if fgsm is not None:
        result["robustness"] = {"fgsm": {"eps": FGSM["epsilons"], "accuracy": fgsm, "clean": accuracy}}
    return {
        "run_id": spec.run_id,
        "spec": spec.to_dict(),
        "status": status,
        "metrics": {"accuracy": accuracy, "selection_accuracy": accuracy if selection is None else selection},
        "result": result,
        "provenance": {"git": {"commit": "0" * 40, "dirty": False}},
        "error": None,
        "attempts": 1,
        "wall_time_s": 1.0,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:01+00:00",
    }


def sample_records() -> list[dict]:
    return [
        make_record("colors", 1, 40.0, fgsm=[30.0, 20.0, 10.0, 5.0]),
        make_record("colors", 2, 50.0, fgsm=[32.0, 22.0, 12.0, 7.0]),
        make_record("colors", 3, 60.0, fgsm=[34.0, 24.0, 14.0, 9.0]),
        make_record("shapes", 1, 70.0),
        make_record("shapes", 2, 80.0),
        make_record("shapes", 3, 90.0),
        make_record("position", 1, 33.0),
        make_record("colors", 1, 10.0, method="linear", config={}),
        # not results: a search trial and a failed run
        make_record("colors", 1, 99.0, stage="search"),
        make_record("shapes", 4, 0.0, status="failed"),
    ]


@pytest.fixture(scope="module")
def doc() -> dict:
    return build_leaderboard(sample_records(), load_reported(), suites=installed_suite)


def _row(doc: dict, task: str, method: str = "vpt") -> dict:
    (row,) = [r for r in doc["rows"] if r["task"] == task and r["method"] == method]
    return row


def _entry(doc: dict, method: str = "vpt") -> dict:
    (entry,) = [e for e in doc["entries"] if e["method"] == method]
    return entry


# ----- aggregation --------------------------------------------------------------------------------


def test_mean_std_n_over_seeds_on_hand_made_records(doc):
    colors = _row(doc, "colors")
    assert (colors["mean"], colors["std"], colors["n"]) == (50.0, 10.0, 3)  # sample std: n - 1
    assert [v["seed"] for v in colors["values"]] == [1, 2, 3]
    assert [r["seed"] for r in colors["runs"]] == [1, 2, 3]
    shapes = _row(doc, "shapes")
    assert (shapes["mean"], shapes["std"], shapes["n"]) == (80.0, 10.0, 3)  # the failed seed 4 is not used
    position = _row(doc, "position")
    assert (position["mean"], position["std"], position["n"]) == (33.0, 0.0, 1)  # n = 1: std 0
    assert mean_std([1.0, 2.0, 4.0]) == (statistics.fmean([1, 2, 4]), statistics.stdev([1, 2, 4]), 3)
    assert "n - 1" in doc["conventions"]["std"]
    assert doc["inputs"] == {
        "records": 10,
        "used": 8,
        "skipped_not_final_or_unfinished": 2,
        "records_sha256": doc["inputs"]["records_sha256"],
    }


def test_suite_and_group_averages_use_the_suite_groups(doc):
    entry = _entry(doc)
    assert entry["tasks"] == ["colors", "shapes", "position"]  # the suite's order
    assert not entry["complete"] and "digits" in entry["missing_tasks"]
    assert entry["average"]["mean"] == pytest.approx((50 + 80 + 33) / 3, rel=1e-5)
    # only seed 1 is in every task: one per-seed average, so no std
    assert entry["average"]["n_seeds"] == 1 and entry["average"]["std"] is None
    groups = {g["group"]: g for g in entry["groups"]}
    assert set(groups) == {"appearance", "structured", "real", "shifted"}
    appearance = groups["appearance"]
    assert appearance["complete"] and appearance["tasks"] == ["colors", "shapes"]
    assert appearance["mean"] == 65.0
    # per-seed averages (40+70)/2, (50+80)/2, (60+90)/2 -> sample std 10
    assert (appearance["n_seeds"], appearance["std"]) == (3, 10.0)
    assert groups["structured"]["mean"] == 33.0 and not groups["structured"]["complete"]
    assert groups["real"]["mean"] is None and groups["real"]["n_tasks"] == 0
    assert entry["average_of_groups"] is None and entry["base_new_hm"] is None  # groups without results
    assert _row(doc, "colors")["group"] == "appearance"


def test_efficiency_and_robustness_columns(doc):
    eff = _row(doc, "colors")["efficiency"]
    assert eff["trainable_params_method"] == 320 and eff["trainable_params_with_head"] == 710
    assert eff["percent_of_backbone"] == 0.25 and eff["denominator"] == "all backbone parameters"
    assert eff["image_gmacs"] == 0.0025 and eff["train_peak_memory_mib"] == 800.0
    assert eff["train_images_per_s"] == 302.0 and (eff["device"], eff["dtype"]) == ("cpu", "float32")
    fgsm = _row(doc, "colors")["fgsm"]
    assert fgsm["accuracy"] == [32.0, 22.0, 12.0, 7.0] and fgsm["n"] == 3 and fgsm["eps_x255"][-1] == 8.0
    assert _row(doc, "shapes")["fgsm"] is None


def test_selection_picks_the_best_selection_score_not_the_best_test_score():
    records = [
        make_record("colors", 1, 90.0, selection=10.0, protocol={"lr": 0.5}),
        make_record("colors", 1, 50.0, selection=60.0, protocol={"lr": 0.01}),
    ]
    doc = build_leaderboard(records, suites=installed_suite)
    assert len(doc["rows"]) == 2
    (entry,) = doc["entries"]
    assert entry["average"]["mean"] == 50.0
    chosen = [r for r in doc["rows"] if r["selected"]]
    assert [r["spec"]["protocol"]["lr"] for r in chosen] == [0.01]


def test_rows_link_to_runs_and_the_reproduce_command_recreates_the_same_run_ids(doc):
    from petlbench.cli.parser import build_parser
    from petlbench.cli.plan import planned
    from petlbench.methods.registry import get_method

    config = get_method("vpt")({"num_tokens": 3}).config_dict()
    records = [make_record("shapes", s, 50.0 + s, config=config, protocol={"lr": 0.05}) for s in (1, 2)]
    row = build_leaderboard(records, suites=installed_suite)["rows"][0]
    assert sorted(r["run_id"] for r in row["runs"]) == sorted(r["run_id"] for r in records)
    argv = shlex.split(row["reproduce"])
    assert argv[:2] == ["bench", "run"] and "--protocol" in argv and "lr=0.05" in argv
    _, specs = planned(build_parser().parse_args(argv[1:]))  # the planning of `bench run`
    assert sorted(s.run_id for s in specs) == sorted(r["run_id"] for r in records)


# ----- schema -------------------------------------------------------------------------------------


def test_schema_validates_a_built_leaderboard_and_rejects_a_broken_one(doc):
    validate(doc)
    validate(build_leaderboard([], suites=installed_suite))
    broken = copy.deepcopy(doc)
    del broken["schema_version"]
    with pytest.raises(Exception, match="schema_version"):
        validate(broken)
    broken = copy.deepcopy(doc)
    broken["rows"][0]["std"] = -1.0
    with pytest.raises(Exception, match="std"):
        validate(broken)


def test_reported_rows_are_marked_and_rendered(doc):
    assert doc["reported"] and all(r["kind"] == "reported" for r in doc["reported"])
    maple = [r for r in doc["reported"] if r["method"] == "maple"]
    assert maple[0]["trainable_params"] == 3_555_072 and maple[0]["percent"] == 2.86
    page = render_html(doc)
    assert '<tr class="reported">' in page and "3,555,072" in page


# ----- build, determinism, check ------------------------------------------------------------------


def test_build_is_deterministic_and_independent_of_record_order(tmp_path):
    records = sample_records()
    write_records(records, tmp_path / "records")
    build(tmp_path / "records", tmp_path / "a", suites=installed_suite)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    (tmp_path / "records2").mkdir()
    (tmp_path / "records2" / "smoke.jsonl").write_text("".join(record_line(r) + "\n" for r in shuffled))
    build(tmp_path / "records2", tmp_path / "b", suites=installed_suite)
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    text = (tmp_path / "a" / "leaderboard.json").read_text()
    assert json.loads(text)["schema_version"] == "1.2" and text.endswith("}\n")
    assert b"<svg" in (tmp_path / "a" / "pareto.svg").read_bytes()
    assert '<figure id="pareto"><svg' in (tmp_path / "a" / "index.html").read_text()  # inlined
    assert (tmp_path / "a" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_records_folder_is_refused_and_an_empty_leaderboard_still_renders(tmp_path, capsys):
    from petlbench.leaderboard.build import render_all

    (tmp_path / "records").mkdir()
    for verb, flag in (("build", "--out"), ("check", "--dir")):
        argv = ["leaderboard", verb, "--records", str(tmp_path / "records"), flag, str(tmp_path / "lb")]
        assert main(argv) == 2
        assert "no run records in" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()
    doc = build_leaderboard([], suites=installed_suite)
    validate(doc)
    files = render_all(doc)
    assert sorted(files) == sorted(OUTPUTS) and b"No measured results yet" in files["leaderboard.md"]


def test_stale_committed_files_make_check_fail(tmp_path, capsys):
    records, committed = tmp_path / "records", tmp_path / "committed"
    write_records(sample_records()[:4], records)
    build(records, committed, suites=installed_suite)
    assert check(records, committed, suites=installed_suite) == []
    # a new record that was never built into the committed files
    write_records(sample_records(), records)
    differ = check(records, committed, suites=installed_suite)
    assert "leaderboard.json" in differ and "leaderboard.md" in differ and "index.html" in differ
    capsys.readouterr()
    assert main(["leaderboard", "check", "--records", str(records), "--dir", str(committed)]) == 1
    err = capsys.readouterr().err
    assert "leaderboard check failed" in err and "leaderboard.json" in err
    # rebuilding fixes it; deleting or hand-editing a committed file breaks it again
    build(records, committed, suites=installed_suite)
    assert check(records, committed, suites=installed_suite) == []
    (committed / "pareto.png").unlink()
    assert check(records, committed, suites=installed_suite) == ["pareto.png (missing)"]
    build(records, committed, suites=installed_suite)
    edited = json.loads((committed / "leaderboard.json").read_text())
    edited["rows"][0]["mean"] = 99.0
    (committed / "leaderboard.json").write_text(json.dumps(edited, sort_keys=True, indent=1) + "\n")
    assert check(records, committed, suites=installed_suite) == ["leaderboard.json"]


def test_check_fails_on_a_committed_leaderboard_that_breaks_the_schema(tmp_path, capsys):
    records, committed = tmp_path / "records", tmp_path / "committed"
    write_records(sample_records()[:2], records)
    build(records, committed, suites=installed_suite)
    bad = json.loads((committed / "leaderboard.json").read_text())
    bad["schema_version"] = "0.1"
    (committed / "leaderboard.json").write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["leaderboard", "check", "--records", str(records), "--dir", str(committed)]) == 2
    assert "schema" in capsys.readouterr().err


# ----- records ------------------------------------------------------------------------------------


def test_export_writes_sorted_json_lines_that_round_trip_and_merge(tmp_path, capsys):
    records = sample_records()
    with Store(tmp_path / "s.sqlite") as store:
        for r in records[:5]:
            store.import_record(r)
    out = tmp_path / "records"
    assert main(["export", "--store", str(tmp_path / "s.sqlite"), "--out", str(out)]) == 0
    lines = (out / "smoke.jsonl").read_text().splitlines()
    assert len(lines) == 5 and lines == [record_line(json.loads(line)) for line in lines]
    keys = [
        (d["spec"]["method"], d["spec"]["backbone"], d["spec"]["task"], d["spec"]["seed"])
        for d in map(json.loads, lines)
    ]
    assert keys == sorted(keys, key=lambda k: (k[0], k[1], k[2], k[3]))
    assert {r["run_id"]: r for r in load_records(out)} == {r["run_id"]: r for r in records[:5]}
    # a second store merges in; the failed run is not exported
    with Store(tmp_path / "t.sqlite") as store:
        for r in records[5:]:
            store.import_record(r)
    summary = export_store(tmp_path / "t.sqlite", out)
    assert (summary.added, summary.kept, summary.replaced) == (4, 0, 0) and len(load_records(out)) == 9
    summary = export_store(tmp_path / "t.sqlite", out, replace=True)
    assert (summary.replaced, summary.dropped) == (4, 5) and len(load_records(out)) == 4


def test_a_hand_edited_record_is_refused(tmp_path):
    record = make_record("colors", 1, 40.0)
    record["spec"]["seed"] = 7  # its run id no longer matches its spec
    (tmp_path / "smoke.jsonl").write_text(record_line(record) + "\n")
    with pytest.raises(Exception, match="not the hash of its spec"):
        load_records(tmp_path)


# ----- views --------------------------------------------------------------------------------------


def test_html_has_sortable_tables_and_markdown_has_the_tables(tmp_path, doc):
    page = render_html(doc)
    assert page.count('<table class="sortable"') == 3
    assert "addEventListener" in page and "aria-sort" in page and "data-value=" in page
    assert "<th>mean ± std</th>" in page and "<code>bench run --method vpt" in page
    assert "<script src" not in page and "<link" not in page  # self-contained
    # the page opens on the averages; the per-task table is collapsed below them
    order = [page.index(x) for x in ('id="averages-0"', '<details id="per-task-0">', 'id="tasks-0"')]
    assert order == sorted(order)
    assert "<summary>Per task (4 rows)</summary>" in page and "<details open" not in page
    assert "Headline: mean of group means: " in page and "Not the headline, shown for reference: mean" in page
    md = render_markdown(doc)
    header = (
        "| rank | method | backbone | mean of group means ± std [95% CI] (seeds) | appearance | structured "
        "| real | shifted | mean over tasks |"
    )
    assert header in md
    assert "50.00 ± 10.00" in md and "## Reported by the papers" in md and "`bench run --method vpt" in md


def test_pareto_front():
    points = [(10.0, 50.0), (5.0, 40.0), (20.0, 45.0), (100.0, 70.0), (5.0, 30.0)]
    assert pareto_front(points) == [(5.0, 40.0), (10.0, 50.0), (100.0, 70.0)]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _highlight_doc() -> dict:
    """vpt: the better accuracy; linear: fewer parameters (0, a head only) - two different bests."""
    records = sample_records()
    for r in records:
        if r["spec"]["method"] == "linear":
            r["result"]["parameters"].update({"method": 0, "with_head": 390, "percent_of_backbone": 0.0})
    return build_leaderboard(records, load_reported(), suites=installed_suite)


def test_best_value_per_column_is_highlighted_in_both_directions():
    from petlbench.leaderboard.render import average_table, task_table

    doc = _highlight_doc()
    table = average_table(doc, "smoke", "2")
    best = table.best()
    label = {i: row[1] for i, row in enumerate(table.rows)}
    col = table.header.index
    assert {label[i] for i, c in best if c == col("mean over tasks")} == {"vpt"}  # higher is better
    assert {label[i] for i, c in best if c == col("params")} == {"linear"}  # lower is better
    assert {label[i] for i, c in best if c == col("GMACs")} == {"vpt", "linear"}  # equal values: both
    assert not [c for _, c in best if c in (col("method"), col("tasks"), col("protocol"))]
    # per task: only the task's selected cells compete (colors: vpt 50 vs linear 10)
    tasks = task_table(doc, "smoke", "2")
    mean = tasks.header.index("mean ± std")
    winners = {(tasks.rows[i][0], tasks.rows[i][3]) for i, c in tasks.best() if c == mean}
    assert winners == {("colors", "vpt")}  # shapes and position have one cell each: no best
    page = render_html(doc)
    assert page.count('class="best"') == len(best) + len(tasks.best())
    assert "| **0** |" in render_markdown(doc)  # Markdown: the best in bold


def test_html_page_in_headless_chromium_collapses_per_task_highlights_best_and_sorts(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if _chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs it)")
    from petlbench.leaderboard.render import TASK_HEADER

    page_path = tmp_path / "index.html"
    page_path.write_text(render_html(_highlight_doc()))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium())
        page = browser.new_page()
        page.goto(page_path.as_uri())
        # it opens on the averages; the per-task table is collapsed until its summary is clicked
        assert page.locator("table#averages-0").is_visible()
        assert not page.locator("table#tasks-0").is_visible()
        assert page.locator("details#per-task-0").get_attribute("open") is None
        page.locator("details#per-task-0 > summary").click()
        assert page.locator("table#tasks-0").is_visible()
        page.locator("details#per-task-0 > summary").click()
        assert not page.locator("table#tasks-0").is_visible()
        # best per column: highlighted by the stylesheet, on the right row
        headers = page.locator("table#averages-0 thead th").all_text_contents()
        params = headers.index("params") + 1
        best = page.locator(f"table#averages-0 tbody tr td:nth-child({params}).best")
        assert best.count() == 1
        row = best.locator("xpath=..")
        assert row.locator("td:nth-child(2)").text_content() == "linear"
        color = best.evaluate("td => getComputedStyle(td).backgroundColor")
        assert color == "rgb(227, 244, 225)"
        plain = page.locator(f"table#averages-0 tbody tr td:nth-child({params}):not(.best)")
        assert plain.evaluate("td => getComputedStyle(td).fontWeight") == "400"
        # sorting the per-task table by the mean, once open
        page.locator("details#per-task-0 > summary").click()
        table = "table#tasks-0"
        col = 1 + TASK_HEADER.index("mean ± std")

        def column() -> list[float]:
            texts = page.locator(f"{table} tbody tr td:nth-child({col})").all_text_contents()
            return [float(t.split(" ")[0]) for t in texts]

        page.locator(f"{table} thead th:nth-child({col})").click()
        assert column() == sorted(column()) and len(column()) == 4
        page.locator(f"{table} thead th:nth-child({col})").click()
        assert column() == sorted(column(), reverse=True)
        # the highlight travels with its cell when rows move
        colors_vpt = page.locator(f"{table} tbody tr td:nth-child({col}).best")
        assert colors_vpt.count() == 1 and colors_vpt.text_content().startswith("50.00")
        browser.close()


def test_base_to_new_harmonic_mean_and_unknown_suites():
    import petlbench.leaderboard.build as lb

    base_new = fake_suites({"colors": "base", "shapes": "new"})
    doc = build_leaderboard([make_record("colors", 1, 80.0), make_record("shapes", 1, 60.0)], suites=base_new)
    (entry,) = doc["entries"]
    assert entry["base_new_hm"] == pytest.approx(2 * 80 * 60 / 140, rel=1e-5)
    assert entry["average_of_groups"] == 70.0
    assert entry["headline"]["key"] == "base_new_hm" and entry["headline"]["mean"] == entry["base_new_hm"]
    md = lb.render_all(doc)["leaderboard.md"].decode()
    assert "| HM (base, new) ± std [95% CI] (seeds) |" in md and "| mean over tasks | mean of groups |" in md
    validate(doc)

    def missing(name):
        raise lb.UserError(f"no suite {name!r}")

    doc = build_leaderboard([make_record("colors", 1, 80.0)], suites=missing)
    assert doc["notes"] and "not installed" in doc["notes"][0]
    assert doc["entries"][0]["groups"] == [] and doc["entries"][0]["base_new_hm"] is None
    validate(doc)


def test_rows_and_entries_say_how_many_search_trials_were_spent():
    """A cell whose final runs came from `bench sweep --grid` carries its search (grid, trials, chosen
    point); an entry adds up the trials behind its chosen cells and every other cell it compared."""
    search = {
        "grid": {"lr": [0.01, 0.1, 1.0]},
        "trials": 3,
        "search_seed": 1,
        "chosen": {"lr": 0.1},
        "selection_score": 55.0,
        "trial_run_ids": ["a" * 64, "b" * 64, "c" * 64],
    }
    records = [make_record("colors", s, 50.0 + s) for s in (1, 2, 3)]
    for r in records:
        r["result"]["search"] = copy.deepcopy(search)
    # A second setting of `shapes`, compared with the first on the selection split: one more trial.
    records += [make_record("shapes", 1, 70.0, selection=60.0)]
    records += [make_record("shapes", 1, 75.0, selection=50.0, protocol={"lr": 0.5})]
    doc = build_leaderboard(records, [], suites=installed_suite)
    validate(doc)
    colors = _row(doc, "colors")
    assert colors["search"]["trials"] == 3 and colors["search"]["chosen"] == {"lr": 0.1}
    shapes = [r for r in doc["rows"] if r["task"] == "shapes"]
    assert all(r["search"] is None for r in shapes)
    assert _entry(doc)["search_trials"] == 3 + 1
    text = build_leaderboard([make_record("colors", 1, 50.0)], [], suites=installed_suite)
    assert text["entries"][0]["search_trials"] == 0


def test_selection_uses_only_search_trial_scores_never_a_final_runs_poisoned_val_score():
    """VTAB: the final runs train on train800val200, so their val200 score says nothing; the cell is
    chosen by its search trials' val200 score (trained on train800), carried with the row."""
    trainval = {"train_split": "trainval"}

    def cell(lr, trial_score, final_selection, test):
        records = [
            make_record("colors", s, test, selection=final_selection, protocol={**trainval, "lr": lr})
            for s in (1, 2)
        ]
        for r in records:
            r["result"]["search"] = {
                "grid": {"lr": [lr]},
                "trials": 1,
                "search_seed": 1,
                "chosen": {"lr": lr},
                "selection_score": trial_score,
                "trial_run_ids": ["t" * 16],
            }
        return records

    # The worse cell's final runs claim a perfect val200 score: poison that must be ignored.
    records = cell(0.1, 80.0, 10.0, 60.0) + cell(0.5, 40.0, 100.0, 90.0)
    doc = build_leaderboard(records, [], suites=installed_suite)
    validate(doc)
    (chosen,) = [r for r in doc["rows"] if r["selected"]]
    assert chosen["spec"]["protocol"]["lr"] == 0.1 and chosen["selection_source"] == "search trials"
    assert _entry(doc)["average"]["mean"] == 60.0
    # Without a search, a final run that trained on the selection split has no selection score.
    (row,) = build_leaderboard(
        [make_record("colors", 1, 50.0, selection=99.0, protocol=trainval)], [], suites=installed_suite
    )["rows"]
    assert row["selection_mean"] is None and row["selection_source"].startswith("none")
