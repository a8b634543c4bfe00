"""``bench show`` (one stored run), ``bench runs`` (the store's runs) and ``bench robust`` (FGSM
re-measured on a stored run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from petlbench.errors import UserError

from .output import console, out, plain


def _open_store(path: Path) -> Any:
    from petlbench.harness.store import Store

    if not path.exists():
        raise UserError(f"no results store at {path}; run `bench run ...` first or pass --store")
    return Store(path)


def cmd_show(args: argparse.Namespace) -> int:
    from petlbench.harness.show import summary_lines

    store = _open_store(args.store)
    rec = store.resolve(args.run)
    record = {
        "run_id": rec.run_id,
        "status": rec.state,
        "owner": rec.owner,
        "heartbeat_at": rec.heartbeat_at,
        "spec": rec.spec.to_dict(),
        "metrics": rec.metrics,
        "result": rec.result,
        "provenance": rec.provenance,
        "error": rec.error,
        "wall_time_s": rec.wall_time_s,
    }
    if args.json:
        out.print_json(json.dumps(record, default=str))
    else:
        for line in summary_lines(record):
            plain(line)
    if args.plot is not None:
        from petlbench.methods.registry import get_method

        written = get_method(rec.spec.method).plot_description(rec.result.get("method") or {}, args.plot)
        console.print(f"wrote {written}")
    return 0


def cmd_robust(args: argparse.Namespace) -> int:
    from petlbench.benchmarks.suites import load_suite

    from .run import runner_for

    store = _open_store(args.store)
    record = store.resolve(args.run)
    runner = runner_for(args, store, load_suite(args.suite or record.spec.suite))
    with console.status(f"FGSM on run {record.run_id}"):
        measured = runner.remeasure_robustness(record.run_id, args.fgsm_eps, args.fgsm_examples)
    table = Table(title=f"FGSM robustness of {record.run_id} ({record.spec.method} on {record.spec.task})")
    for col in ("epsilon", "epsilon x 255", "accuracy", "drop", "max |delta|"):
        table.add_column(col, justify="right")
    table.add_row("0 (clean)", "0", f"{measured['clean']:.2f}", "", "")
    for eps, acc, drop, norm in zip(
        measured["eps"], measured["accuracy"], measured["drop"], measured["max_perturbation"], strict=True
    ):
        table.add_row(f"{eps:.5f}", f"{eps * 255:.1f}", f"{acc:.2f}", f"{drop:.2f}", f"{norm:.5f}")
    out.print(table)
    grid = (store.get(record.run_id).result.get("robustness") or {}).get("fgsm") or {}
    kept = [e for e in grid.get("eps", []) if e not in measured["eps"]]
    console.print(
        f"stored FGSM grid of {record.run_id[:12]}: {len(grid.get('eps', []))} epsilons "
        f"({len(measured['eps'])} measured now, {len(kept)} kept from before)"
    )
    store.close()
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The store's runs, one row each; on a terminal a table, elsewhere tab-separated lines (a header,
    then one line per run) that scripts can read and that no console width wraps."""
    from petlbench.harness.show import format_point, grid_point

    store = _open_store(args.store)
    columns = (
        *("run id", "status", "method", "backbone", "suite", "task", "seed"),
        *("stage", "grid point", "metric"),
    )
    rows = []
    defaults: dict[str, dict[str, Any] | None] = {}
    for rec in store.records(method=args.method, suite=args.suite):
        metric = (rec.result or {}).get("metric", "accuracy")
        value = (rec.metrics or {}).get(metric)
        if rec.spec.method not in defaults:
            defaults[rec.spec.method] = _method_defaults(rec.spec.method)
        rows.append(
            (
                rec.run_id[:12],
                rec.state,
                rec.spec.method,
                rec.spec.backbone,
                rec.spec.suite,
                rec.spec.task,
                str(rec.spec.seed),
                rec.spec.stage,
                format_point(grid_point(rec.spec.to_dict(), defaults[rec.spec.method])),
                f"{value:.2f}" if isinstance(value, float) else "-",
            )
        )
    if out.is_terminal:
        table = Table(title=f"runs in {args.store}")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        out.print(table)
    else:
        for row in (columns, *rows):
            sys.stdout.write("\t".join(row) + "\n")  # rich would expand the tabs
    return 0


def _method_defaults(name: str) -> dict[str, Any] | None:
    """A registered method's default options (None when it is not installed here)."""
    import dataclasses

    from petlbench.methods.registry import get_method

    try:
        return dataclasses.asdict(get_method(name).Config())
    except UserError:
        return None
