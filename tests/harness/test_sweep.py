"""`bench sweep`: grid search on the selection split, final seeds, local and Ray executors,
resumption after a killed worker or driver."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from petlbench.benchmarks.data import TaskData
from petlbench.benchmarks.suites import load_suite
from petlbench.harness.executors import LocalExecutor
from petlbench.harness.runner import Runner
from petlbench.harness.store import Store
from petlbench.harness.sweep import grid_points, parse_grid, run_sweep

SMOKE = load_suite("smoke")
COMMON = dict(backbones=["tiny-vit"], tasks=["colors"], protocol_overrides={"epochs": 2})


def _sweep(tmp_path, executor_cls=LocalExecutor, name="s.sqlite", **kw):
    store = Store(tmp_path / name)
    runner = Runner(store, SMOKE, device="cpu", checkpoint_dir=tmp_path / "checkpoints")
    executor = executor_cls(runner, **kw)
    result = run_sweep(
        store, SMOKE, executor, ["vpt", "linear"], seeds=[1, 2], grid={"lr": [0.02, 0.5]}, **COMMON
    )
    return store, result


def test_grid_parsing_and_points():
    grid = parse_grid(["lr=0.1,0.01", "deep=true,false", "optimizer=sgd"])
    assert grid == {"lr": [0.1, 0.01], "deep": [True, False], "optimizer": ["sgd"]}
    assert len(grid_points(grid)) == 4 and grid_points(grid)[0] == {
        "lr": 0.1,
        "deep": True,
        "optimizer": "sgd",
    }


def test_local_sweep_searches_on_selection_then_runs_final_seeds(tmp_path):
    store, result = _sweep(tmp_path)
    assert len(result.search) == 4 and len(result.final) == 4 and not result.failed
    for (method, _, _), point in result.chosen.items():
        trials = [d for d in result.search if d.spec.method == method]
        best = max(trials, key=lambda d: d.metrics["selection_accuracy"])
        assert point == {"lr": best.spec.protocol["lr"]}
        assert all(d.spec.stage == "search" and d.result["eval"]["split"] == "val" for d in trials)
    for rec in store.records():
        if rec.spec.stage == "final":
            assert rec.result["search"]["trials"] == 2 and rec.result["search"]["chosen"]["lr"] in (0.02, 0.5)
            assert rec.spec.protocol["lr"] == rec.result["search"]["chosen"]["lr"]
    assert len(store.records()) == 8
    # the same sweep again does no work
    store.close()
    store, again = _sweep(tmp_path)
    assert all(d.skipped for d in again.search + again.final)
    store.close()


def test_search_never_reads_the_test_split(tmp_path, monkeypatch):
    original = TaskData.split

    def poisoned(self, name):
        if name == "test":
            raise RuntimeError("poisoned: the test split was read")
        return original(self, name)

    monkeypatch.setattr(TaskData, "split", poisoned)
    store, result = _sweep(tmp_path)
    assert len(result.search) == 4 and all(d.error is None for d in result.search)
    assert len(result.final) == 4 and all("poisoned" in d.error for d in result.final)
    store.close()


def test_killed_driver_loses_nothing_finished(tmp_path):
    store_path = tmp_path / "s.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "petlbench.cli",
        "sweep",
        "--methods",
        "vpt,linear",
        "--suite",
        "smoke",
        "--backbone",
        "tiny-vit",
        "--tasks",
        "colors",
        "--seeds",
        "1,2",
        "--grid",
        "lr=0.02,0.5",
        "--protocol",
        "epochs=2",
        "--no-fgsm",
        "--store",
        str(store_path),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    finished_before: dict[str, str] = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if store_path.exists():
            with Store(store_path) as store:
                finished_before = {r.run_id: r.finished_at for r in store.records(status="finished")}
            if len(finished_before) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert 3 <= len(finished_before) < 8, "the driver finished before it could be killed"
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    with Store(store_path) as store:
        records = store.records()
    assert len(records) == 8 and all(r.status == "finished" for r in records)
    for r in records:
        if r.run_id in finished_before:
            assert r.finished_at == finished_before[r.run_id] and r.attempts == 1


ray = pytest.importorskip("ray", reason="Ray is optional: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_and_local_give_identical_results_per_spec(tmp_path, ray_cluster):
    from petlbench.harness.executors import RayExecutor

    torch.set_num_threads(1)  # the Ray worker computes with one thread, as --cpus-per-run 1 asks
    try:
        local_store, local = _sweep(tmp_path / "local")
        ray_store, remote = _sweep(tmp_path / "ray", RayExecutor, cpus_per_run=1)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert not local.failed and not remote.failed
    a = {r.run_id: r.metrics for r in local_store.records()}
    b = {r.run_id: r.metrics for r in ray_store.records()}
    assert len(a) == 8 and a == b
    assert local.chosen == remote.chosen


def test_a_killed_ray_worker_is_retried_and_each_spec_is_stored_once(tmp_path, ray_cluster):
    from petlbench.harness.executors import RayExecutor

    killed: list[int] = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
            for line in ps.splitlines():
                if "ray::_compute_in_worker" in line:
                    time.sleep(1.0)  # mid-run
                    pid = int(line.split()[0])
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        continue
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    store, result = _sweep(tmp_path, RayExecutor, cpus_per_run=1, max_retries=3)
    thread.join(timeout=5)
    assert killed, "no Ray worker was seen running a spec"
    assert not result.failed
    records = store.records()
    assert len(records) == 8 and len({r.run_id for r in records}) == 8
    assert all(r.status == "finished" for r in records)


def test_ray_executor_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    from petlbench.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["sweep", "--methods", "linear", "--suite", "smoke", "--executor", "ray"]
    code = main([*args, "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install -e '.[ray]'" in err
