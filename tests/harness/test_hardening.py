"""Hostile and careless input: every bad value is one line on stderr and exit 2, refused before
anything trains; one training per spec across processes; stored results are never rewritten silently.
(No pickle from a user's path: tests/harness/test_checkpoint_safety.py.)"""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from petlbench.cli import main
from petlbench.harness.spec import RunSpec
from petlbench.harness.store import SCHEMA_VERSION, Store

RUN = ["run", "--suite", "smoke", "--backbone", "tiny-vit", "--tasks", "digits", "--seeds", "1"]


def _one_line_exit_2(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


def _nothing_trained(store: Path) -> None:
    if store.exists():
        with Store(store) as s:
            assert not [r for r in s.records() if r.status == "finished"]
    assert not list((store.parent / "checkpoints").glob("*/*.safetensors"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "vpt", "--set", "num_tokens=1000000000000"], "num_tokens must be in [1, 4096]"),
        (["--method", "vpt", "--set", "num_tokens=1e12"], "num_tokens must be in"),
        (["--method", "adapter", "--set", "dim=1e13"], "dim must be in"),
        (["--method", "lora", "--set", "alpha=nan"], "alpha"),
        (["--method", "vpt", "--set", "deep=true", "--set", "depth=-2"], "depth must be in"),
        (["--method", "vpt", "--protocol", "warmup_epochs=1e308"], "warmup_epochs"),
        (["--method", "vpt", "--protocol", "train_split=test"], "must not be evaluated on the data"),
        (["--method", "vpt", "--seeds", "99999999999999999999999"], "seed must be an integer from 0"),
        (["--method", "vpt", "--seeds", "-1"], "seed must be an integer from 0"),
        (["--method", "vpt", "--fgsm-eps", "nan"], "finite numbers"),
        (["--method", "vpt", "--fgsm-eps", "inf"], "finite numbers"),
        (["--method", "vpt", "--fgsm-eps", "2"], "above 1"),
        (["--method", "vpt", "--fgsm-examples", "0"], "max_examples"),
        (["--method", "vpt", "--fgsm-examples", "-5"], "max_examples"),
        (["--method", "vpt", "--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_run_values_are_one_line_before_training(tmp_path, capsys, extra, message):
    store = tmp_path / "runs" / "s.sqlite"
    line = _one_line_exit_2(capsys, [*RUN[:-2], "--store", str(store), *extra])
    assert message in line
    _nothing_trained(store)


@pytest.mark.parametrize(
    "store",
    ["{tmp}/file/s.sqlite", "{tmp}", "/proc/petlbench-cannot/s.sqlite"],
)
def test_store_under_a_file_a_folder_or_an_unwritable_path(tmp_path, capsys, store):
    (tmp_path / "file").write_text("x")
    line = _one_line_exit_2(
        capsys, [*RUN, "--method", "linear", "--no-fgsm", "--store", store.format(tmp=tmp_path)]
    )
    assert "store" in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--search-seed", "99999999999999999999999"], "--search-seed must be an integer"),
        (["--search-seed", "-3"], "--search-seed must be an integer"),
        (["--grid", "lr=-1"], "lr"),
        (["--seeds", "1", "--set", "num_tokens=0"], "num_tokens"),
    ],
)
def test_bad_sweep_values_are_one_line_before_any_run(tmp_path, capsys, extra, message):
    store = tmp_path / "s.sqlite"
    argv = ["sweep", "--methods", "vpt", "--suite", "smoke", "--tasks", "digits", "--store", str(store)]
    line = _one_line_exit_2(capsys, [*argv, "--no-fgsm", *extra])
    assert message in line
    _nothing_trained(store)


def test_out_of_memory_while_building_is_one_line(tmp_path, capsys, monkeypatch):
    from petlbench.methods.vpt import VPT

    def attach(self, backbone):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(VPT, "attach", attach)
    store = tmp_path / "s.sqlite"
    line = _one_line_exit_2(capsys, [*RUN, "--method", "vpt", "--no-fgsm", "--store", str(store)])
    assert line.startswith("error: out of memory building method 'vpt' on tiny-vit")
    _nothing_trained(store)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "-1"], "--steps"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_pretrain_values(tmp_path, capsys, extra, message):
    line = _one_line_exit_2(capsys, ["pretrain", "micro-vit", "--out", str(tmp_path / "out"), *extra])
    assert message in line


def test_pretrain_out_on_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is a file" in _one_line_exit_2(capsys, ["pretrain", "micro-vit", "--out", str(tmp_path / "f")])


