"""Worker pools: a worker outlives no killed driver, and computes with one thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

DRIVER = textwrap.dedent(
    """
    import os, sys
    from petlbench.harness.pools import spawn_pool

    def pid_and_threads():
        import torch
        return os.getpid(), torch.get_num_threads()

    if __name__ == "__main__":
        pool = spawn_pool(2)
        seen = {pool.submit(pid_and_threads).result() for _ in range(8)}
        print(" ".join(f"{pid}:{threads}" for pid, threads in sorted(seen)), flush=True)
        os.kill(os.getpid(), 9)  # killed outright: the pool is never shut down
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped has finished
        return f.read().split(") ")[-1][0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_the_driver_is_killed_and_use_one_thread(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "4"}  # the workers must not inherit four threads
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == -9, proc.stderr
    workers = [tuple(int(v) for v in item.split(":")) for item in proc.stdout.split()]
    assert workers and all(threads == 1 for _, threads in workers)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid, _ in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid, _ in workers), "a worker outlived its killed driver"


def test_dispatch_order_puts_one_cheap_run_first_then_the_longest_first():
    from petlbench.harness.executors import dispatch_order
    from petlbench.harness.spec import RunSpec

    def spec(task: str, epochs: int, shots: int | None = 16) -> RunSpec:
        return RunSpec("m", {}, "b", "s", "1", task, {"epochs": epochs, "shots": shots}, seed=1)

    plan = [spec("a", 30), spec("full10", 10, None), spec("c", 30), spec("d", 5), spec("e", 20)]
    plan += [spec("f", 5), spec("full20", 20, None)]
    order = [s.task for s in dispatch_order(plan)]
    # d: the first cheapest (few-shot, fewest epochs); then full-data runs, longest first; ties in plan order
    assert order == ["d", "full20", "full10", "a", "c", "e", "f"]
    assert [s.task for s in dispatch_order(plan[:2])] == ["a", "full10"]  # nothing to gain below three


def test_dispatch_order_starts_with_an_image_only_backbone_where_the_cost_ties():
    from petlbench.harness.executors import dispatch_order
    from petlbench.harness.spec import RunSpec

    def spec(backbone: str, task: str, shots: int | None = 16) -> RunSpec:
        return RunSpec("m", {}, backbone, "s", "1", task, {"epochs": 30, "shots": shots}, seed=1)

    plan = [spec("micro-clip", "a"), spec("micro-clip", "full", None), spec("micro-vit", "a")]
    plan += [spec("micro-vit", "full", None), spec("unregistered", "b")]
    order = [(s.backbone, s.task) for s in dispatch_order(plan)]
    # micro-vit has one tower, micro-clip two; an unregistered backbone counts as one, after micro-vit
    # in plan order; the rest longest first, the two-tower run before the one-tower run of a kind
    assert order == [
        ("micro-vit", "a"),
        ("micro-clip", "full"),
        ("micro-vit", "full"),
        ("micro-clip", "a"),
        ("unregistered", "b"),
    ]


PLAN_ONLY = """
import sys
from petlbench.cli import main
assert main(["plan", "--method", "adapt", "--suite", "mini", "--json"]) == 0
heavy = ("torchvision", "open_clip", "timm", "art", "fvcore", "datasets")
print(" ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


def test_planning_a_run_imports_no_model_or_attack_library():
    """The driver of ``bench run``/``sweep`` plans, claims and stores; the model libraries are the
    workers' to import. torchvision alone costs seconds (it loads torch._dynamo), all of them before
    the first worker starts, so one of them imported at module level delays every first result."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAN_ONLY], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1:] in ([], [""]), proc.stderr[-500:]
