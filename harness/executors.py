"""Where runs execute: in this process (``local``) or as Ray tasks (``ray``).

Either way only the driver writes the store: a Ray worker trains and evaluates one spec
(``Runner.compute``) and returns the numbers; the driver records them as each task finishes. A
worker that dies is retried by Ray (``max_retries``) and resumes from the run's last epoch
checkpoint, which lives in a folder every worker of a local cluster can read.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.benchmarks.suites import Suite
from petlbench.errors import UserError

from .runner import ComputedRun, Runner
from .spec import RunSpec


@dataclass
class RunDone:
    spec: RunSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    error: str | None = None


OnDone = Callable[[RunDone], Any]


class Executor(abc.ABC):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @abc.abstractmethod
    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunDone]:
        """Run every spec not yet finished in the store; failures are returned, not raised."""


class LocalExecutor(Executor):
    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunDone]:
        out = []
        for spec in specs:
            try:
                outcome = self.runner.run(spec)
                done = RunDone(spec, outcome.metrics, outcome.result, skipped=outcome.skipped)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded in the store by the runner
                done = RunDone(spec, error=f"{exc.__class__.__name__}: {exc}")
            out.append(done)
            if on_done is not None:
                on_done(done)
        return out


def _compute_remote(
    suite: Suite, spec: RunSpec, data_root: str | None, device: str, checkpoint_dir: str | None, threads: int
) -> ComputedRun:
    """One run in a Ray worker (a module-level function, so Ray can ship it by reference)."""
    import torch

    torch.set_num_threads(max(1, threads))
    runner = Runner(
        None,
        suite,
        data_root=Path(data_root) if data_root else None,
        device=device,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
    )
    return runner.compute(spec)


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
        self._remote = ray.remote(_compute_remote)

    def run(self, specs: Sequence[RunSpec], on_done: OnDone | None = None) -> list[RunDone]:
        ray, runner = self.ray, self.runner
        out: list[RunDone] = []
        pending: dict[Any, RunSpec] = {}
        suite_ref = ray.put(runner.suite)
        device = "cuda" if runner.device.type == "cuda" else str(runner.device)
        for spec in specs:
            record = runner.store.get(spec.run_id)
            if record is not None and record.status == "finished":
                done = RunDone(spec, record.metrics, record.result, skipped=True)
                out.append(done)
                if on_done is not None:
                    on_done(done)
                continue
            runner.store.mark_running(spec, runner.provenance(spec))
            ref = self._remote.options(**self.options).remote(
                suite_ref,
                spec,
                str(runner.data_root) if runner.data_root else None,
                device,
                str(runner.checkpoint_dir) if runner.checkpoint_dir else None,
                self.threads,
            )
            pending[ref] = spec
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            try:
                computed: ComputedRun = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a task that failed after its retries
                message = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
                runner.store.mark_failed(spec.run_id, message)
                done = RunDone(spec, error=message)
            else:
                runner.finish(computed)
                done = RunDone(spec, computed.metrics, computed.result)
            out.append(done)
            if on_done is not None:
                on_done(done)
        return out
