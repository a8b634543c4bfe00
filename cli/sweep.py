"""``bench sweep``: methods x suite x seeds with an optional grid search, on the local executor or Ray,
with a live table on a terminal and one line per finished run elsewhere."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from petlbench.errors import UserError

from .output import console, out
from .parser import assignments
from .plan import measurements, suite_and_data_root
from .run import image_cache_dir, jobs_for, local_executor, runner_for


def _executor(args: argparse.Namespace, runner: Any) -> Any:
    """``--executor``: Ray (its cluster, resources per run, retries) or the local one (``--jobs``)."""
    if args.executor == "ray":
        from petlbench.harness.executors import RayExecutor

        return RayExecutor(
            runner,
            address=args.ray_address,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            max_retries=args.max_retries,
        )
    return local_executor(runner, jobs_for(args.jobs, runner.device, 1 << 30))


class _SweepView:
    """The live table only on a terminal, started with the first finished run (so an error before
    any run is one line); elsewhere one line per finished run. ``--json``: one line per final run."""

    def __init__(self, args: argparse.Namespace, suite_name: str) -> None:
        self.args = args
        self.title = f"sweep on {suite_name} ({args.executor})"
        self.rows: list[tuple[str, Any]] = []
        self.live: Any = None

    def table(self) -> Table:
        t = Table(title=f"{self.title}: {len(self.rows)} runs done")
        for col in ("phase", "method", "backbone", "task", "seed", "status", "selection", "final"):
            t.add_column(col)
        for phase, d in self.rows[-25:]:
            sel = next((v for k, v in d.metrics.items() if k.startswith("selection_")), None)
            fin = next((v for k, v in d.metrics.items() if not k.startswith("selection_")), None)
            status = "failed" if d.error else ("cached" if d.skipped else "done")
            t.add_row(
                phase,
                d.spec.method,
                d.spec.backbone,
                d.spec.task,
                str(d.spec.seed),
                status,
                f"{sel:.2f}" if isinstance(sel, float) else "-",
                f"{fin:.2f}" if isinstance(fin, float) and phase == "final" else "-",
            )
        return t

    def on_event(self, phase: str, done: Any) -> None:
        self.rows.append((phase, done))
        if console.is_terminal:
            if self.live is None:
                from rich.live import Live

                self.live = Live(
                    self.table(), console=console, refresh_per_second=4, transient=self.args.json
                )
                self.live.start()
            self.live.update(self.table())
        elif not self.args.json:
            console.print(_sweep_line(phase, done), highlight=False, soft_wrap=True, markup=False)
        if self.args.json and phase == "final":
            line = {"run_id": done.spec.run_id, "metrics": done.metrics, "skipped": done.skipped}
            print(json.dumps(line | {"error": done.error}, sort_keys=True), flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def _sweep_line(phase: str, done: Any) -> str:
    """One finished sweep run as one line (the sweep's output off a terminal)."""
    spec = done.spec
    where = f"{phase} {spec.method} {spec.backbone} {spec.task} seed {spec.seed} [{spec.run_id[:12]}]"
    if done.error:
        return f"{where}: failed: {done.error}"
    values = " ".join(f"{k} {v:.2f}" for k, v in sorted(done.metrics.items()) if isinstance(v, float))
    return f"{where}: {'cached ' if done.skipped else ''}{values}".rstrip()


def cmd_sweep(args: argparse.Namespace) -> int:
    from petlbench.harness.runner import resolve_device
    from petlbench.harness.store import Store
    from petlbench.harness.sweep import parse_grid, run_sweep

    suite = suite_and_data_root(args, required=True)
    methods = args.methods or []
    if not methods:
        raise UserError("--methods names no method")
    grid = parse_grid(args.grid)
    resolve_device(args.device)  # a bad --device is refused before the store is created
    store = Store(args.store)
    executor = _executor(args, runner_for(args, store, suite, image_cache_dir(args)))
    view = _SweepView(args, suite.name)
    try:
        result = run_sweep(
            store,
            suite,
            executor,
            methods,
            backbones=args.backbone,
            tasks=args.tasks,
            seeds=args.seeds,
            grid=grid,
            search=not args.no_search,
            search_seed=args.search_seed,
            method_config=assignments(args.method_options, "--set"),
            protocol_overrides=assignments(args.protocol_options, "--protocol"),
            pretrained=not args.random_init,
            measure=measurements(args),
            on_event=view.on_event,
        )
    finally:
        executor.close()  # the pool served every phase of the sweep
        view.stop()
    store.close()
    if result.chosen and not args.json:
        t = Table(title="chosen on the selection split")
        for col in ("method", "backbone", "task", "chosen"):
            t.add_column(col)
        for (method, backbone, task), point in sorted(result.chosen.items()):
            t.add_row(method, backbone, task, json.dumps(point))
        out.print(t)
    for d in result.failed:
        console.print(
            f"[red]failed:[/] {d.spec.method} {d.spec.backbone} {d.spec.task} seed {d.spec.seed}: {d.error}"
        )
    return 1 if result.failed else 0