# ----- stores that are not ours, or of another schema ---------------------------------------------


def _sql(path: Path, *statements: str | tuple[str, tuple]) -> None:
    """Write to a store file behind the Store's back (what another tool, or an old version, did)."""
    db = sqlite3.connect(path)
    for statement in statements:
        sql, params = statement if isinstance(statement, tuple) else (statement, ())
        db.execute(sql, params)
    db.commit()
    db.close()


def _foreign(path: Path) -> None:
    _sql(path, "CREATE TABLE notes (x)")


def _other_schema(path: Path) -> None:
    _sql(path, "CREATE TABLE runs (run_id TEXT)", "PRAGMA user_version = 9")


def _extra_column(path: Path) -> None:
    Store(path).close()
    _sql(path, "ALTER TABLE runs ADD COLUMN colour TEXT")


def _bad_spec_json(path: Path) -> None:
    Store(path).close()
    _sql(
        path,
        "INSERT INTO runs (run_id, spec, method, backbone, suite, task, seed, status) "
        "VALUES ('abc', '{not json', 'm', 'b', 's', 't', 1, 'finished')",
    )


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not sqlite at all" * 100)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_foreign, "not a petlbench results store"),
        (_other_schema, "schema 9"),
        (_extra_column, "columns"),
        (_bad_spec_json, "run 'abc'"),
        (_garbage, "not a petlbench results store"),
    ],
)
@pytest.mark.parametrize("command", ["runs", "show", "export"])
def test_a_store_that_is_not_ours_is_one_line(tmp_path, capsys, make, message, command):
    store = tmp_path / "s.sqlite"
    make(store)
    argv = {
        "runs": ["runs", "--store", str(store)],
        "show": ["show", "abc", "--store", str(store)],
        "export": ["export", "--store", str(store), "--out", str(tmp_path / "records")],
    }[command]
    line = _one_line_exit_2(capsys, argv)
    assert message in line and str(store) in line


def test_a_schema_1_store_is_upgraded_in_place(tmp_path):
    """Stores written before claims existed (no user_version, no owner/heartbeat) keep working."""
    from petlbench.harness.store import COLUMNS

    path = tmp_path / "old.sqlite"
    cols = ", ".join(f"{c} TEXT" for c in COLUMNS[:-2]).replace("attempts TEXT", "attempts INTEGER")
    spec = _spec()
    _sql(
        path,
        f"CREATE TABLE runs ({cols})",
        (
            "INSERT INTO runs (run_id, spec, method, backbone, suite, task, seed, status, metrics, attempts) "
            "VALUES (?, ?, 'linear', 'tiny-vit', 'smoke', 'digits', 1, 'finished', '{\"accuracy\": 1.0}', 1)",
            (spec.run_id, spec.canonical_json()),
        ),
    )
    with Store(path) as store:
        (rec,) = store.records()
        assert rec.status == rec.state == "finished" and rec.metrics == {"accuracy": 1.0}
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# ----- one training per spec ----------------------------------------------------------------------


def _spec() -> RunSpec:
    from petlbench.benchmarks.suites import load_suite
    from petlbench.harness.plan import plan_runs

    (spec,), _ = plan_runs("linear", load_suite("smoke"), backbones=["tiny-vit"], tasks=["digits"], seeds=[1])
    return spec


def test_a_dead_owners_claim_is_interrupted_and_taken_over(tmp_path):
    path = tmp_path / "s.sqlite"
    spec = _spec()
    with Store(path) as store:
        assert store.claim(spec, {}) == "claimed"
    # the owner died: a pid that is not running on this host
    _sql(path, ("UPDATE runs SET owner = ?", (f"{os.uname().nodename}:999999999:dead",)))
    with Store(path) as store:
        (rec,) = store.records()
        assert rec.status == "running" and rec.state == "interrupted"
        assert store.claim(spec, {}) == "claimed"
        (rec,) = store.records()
        assert rec.state == "running" and rec.owner == store.owner and rec.attempts == 2


def test_a_live_claim_is_busy_for_a_second_store_and_a_stale_heartbeat_is_not(tmp_path):
    path = tmp_path / "s.sqlite"
    spec = _spec()
    with Store(path) as first, Store(path) as second:
        assert first.claim(spec, {}) == "claimed"
        assert second.claim(spec, {}) == "busy"
        _sql(path, "UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00+00:00'")
        assert first.records()[0].state == "interrupted"
        assert second.claim(spec, {}) == "claimed"


