"""Where runs execute: in this process (``local``), in N worker processes of this machine
(``local`` with ``--jobs N``), or as Ray tasks (``ray``).

Whatever the executor, only the driver writes the store: it claims a spec, a worker trains and
evaluates it (``Runner.compute``) and returns the numbers, and the driver records them as each run
finishes. A worker process computes with one intra-op thread (N torch processes with a thread per
core each would oversubscribe the cores many times over). A Ray worker that dies is retried by Ray
(``max_retries``); every run resumes from its last epoch checkpoint, in a folder the workers share.
"""

from __future__ import annotations

import abc
import concurrent.futures
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from petlbench.backbones.registry import backbone_entry
from petlbench.benchmarks.suites import Suite
from petlbench.errors import UserError

from .pools import spawn_pool
from .runner import Runner, RunResult
from .spec import RunSpec

OnDone = Callable[[RunResult], Any]


class Executor(abc.ABC):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @abc.abstractmethod
    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunResult]:
        """Run every spec not yet finished in the store; failures are returned, not raised."""

    def close(self) -> None:  # noqa: B027 - an optional hook: only pools hold workers
        """Release workers kept between :meth:`run` calls (a sweep's phases share them)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


OnStep = Callable[[RunSpec, int, int, float], Any]


class LocalExecutor(Executor):
    """One run after another in this process (``on_step`` sees every optimisation step). On CPU the
    runs compute with one intra-op thread, as a pool worker does: the thread count changes how float
    sums are split, and so the last bits of a run's numbers (a 10-epoch Adapt run on ``mini`` ended
    1.25 points apart with two threads and one), so ``--jobs 1`` and ``--jobs N`` store the same
    numbers. The process's thread count is restored afterwards."""

    def __init__(self, runner: Runner, on_step: OnStep | None = None) -> None:
        super().__init__(runner)
        self.on_step = on_step

    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunResult]:
        import torch

        if self.runner.device.type != "cpu":
            return self._run(specs, on_done)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(specs, on_done)
        finally:
            torch.set_num_threads(threads)

    def _run(self, specs: Sequence[RunSpec], on_done: OnDone | None) -> list[RunResult]:
        out = []
        on_step = self.on_step
        for spec in specs:
            step = (lambda i, n, loss, s=spec: on_step(s, i, n, loss)) if on_step else None
            try:
                done = self.runner.run(spec, on_step=step)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded in the store by the runner
                done = RunResult(spec, error=f"{exc.__class__.__name__}: {exc}")
            out.append(done)
            if on_done is not None:
                on_done(done)
        return out


_WORKER_RUNNERS: dict[tuple[str, str | None, str, str | None, str | None], Runner] = {}


def _compute_in_worker(
    suite: Suite,
    spec: RunSpec,
    data_root: str | None,
    device: str,
    checkpoint_dir: str | None,
    threads: int = 1,
    image_cache: str | None = None,
) -> RunResult:
    """One run in a worker process (a pool worker or a Ray worker: a module-level function, so it
    ships by reference). The worker keeps its Runner, and so the decoded task data, for the next spec
    of the same suite."""
    import torch

    torch.set_num_threads(max(1, threads))
    key = (suite.sha256, data_root, device, checkpoint_dir, image_cache)
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        runner = _WORKER_RUNNERS[key] = Runner(
            None,
            suite,
            data_root=Path(data_root) if data_root else None,
            device=device,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
            image_cache=image_cache,  # the driver's cache folder (None: off)
        )
    return runner.compute(spec)


def _tower_count(backbone: str) -> int:
    """How many towers the backbone's registry entry declares (1 where it declares none or is not
    registered: a cost guess, never a check)."""
    try:
        entry = backbone_entry(backbone)
    except UserError:
        return 1
    return len(entry.towers) if entry.towers else 1


