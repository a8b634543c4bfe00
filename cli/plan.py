"""``bench plan``, and the one planning path it shares with ``bench run``: the suite and the specs the
run options name."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from petlbench.errors import UserError

from .output import console, out
from .parser import assignments


def suite_and_data_root(args: argparse.Namespace, *, required: bool = False) -> Any:
    """The suite ``--suite`` names, once ``--data-root`` (when given) is a folder; ``required``: also
    refuse a suite that reads from disk without ``--data-root``."""
    from petlbench.benchmarks.suites import load_suite

    suite = load_suite(args.suite)
    if args.data_root is not None and not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    if required:
        require_data_root(args, suite)
    return suite


def require_data_root(args: argparse.Namespace, suite: Any) -> None:
    if suite.needs_data_root and args.data_root is None:
        raise UserError(f"suite {suite.name!r} reads datasets from disk: pass --data-root FOLDER")


def measurements(args: argparse.Namespace) -> dict[str, Any]:
    """What a run measures beyond its metric: FGSM robustness unless ``--no-fgsm``; the test score
    after every epoch with ``--test-by-epoch``."""
    measure: dict[str, Any] = {}
    if not args.no_fgsm:
        measure["fgsm"] = {"epsilons": args.fgsm_eps, "max_examples": args.fgsm_examples}
    if args.test_by_epoch:
        measure["test_by_epoch"] = True
    return measure


def planned(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The suite and the specs of `bench run` / `bench plan` (one planning path for both)."""
    from petlbench.harness.plan import plan_runs

    suite = suite_and_data_root(args)
    specs, notes = plan_runs(
        args.method,
        suite,
        backbones=args.backbone,
        tasks=args.tasks,
        seeds=args.seeds,
        method_config=assignments(args.method_options, "--set"),
        protocol_overrides=assignments(args.protocol_options, "--protocol"),
        pretrained=not args.random_init,
        measure=measurements(args),
    )
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    return suite, specs


def cmd_plan(args: argparse.Namespace) -> int:
    """Every run `bench run` would do, with its effective protocol, without training."""
    from petlbench.harness.plan import describe_plan

    suite, specs = planned(args)
    lines = [describe_plan(spec, suite) for spec in specs]
    if args.json:
        for line in lines:
            print(json.dumps(line, sort_keys=True), flush=True)
        return 0
    t = Table(title=f"bench plan: {len(lines)} runs of {args.method} on {suite.name}")
    for col in (
        "backbone",
        "task",
        "seed",
        "epochs",
        "batch",
        "lr",
        "schedule",
        "augmentation",
        "deviations",
    ):
        t.add_column(col)
    for line in lines:
        p = line["protocol"]
        devs = ", ".join(d["id"] for d in line["deviations"]) or "reference protocol"
        t.add_row(
            line["backbone"],
            line["task"],
            str(line["seed"]),
            f"{p['epochs']} ({line['protocol_source']['epochs']})",
            f"{p['batch_size']} ({line['protocol_source']['batch_size']})",
            f"{p['lr']:g} ({line['protocol_source']['lr']})",
            p["schedule"],
            p["augmentation"],
            devs,
        )
    out.print(t)
    return 0
