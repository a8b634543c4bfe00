"""Where the ``bench`` verbs write: tables and results to stdout, progress and notes to stderr."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
out = Console()


def plain(text: str) -> None:
    """A line of stdout as written: no markup, no highlighting, no wrapping at the console width."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def timed_progress(*middle: Any, **options: Any) -> Progress:
    """A stderr progress display of bars with a count, ``middle`` columns, elapsed and remaining time
    (the layout of `bench run` and `bench data cache`)."""
    from rich.progress import TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *middle,
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        **options,
    )