@pytest.mark.slow  # two processes train (30 s); the claim logic itself is tested above in-process
def test_two_concurrent_runs_of_one_spec_train_it_once(tmp_path):
    store = tmp_path / "s.sqlite"
    argv = [
        sys.executable,
        "-m",
        "petlbench.cli",
        *RUN,
        "--method",
        "vpt",
        "--no-fgsm",
        "--protocol",
        "epochs=60",
        "--store",
        str(store),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # Started together: whichever claims the spec first trains it, the other finds the claim alive.
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("being run by another process" in e for e in errs) == 1, errs
    with Store(store) as s:
        (rec,) = s.records()
        assert rec.status == "finished" and rec.attempts == 1


def test_a_finished_run_drops_a_checkpoint_folder_left_by_a_kill(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    argv = [*RUN, "--method", "linear", "--no-fgsm", "--protocol", "epochs=1", "--store", str(store)]
    assert main(argv) == 0
    with Store(store) as s:
        (rec,) = s.records()
    left = tmp_path / "checkpoints" / rec.run_id  # killed after the commit, before the clean-up
    left.mkdir(parents=True)
    (left / "stage0-train.safetensors").write_bytes(b"x")
    assert main(argv) == 0
    assert not left.exists()


def test_a_run_resumed_after_a_finished_stage_records_it(tmp_path):
    from petlbench.benchmarks.suites import load_suite
    from petlbench.harness.plan import plan_runs
    from petlbench.harness.runner import Runner

    suite = load_suite("smoke")
    (spec,), _ = plan_runs(
        "lora",
        suite,
        backbones=["tiny-vit"],
        tasks=["digits"],
        seeds=[1],
        method_config={"merge": True},
        protocol_overrides={"epochs": 1},
    )
    with Store(tmp_path / "s.sqlite") as store:
        runner = Runner(store, suite, checkpoint_dir=tmp_path / "checkpoints")
        first = runner.compute(spec)  # leaves stage0-train.done (train) and stage1 (merge) on disk
        assert first.result["train"]["resumed_after_stages"] == []
        (tmp_path / "checkpoints" / spec.run_id / "stage1-merge.done.safetensors").unlink()
        again = runner.compute(spec)
        assert again.result["train"]["resumed_after_stages"] == ["train"]
        assert again.metrics == first.metrics


# ----- stored results are never rewritten silently -----------------------------------------------


def test_merge_fgsm_keeps_the_epsilons_it_does_not_remeasure():
    from petlbench.harness.robustness import merge_fgsm

    stored = {
        "unit": "pixel",
        "examples": 10,
        "clean": 80.0,
        "eps": [1 / 255, 2 / 255, 4 / 255, 8 / 255],
        "accuracy": [70.0, 60.0, 50.0, 40.0],
        "drop": [10.0, 20.0, 30.0, 40.0],
        "max_perturbation": [1 / 255, 2 / 255, 4 / 255, 8 / 255],
    }
    measured = {
        "unit": "pixel",
        "examples": 10,
        "clean": 80.0,
        "eps": [1 / 255, 16 / 255],
        "accuracy": [71.0, 20.0],
        "drop": [9.0, 60.0],
        "max_perturbation": [1 / 255, 16 / 255],
    }
    merged = merge_fgsm(stored, measured)
    assert merged["eps"] == [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    assert merged["accuracy"] == [71.0, 60.0, 50.0, 40.0, 20.0]
    assert merged["drop"] == [9.0, 20.0, 30.0, 40.0, 60.0]
    assert merged["remeasured_eps"] == [1 / 255, 16 / 255]
    from petlbench.errors import UserError

    with pytest.raises(UserError, match="examples"):
        merge_fgsm(stored, {**measured, "examples": 5})


def test_bench_robust_with_a_partial_grid_keeps_the_other_epsilons(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    argv = [*RUN, "--method", "linear", "--protocol", "epochs=1", "--fgsm-examples", "20"]
    assert main([*argv, "--store", str(store)]) == 0
    with Store(store) as s:
        (rec,) = s.records()
        before = rec.result["robustness"]["fgsm"]
    assert len(before["eps"]) == 4
    assert main(["robust", rec.run_id, "--store", str(store), "--fgsm-eps", "1/255,16/255"]) == 0
    with Store(store) as s:
        after = s.get(rec.run_id).result["robustness"]["fgsm"]
    assert after["eps"] == sorted({*before["eps"], 16 / 255})
    for eps, acc in zip(before["eps"], before["accuracy"], strict=True):
        assert after["accuracy"][after["eps"].index(eps)] == pytest.approx(acc)
    assert after["examples"] == before["examples"] == 20


def test_sweep_off_a_terminal_prints_one_line_per_finished_run_and_no_table(tmp_path, capsys):
    argv = ["sweep", "--methods", "linear", "--suite", "smoke", "--backbone", "tiny-vit"]
    argv += ["--tasks", "digits,colors", "--seeds", "1", "--no-search", "--no-fgsm"]
    assert main([*argv, "--protocol", "epochs=1", "--store", str(tmp_path / "s.sqlite")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and all(line.startswith("final linear tiny-vit ") for line in lines), err
    assert not any(ch in err for ch in "━┃│")


def test_jobs_2_stores_the_same_numbers_as_jobs_1(tmp_path, capsys):
    """Worker processes compute with one thread each, and so does a run in this process whatever
    this process's thread count: the same numbers, history and FGSM included."""
    import torch

    argv = ["run", "--method", "vpt", "--suite", "smoke", "--backbone", "tiny-vit", "--tasks"]
    argv += ["digits,colors", "--seeds", "1", "--protocol", "epochs=2", "--fgsm-examples", "16"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # what a 2-core machine gives a process that did not ask
    try:
        assert main([*argv, "--jobs", "1", "--store", str(tmp_path / "one" / "s.sqlite")]) == 0
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    assert main([*argv, "--jobs", "2", "--store", str(tmp_path / "two" / "s.sqlite")]) == 0
    with Store(tmp_path / "one" / "s.sqlite") as a, Store(tmp_path / "two" / "s.sqlite") as b:
        one, two = a.records(), b.records()
    assert [r.run_id for r in one] == [r.run_id for r in two] and len(one) == 2
    for x, y in zip(one, two, strict=True):
        assert x.status == y.status == "finished"
        assert x.metrics == y.metrics
        assert [h["loss"] for h in x.result["history"]] == [h["loss"] for h in y.result["history"]]
        assert x.result["robustness"] == y.result["robustness"]
        assert x.provenance["hardware"]["torch_threads"] == y.provenance["hardware"]["torch_threads"] == 1


def test_data_prepare_with_a_corrupt_archive_is_one_line(tmp_path, capsys):
    """A garbage archive where `data prepare --download` finds its download (no network is used:
    a complete download is reused): one line naming it, exit 2."""
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    (downloads / "dtd-r1.0.1.tar.gz").write_bytes(os.urandom(4096))
    argv = ["data", "prepare", "--suite", "fewshot11", "--tasks", "dtd", "--data-root", str(tmp_path)]
    capsys.readouterr()
    assert main([*argv, "--download"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: dtd:") and "dtd-r1.0.1.tar.gz" in err[0], err


def test_a_pool_serves_every_run_call_until_closed(tmp_path):
    """A sweep's phases share one pool: workers are spawned once (same processes for the second
    call, which finds its decoded data still there), and released by close()."""
    from petlbench.benchmarks.suites import load_suite
    from petlbench.harness.executors import PoolExecutor
    from petlbench.harness.plan import plan_runs
    from petlbench.harness.runner import Runner

    suite = load_suite("smoke")
    specs, _ = plan_runs(
        "linear",
        suite,
        backbones=["tiny-vit"],
        tasks=["shapes"],
        seeds=[1, 2],
        protocol_overrides={"epochs": 1},
        measure={},
    )
    with Store(tmp_path / "s.sqlite") as store:
        executor = PoolExecutor(Runner(store, suite, checkpoint_dir=tmp_path / "ck"), jobs=1)
        with executor:
            first = executor.run(specs[:1])
            workers = set(executor._pool._processes)
            second = executor.run(specs[1:])
            assert set(executor._pool._processes) == workers and len(workers) == 1
        assert executor._pool is None
        assert [d.error for d in first + second] == [None, None]
        assert all(r.status == "finished" for r in store.records())


def test_workers_get_the_drivers_image_cache_folder(tmp_path):
    """--cache-dir / --no-image-cache reach pool and Ray workers: they are handed the driver's folder."""
    from petlbench.benchmarks.suites import load_suite
    from petlbench.harness.executors import _cache_root
    from petlbench.harness.runner import Runner

    suite = load_suite("smoke")
    assert _cache_root(Runner(None, suite, image_cache=tmp_path / "c")) == str(tmp_path / "c")
    assert _cache_root(Runner(None, suite, image_cache=None)) is None
    default = Runner(None, suite, checkpoint_dir=tmp_path / "runs" / "checkpoints")
    assert _cache_root(default) == str(default.image_cache.root)
