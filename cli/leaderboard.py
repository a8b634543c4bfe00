"""``bench leaderboard build | check | plot``. The CLI loads the suites the records name and hands
them to the build (:func:`installed_suite`): the leaderboard package imports no benchmarks module."""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

from petlbench.leaderboard.build import InstalledSuite, build, check, plot


@cache
def installed_suite(name: str) -> InstalledSuite:
    """The installed suite ``name`` as the leaderboard build reads it (UserError or OSError when there
    is none)."""
    from petlbench.benchmarks.suites import load_suite

    suite = load_suite(name)
    return InstalledSuite(
        version=str(suite.version),
        tasks=tuple(suite.task_names),
        groups={t.name: t.group for t in suite.tasks},
        base_protocol=lambda task, method: suite.protocol_for(suite.task(task), method).to_dict(),
    )


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if args.leaderboard_command == "plot":
        out = args.out if args.out is not None else Path(f"{args.y}-vs-{args.x}.svg")
        plot(args.leaderboard, out, args.x, args.y)
        print(f"plot: {args.y} vs {args.x} from {args.leaderboard} -> {out}")
        return 0
    if args.leaderboard_command == "build":
        doc = build(args.records, args.out, suites=installed_suite)
        print(
            f"leaderboard: {len(doc['rows'])} rows, {len(doc['entries'])} entries from "
            f"{doc['inputs']['used']} of {doc['inputs']['records']} records in {args.records} -> {args.out}"
        )
        return 0
    differ = check(args.records, args.out, suites=installed_suite)
    if differ:
        print(
            f"leaderboard check failed: files in {args.out} differ from a rebuild of the records in "
            f"{args.records}: {', '.join(differ)}; run `bench leaderboard build` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"leaderboard in {args.out} is up to date with the records in {args.records}")
    return 0
