"""``bench run``: plan the runs, execute them (in this process or a pool of workers) with a progress
display, and print the results. Also the runner and executor construction ``bench sweep`` and
``bench robust`` share."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.progress import TextColumn
from rich.table import Table

from petlbench.errors import UserError

from .output import console, out, timed_progress
from .plan import planned, require_data_root


def jobs_for(value: str, device: Any, runs: int) -> int:
    """``--jobs``: ``auto`` is one worker per core on CPU (at most one per run), one on CUDA."""
    import os

    if value == "auto":
        return 1 if device.type != "cpu" else max(1, min(os.cpu_count() or 1, runs))
    try:
        jobs = int(value)
    except ValueError:
        raise UserError(f"--jobs takes a positive integer or auto, not {value!r}") from None
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    return jobs


def local_executor(runner: Any, jobs: int, on_step: Any = None) -> Any:
    """The local executor: this process for one job (with per-step progress), else a worker pool."""
    from petlbench.harness.executors import LocalExecutor, PoolExecutor

    return LocalExecutor(runner, on_step=on_step) if jobs == 1 else PoolExecutor(runner, jobs)


def image_cache_dir(args: argparse.Namespace) -> Path | None:
    """`--cache-dir` / `--no-image-cache` of run and sweep: the decoded-image cache (default beside
    the store), or None for none."""
    from petlbench.harness.image_cache import default_cache_dir

    if args.no_image_cache:
        return None
    return args.cache_dir if args.cache_dir is not None else default_cache_dir(args.store)


def runner_for(
    args: argparse.Namespace, store: Any, suite: Any, image_cache: Path | str | None = "default"
) -> Any:
    """The Runner of a verb's ``--data-root``, ``--device`` and ``--store`` (checkpoints beside it)."""
    from petlbench.harness.runner import Runner

    return Runner(
        store,
        suite,
        data_root=args.data_root,
        device=args.device,
        checkpoint_dir=args.store.parent / "checkpoints",
        image_cache=image_cache,
    )


def _label(spec: Any) -> str:
    return f"  {spec.backbone} / {spec.task} / seed {spec.seed}"


class _RunProgress:
    """One bar for the whole run and one per spec on a terminal; off a terminal one line per
    finished run."""

    def __init__(self, progress: Any, title: str, runs: int) -> None:
        self.progress = progress
        self.runs = runs
        self.terminal = console.is_terminal
        self.overall = progress.add_task(title, total=runs, info="")
        self.bars: dict[str, Any] = {}
        self.finished: list[Any] = []

    def on_step(self, spec: Any, step: int, total: int, loss: float) -> None:
        if spec.run_id not in self.bars:
            self.bars[spec.run_id] = self.progress.add_task(_label(spec), total=total, info="")
        self.progress.update(self.bars[spec.run_id], completed=step, total=total, info=f"loss {loss:.3f}")

    def on_done(self, done: Any) -> None:
        metric = done.result.get("metric", "accuracy")
        value = f"{metric} {done.metrics.get(metric, float('nan')):.2f}"
        info = f"failed: {done.error}" if done.error else ("cached" if done.skipped else value)
        if done.waited:
            info = f"{value} (run by another process)"
        if done.spec.run_id not in self.bars:
            self.bars[done.spec.run_id] = self.progress.add_task(_label(done.spec), total=1, info="")
        self.progress.update(self.bars[done.spec.run_id], total=1, completed=1, info=info)
        self.progress.advance(self.overall)
        self.finished.append(done)
        if not self.terminal:
            where = f"{_label(done.spec).strip()} [{done.spec.run_id[:12]}]"
            console.print(
                f"[{len(self.finished)}/{self.runs}] {where}: {info}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )


def cmd_run(args: argparse.Namespace) -> int:
    from petlbench.harness.runner import resolve_device
    from petlbench.harness.store import Store

    suite, specs = planned(args)
    require_data_root(args, suite)
    device = resolve_device(args.device)  # a bad --device is refused before the store is created
    jobs = jobs_for(args.jobs, device, len(specs))
    store = Store(args.store)
    runner = runner_for(args, store, suite, image_cache_dir(args))
    runner.on_wait = lambda spec: console.print(
        f"run {spec.run_id[:12]} ({spec.backbone} / {spec.task} / seed {spec.seed}) is being run by "
        "another process: waiting for it instead of training it twice"
    )
    with timed_progress(
        TextColumn("{task.fields[info]}"),
        transient=False,
        disable=not console.is_terminal,  # off a terminal: one line per finished run (_RunProgress)
    ) as progress:
        title = f"{args.method} on {suite.name}" + (f" ({jobs} jobs)" if jobs > 1 else "")
        view = _RunProgress(progress, title, len(specs))
        with local_executor(runner, jobs, view.on_step) as executor:
            outcomes = executor.run(specs, view.on_done)
    store.close()
    return _report(args, outcomes)


def _report(args: argparse.Namespace, outcomes: list[Any]) -> int:
    """The finished runs (JSON lines or a table), then one line per failed run; exit 1 on a failure."""
    ok = [o for o in outcomes if o.error is None]
    if args.json:
        for o in ok:
            line = {
                "run_id": o.spec.run_id,
                "spec": o.spec.to_dict(),
                "metrics": o.metrics,
                "skipped": o.skipped,
            }
            print(json.dumps(line, sort_keys=True), flush=True)
    elif ok:
        _print_results(ok, args.store)
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        console.print(
            f"failed: {o.spec.backbone} {o.spec.task} seed {o.spec.seed} [{o.spec.run_id[:12]}]: {o.error}",
            style="red",
            highlight=False,
            markup=False,
        )
    return 1 if failed else 0


def _print_results(outcomes: list[Any], store: Path) -> None:
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for o in outcomes:
        groups[(o.spec.backbone, o.spec.task)].append(o)
    table = Table(title=f"results (store: {store})")
    for col in ("backbone", "task", "metric", "mean", "std", "n", "trainable (method)", "+ head", "run ids"):
        table.add_column(
            col, justify="right" if col in ("mean", "std", "n", "trainable (method)", "+ head") else "left"
        )
    per_backbone: dict[str, list[float]] = defaultdict(list)
    for (backbone, task), items in groups.items():
        metric = items[0].result.get("metric", "accuracy")
        values = [o.metrics.get(metric, float("nan")) for o in items]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        params = items[0].result.get("parameters", {})
        per_backbone[backbone].append(mean)
        table.add_row(
            backbone,
            task,
            metric,
            f"{mean:.2f}",
            f"{std:.2f}",
            str(len(values)),
            f"{params.get('method', 0):,}",
            f"{params.get('with_head', 0):,}",
            " ".join(o.spec.run_id[:8] for o in items),
        )
    for backbone, means in per_backbone.items():
        table.add_row(
            backbone, "[b]average[/]", "", f"[b]{statistics.fmean(means):.2f}[/]", "", "", "", "", ""
        )
    out.print(table)
