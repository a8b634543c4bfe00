"""Worker-process pools: spawned, one intra-op thread each, gone when the process that made them dies.

Every pool of the harness (run workers, image decoding, the data benchmark) comes from
:func:`spawn_pool`, so the three properties hold everywhere: workers are spawned (a forked torch
process can deadlock in its thread pool), each computes with one thread (N workers on N cores, not
N x N threads), and a worker whose parent is killed outright (SIGKILL, SIGTERM, a closed terminal:
nothing shuts the pool down then) exits instead of computing on unseen, holding the cores.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import threading
import time

PARENT_POLL_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone: the orphan's parent becomes another process."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(parent: int) -> None:
    # One thread: torch reads the variable when it is imported, which in a fresh worker is usually
    # later (with the first task); where the spawn already imported it, it is told directly.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _exit_with_parent(parent)


def spawn_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """``workers`` spawned processes with one thread each that exit with this process."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
