"""``bench data check`` (layout, files, decoding, hashes, leakage), ``bench data prepare`` (what is
missing and where to get it; ``--download`` fetches it) and ``bench data cache`` (decode once into the
image cache)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from petlbench.errors import UserError

from .output import console, out, timed_progress


def cmd_data(args: argparse.Namespace) -> int:
    from petlbench.benchmarks.suites import load_suite

    suite = load_suite(args.suite)
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    tasks = [suite.task(t) for t in args.tasks] if args.tasks is not None else list(suite.tasks)
    verb = {"prepare": _data_prepare, "cache": _data_cache, "check": _data_check}[args.data_command]
    return verb(args, suite, tasks)


def _data_prepare(args: argparse.Namespace, suite: Any, tasks: list[Any]) -> int:
    """`bench data prepare`: each task present, generated or missing (with where to get it); with
    ``--download`` what public servers hold is fetched first. Exit 2 on a failed download, 1 while
    data is missing."""
    from petlbench.harness import data_check as dc
    from petlbench.harness import data_download as dl

    fetch_column = "downloaded / still to fetch by hand" if args.download else "what to fetch"
    table = Table(title=f"data for suite {suite.name} under {args.data_root}")
    for col in ("task", "loader", "status", fetch_column):
        table.add_column(col, overflow="fold")
    missing = downloadable = 0
    errors: list[str] = []
    for task in tasks:
        check = dc.check_task(task, args.data_root, None, decode=False, leakage=False)
        if check.skipped:
            table.add_row(task.name, task.loader, "[dim]generated[/]", "-")
            continue
        if check.ok:
            table.add_row(task.name, task.loader, "[green]present[/]", "-")
            continue
        notes = []
        if args.download and dl.can_download(task):
            notes += _download(task, args.data_root, errors)
            check = dc.check_task(task, args.data_root, None, decode=False, leakage=False)
            if check.ok:
                table.add_row(task.name, task.loader, "[green]downloaded[/]", "; ".join(notes))
                continue
        downloadable += bool(not args.download and dl.can_download(task))
        missing += 1
        problem = check.error or f"{len(check.missing)} of {check.files} images missing"
        still = "; ".join([*notes, dc.how_to_get(task)])
        table.add_row(task.name, task.loader, f"[red]missing[/]: {problem}", still)
    out.print(table)
    if errors:  # what the user must fix before anything else: one line each, exit 2
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if missing:
        hint = (
            f" ({downloadable} of them can be downloaded: add --download on a machine with a network)"
            if downloadable
            else ""
        )
        console.print(
            f"{missing} task(s) need data{hint}; fetch the rest as listed, then run "
            f"`bench data check --suite {args.suite} --data-root {args.data_root}`"
        )
    return 1 if missing else 0


def _download(task: Any, data_root: Path, errors: list[str]) -> list[str]:
    """Download one task's data with a status line; its notes, a failure appended to ``errors``."""
    from petlbench.harness import data_download as dl

    try:
        with console.status(f"downloading {task.name}") as status:

            def report(name: str, done: int, total: int | None) -> None:
                size = f"{done / 2**20:.0f}" + (f" / {total / 2**20:.0f}" if total else "")
                status.update(f"downloading {name}: {size} MiB")

            return dl.download_task(task, data_root, report)
    except UserError as err:  # a failed download, a corrupt or malformed archive
        errors.append(f"{task.name}: {err}")
        return ["[red]download failed (see the error below)[/]"]