def dispatch_order(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """The order a pool hands runs to its workers: the cheapest first, so a first result line comes
    early, then the most expensive first (longest-processing-time order: the runs left at the end are
    short, so the workers finish together instead of one training the longest run alone). What a plan
    knows of a run's cost without loading data: a few-shot training set (``shots``) is small, a full
    one is not, so full-data runs cost more whatever their epochs (on ``mini`` a 10-epoch full-data
    run trains twice as long as a 30-epoch 16-shot one); within each kind, more epochs cost more, and
    then more towers (a CLIP run also encodes every class prompt each step, and its worker imports the
    text library first). Ties keep the plan's order. Which worker computes a run never changes its
    numbers."""
    if len(specs) < 3:
        return list(specs)
    towers: dict[str, int] = {}

    def cost(spec: RunSpec) -> tuple[bool, float, int]:
        epochs = spec.protocol.get("epochs")
        if spec.backbone not in towers:
            towers[spec.backbone] = _tower_count(spec.backbone)
        full_data = spec.protocol.get("shots") is None
        return full_data, float(epochs) if isinstance(epochs, int | float) else 0.0, towers[spec.backbone]

    first = min(range(len(specs)), key=lambda i: cost(specs[i]))
    rest = [s for i, s in enumerate(specs) if i != first]
    return [specs[first], *sorted(rest, key=cost, reverse=True)]


def _cache_root(runner: Runner) -> str | None:
    """The driver's image-cache folder for its workers (None: the cache is off)."""
    return str(runner.image_cache.root) if runner.image_cache is not None else None


class PoolExecutor(Executor):
    """``jobs`` runs at a time, each in a worker process of this machine with one thread. Workers are
    spawned (a forked torch process can deadlock in its thread pool) once and live until
    :meth:`close`, across :meth:`run` calls (a sweep's search phases and final runs), keeping their
    decoded data between runs. The driver claims a spec only when a worker is free to
    take it, so a spec waiting in the queue is still free for another process. Results equal a
    one-thread run in this process (a test checks ``--jobs 2`` against ``--jobs 1``)."""

    def __init__(self, runner: Runner, jobs: int) -> None:
        super().__init__(runner)
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _workers(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = spawn_pool(self.jobs)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunResult]:
        runner = self.runner
        assert runner.store is not None
        out: list[RunResult] = []
        busy: list[RunSpec] = []

        def report(done: RunResult) -> None:
            out.append(done)
            if on_done is not None:
                on_done(done)

        queue = dispatch_order(specs)
        device = str(runner.device)
        args = (
            str(runner.data_root) if runner.data_root else None,
            device,
            str(runner.checkpoint_dir) if runner.checkpoint_dir else None,
            1,
            _cache_root(runner),
        )
        pool = self._workers()
        pending: dict[concurrent.futures.Future[RunResult], RunSpec] = {}
        try:
            while queue or pending:
                while queue and len(pending) < self.jobs:
                    spec = queue.pop(0)
                    record = runner.store.get(spec.run_id)
                    if record is not None and record.status == "finished":
                        runner.drop_checkpoints(spec.run_id)
                        report(RunResult(spec, record.metrics, record.result, skipped=True))
                        continue
                    if runner.store.claim(spec, runner.provenance(spec)) != "claimed":
                        busy.append(spec)  # another live process runs it: waited for below
                        continue
                    pending[pool.submit(_compute_in_worker, runner.suite, spec, *args)] = spec
                if not pending:
                    continue
                finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    spec = pending.pop(future)
                    try:
                        computed = future.result()
                    except UserError as err:
                        runner.store.mark_failed(spec.run_id, f"UserError: {err}")
                        raise
                    except Exception as exc:  # noqa: BLE001 - recorded, the other runs go on
                        message = f"{exc.__class__.__name__}: {exc}"
                        runner.store.mark_failed(spec.run_id, message)
                        report(RunResult(spec, error=message))
                    else:
                        runner.finish(computed)
                        report(RunResult(spec, computed.metrics, computed.result))
        except BaseException:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise
        if busy:
            for done in LocalExecutor(runner).run(busy):
                report(done)
        return out


class RayExecutor(Executor):
    def __init__(
        self,
        runner: Runner,
        *,
        address: str | None = None,
        cpus_per_run: float = 1,
        gpus_per_run: float | None = None,
        max_retries: int = 3,
        num_cpus: int | None = None,
    ) -> None:
        super().__init__(runner)
        try:
            import ray
        except ImportError:
            raise UserError(
                "--executor ray needs Ray: pip install -e '.[ray]' (or use --executor local)"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        if gpus_per_run is None:
            gpus_per_run = 1.0 if runner.device.type == "cuda" else 0.0
        self.options = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": max_retries}
        self.threads = max(1, int(cpus_per_run))
        # Any: ray's typed overloads pick a remote function of too few arguments for this one
        self._remote: Any = ray.remote(_compute_in_worker)

    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunResult]:
        ray, runner = self.ray, self.runner
        assert runner.store is not None  # the driver's Runner holds the store (Runner.run needs it too)
        out: list[RunResult] = []
        pending: dict[Any, RunSpec] = {}
        busy: list[RunSpec] = []
        suite_ref = ray.put(runner.suite)
        device = "cuda" if runner.device.type == "cuda" else str(runner.device)
        for spec in specs:
            record = runner.store.get(spec.run_id)
            if record is not None and record.status == "finished":
                done = RunResult(spec, record.metrics, record.result, skipped=True)
                out.append(done)
                if on_done is not None:
                    on_done(done)
                continue
            if runner.store.claim(spec, runner.provenance(spec)) != "claimed":
                busy.append(spec)  # finished meanwhile, or another live process runs it: waited for
                continue  # below (Runner.run), never trained twice
            ref = self._remote.options(**self.options).remote(
                suite_ref,
                spec,
                str(runner.data_root) if runner.data_root else None,
                device,
                str(runner.checkpoint_dir) if runner.checkpoint_dir else None,
                self.threads,
                _cache_root(runner),
            )
            pending[ref] = spec
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            try:
                computed: RunResult = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a task that failed after its retries
                message = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
                runner.store.mark_failed(spec.run_id, message)
                done = RunResult(spec, error=message)
            else:
                runner.finish(computed)
                done = RunResult(spec, computed.metrics, computed.result)
            out.append(done)
            if on_done is not None:
                on_done(done)
        if busy:
            out += LocalExecutor(runner).run(busy, on_done)
        return out
