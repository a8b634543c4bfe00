"""Time the README's main job: wall time and the latency of its first result line.

    python scripts/time_main_job.py [--jobs auto] [--method adapt] [--suite mini]

Runs ``bench run`` in a fresh store (a temporary folder), reads its one-line-per-run output (it is
not on a terminal) with a clock, and prints one JSON line: ``wall_s``, ``first_result_s``, ``runs``,
``jobs``, the machine's cores and load average. A benchmark to run by hand on a quiet machine, not a
timed test (timings on a shared machine are noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="adapt")
    parser.add_argument("--suite", default="mini")
    parser.add_argument("--jobs", default="auto")
    parser.add_argument("extra", nargs="*", help="more `bench run` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "petlbench.cli", "run", "--method", args.method]
        argv += ["--suite", args.suite, "--jobs", args.jobs, "--store", f"{tmp}/s.sqlite", *args.extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        load = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        first, runs = None, 0
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("[") and "]" in line.split(" ")[0]:
                runs += 1
                first = first if first is not None else time.perf_counter() - started
                print(f"{time.perf_counter() - started:7.1f}s {line.rstrip()}", file=sys.stderr)
        rc = proc.wait()
        wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "command": " ".join(argv[3:]),
                "rc": rc,
                "wall_s": round(wall, 1),
                "first_result_s": None if first is None else round(first, 1),
                "runs": runs,
                "jobs": args.jobs,
                "cpu_count": os.cpu_count(),
                "load_average_at_start": load,
            }
        )
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
