"""``bench pretrain``: the micro backbones pretrained on the synthetic world."""

from __future__ import annotations

import argparse
import json

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .output import console, out


def cmd_pretrain(args: argparse.Namespace) -> int:
    from petlbench.harness.pretrain import pretrain

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task(f"pretraining {args.model}", total=None, info="")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(bar, completed=step, total=total, info=f"loss {loss:.3f}")

        record = pretrain(
            args.model,
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=on_step,
        )
    out.print_json(
        json.dumps({k: record[k] for k in ("name", "sha256", "parameters", "training", "metrics")})
    )
    return 0