def _data_cache(args: argparse.Namespace, suite: Any, tasks: list[Any]) -> int:
    """`bench data cache`: decode every task's evaluation split once into the image cache, for each
    backbone's input size, so the runs of a sweep (and its Ray workers on this machine) only read."""
    from petlbench.harness import data_check as dc
    from petlbench.harness.image_cache import ImageCache, plain_progress

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    targets = dc.cache_targets(suite, args.data_root, tasks, args.backbone)
    terminal = console.is_terminal
    rows: list[tuple[str, ...]] = []
    failed: list[str] = []
    with timed_progress(
        disable=not terminal,  # off a terminal: a few plain lines per split (image_cache.plain_progress)
    ) as progress:
        bars: dict[str, Any] = {}

        def on_fill(label: str, done: int, total: int, elapsed: float) -> None:
            if label not in bars:
                bars[label] = progress.add_task(f"decoding {label}", total=total)
            progress.update(bars[label], completed=done, total=total)

        report = on_fill if terminal else plain_progress()
        cache = ImageCache(args.cache_dir, workers=args.workers, progress=report)
        done_keys: dict[str, str] = {}
        for t in targets:
            if t.source is None:
                rows.append((t.task, t.backbone, t.split, "-", t.reason or "not cached"))
                failed += [t.task] if (t.reason or "").startswith("cannot load") else []
                continue
            key = t.source.key()
            if key not in done_keys:
                before = cache.state(t.source)
                try:
                    cache.ensure(t.source)
                except UserError as err:
                    done_keys[key] = f"[red]failed[/]: {err}"
                    failed.append(t.task)
                else:
                    done_keys[key] = {
                        "cached": "already cached",
                        "stale": f"re-decoded {before.changed} changed image(s)",
                    }.get(before.state, "[green]decoded[/]")
            size = f"{len(t.source.relpaths)} x {t.source.out_size}px"
            rows.append((t.task, t.backbone, t.split, size, done_keys[key]))
    table = Table(title=f"image cache {args.cache_dir} for suite {suite.name}")
    for col in ("task", "backbone", "split", "images", "cache"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    held = cache.summary()
    console.print(f"image cache {held['root']}: {held['entries']} entries, {held['bytes'] / 2**30:.2f} GiB")
    return 1 if failed else 0


def _data_check(args: argparse.Namespace, suite: Any, tasks: list[Any]) -> int:
    """`bench data check`: every task's files checked (and hashed into the manifest), with the image
    cache's state; exit 1 on any problem."""
    from petlbench.harness import data_check as dc
    from petlbench.harness import manifest as mf
    from petlbench.harness.image_cache import ImageCache

    manifest_path = None if args.no_manifest else (args.manifest or args.data_root / mf.MANIFEST_NAME)
    manifest = mf.read_manifest(manifest_path) if manifest_path is not None else None
    known = len(manifest) if manifest is not None else 0
    checks = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        bar = progress.add_task("checking", total=dc.count_files(suite, args.data_root, tasks))
        for task in tasks:
            progress.update(bar, description=f"checking {task.name}")
            checks.append(
                dc.check_task(
                    task, args.data_root, manifest, not args.no_decode, lambda: progress.advance(bar)
                )
            )
    if manifest_path is not None and manifest is not None and len(manifest) != known:
        mf.write_manifest(manifest_path, manifest)
    bad = [c for c in checks if not c.ok]
    loadable = [t for t, c in zip(tasks, checks, strict=True) if c.ok and c.skipped is None]
    targets = dc.cache_targets(suite, args.data_root, loadable)
    cache_state = dc.cache_column(targets, ImageCache(args.cache_dir))
    for c in checks:
        if c.skipped is not None:
            cache_state[c.task] = "generated data: not cached"
    if args.json:
        for c in checks:
            print(json.dumps(_check_row(c, cache_state.get(c.task, "-"))))
        return 1 if bad else 0
    _print_checks(args, suite, checks, cache_state)
    for c in bad:
        _print_problems(c)
    if manifest_path is not None and manifest is not None:
        console.print(f"manifest {manifest_path}: {len(manifest)} files ({len(manifest) - known} new)")
    return 1 if bad else 0


def _check_row(c: Any, cache: str) -> dict[str, Any]:
    """One task's check as a ``--json`` line."""
    return {
        "cache": cache,
        "task": c.task,
        "loader": c.loader,
        "status": c.status,
        "root": c.root,
        "files": c.files,
        "present": c.present,
        "missing": [p for p, _ in c.missing],
        "corrupt": [{"path": p, "reason": r} for p, r in c.corrupt],
        "duplicates": [d.to_dict() for d in c.duplicates],  # paths relative to root
        "overlaps": [o.to_dict() for o in c.overlaps],
        "error": c.error,
    }


def _print_checks(
    args: argparse.Namespace, suite: Any, checks: list[Any], cache_state: dict[str, str]
) -> None:
    table = Table(title=f"suite {suite.name} v{suite.version} under {args.data_root}")
    for col in (
        "task",
        "loader",
        "images",
        "present",
        "missing",
        "corrupt",
        "duplicated",
        "overlaps",
        "status",
        "cache",
    ):
        table.add_column(col)
    colour = {"ok": "green", "skipped": "dim", "problems": "red", "error": "red"}
    for c in checks:
        table.add_row(
            c.task,
            c.loader,
            str(c.files),
            str(c.present),
            str(len(c.missing)),
            str(len(c.corrupt)),
            str(len(c.duplicates)),
            str(sum(len(o.pairs) for o in c.overlaps)),
            f"[{colour[c.status]}]{c.status}[/]",
            cache_state.get(c.task, "-"),
        )
    out.print(table)


def _print_problems(c: Any) -> None:
    """A failed task's error and its first ten missing and corrupt files, then its leakage."""

    def line(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=True)

    if c.error:
        line(f"[red]{c.task}[/]: {c.error}")
    for path, source in c.missing[:10]:
        line(f"[red]{c.task}[/]: missing {path} (listed in {source})")
    for path, reason in c.corrupt[:10]:
        line(f"[red]{c.task}[/]: corrupt {path}: {reason}")
    for leak in c.leakage_lines():
        line(f"[red]{c.task}[/]: {leak}")
    extra = max(0, len(c.missing) - 10) + max(0, len(c.corrupt) - 10)
    if extra:
        line(f"{c.task}: {extra} more problem(s) (use --json for the full list)")
