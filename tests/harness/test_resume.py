"""A run killed with SIGKILL mid-training resumes from its last epoch checkpoint and ends with the
same metrics as an uninterrupted run of the same spec."""

import os
import signal
import subprocess
import sys
import time

from petlbench.benchmarks.suites import load_suite
from petlbench.cli import main
from petlbench.harness.store import Store

TASK = load_suite("smoke").tasks[0].name
EPOCHS = 12
ARGS = [
    "run",
    "--method",
    "vpt",
    "--suite",
    "smoke",
    "--backbone",
    "tiny-clip",
    "--tasks",
    TASK,
    "--set",
    "deep=true",
    "--set",
    "dropout=0.1",
    "--protocol",
    f"epochs={EPOCHS}",
]


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    killed_store = tmp_path / "killed" / "s.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "petlbench.cli", *ARGS, "--store", str(killed_store)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed_store.parent / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(checkpoints.glob("*/stage0-train.safetensors")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    with Store(killed_store) as store:
        (rec,) = store.records()
        assert rec.status == "running"
    assert main([*ARGS, "--store", str(killed_store)]) == 0
    with Store(killed_store) as store:
        (resumed,) = store.records()
    assert resumed.status == "finished" and resumed.attempts == 2
    resumed_from = resumed.result["train"]["resumed_from_epoch"]
    assert resumed_from is not None and 1 <= resumed_from["epoch"] < EPOCHS
    assert not (checkpoints / resumed.run_id).exists()  # cleaned up once finished

    clean_store = tmp_path / "clean" / "s.sqlite"
    assert main([*ARGS, "--store", str(clean_store)]) == 0
    with Store(clean_store) as store:
        (clean,) = store.records()
    assert clean.run_id == resumed.run_id
    assert clean.metrics == resumed.metrics
    assert [h["loss"] for h in clean.result["history"]] == [h["loss"] for h in resumed.result["history"]]
