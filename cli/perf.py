"""``bench perf``: a method's training step timed against the plain backbone's, the image cache's
data path (``--data``), or one measurement per leaderboard cell (``--for-records``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from petlbench.errors import UserError

from .output import console, out, plain
from .parser import assignments


def cmd_perf(args: argparse.Namespace) -> int:
    from petlbench.harness.perf import measure_perf
    from petlbench.harness.runner import resolve_device

    if args.data:
        from petlbench.harness.perf_data import measure_data_path

        line = measure_data_path(args.images, workers=args.workers, folder=args.dir)
        print(json.dumps(line, sort_keys=True), flush=True)
        return 0
    device = resolve_device(args.device)
    if args.for_records is not None:
        return _perf_for_records(args, device)
    if not args.method or not args.backbone:
        raise UserError("bench perf: give --method and --backbone, or --for-records FOLDER --out FILE")
    with console.status(f"timing {args.method} on {args.backbone} ({device})") as status:

        def on_step(done: int, total: int) -> None:
            status.update(f"timing {args.method} on {args.backbone} ({device}): step {done}/{total}")

        perf = measure_perf(
            args.method,
            args.backbone,
            method_config=assignments(args.method_options, "--set"),
            batch_size=args.batch_size,
            steps=args.steps,
            device=device,
            on_step=on_step,
        )
    if args.json:
        print(json.dumps(perf, sort_keys=True))
        return 0
    table = Table(title=f"{args.method} on {args.backbone}: {perf['hardware']}, {perf['dtype']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    roof = perf["roofline"]
    rows = [
        ("trainable parameters", f"{perf['trainable_parameters']:,}"),
        ("forward GMACs / image", f"{perf['forward_gmacs_per_image']:.2f}"),
        ("train images/s", f"{perf['train_images_per_second']:.1f}"),
        ("train step (ms)", f"{perf['train_step_ms']:.1f}"),
        ("eval images/s", f"{perf['eval_images_per_second']:.1f}"),
        ("train step x plain backbone", f"{perf['speed_ratio']['x_plain']:.2f}"),
        ("  per forward MAC", f"{perf['speed_ratio']['per_mac']:.2f}"),
        (f"train {perf['train_memory']['kind']} (MiB)", f"{perf['train_memory']['peak_mib']:.0f}"),
        ("achieved train TFLOP/s", f"{perf['achieved_train_flops_per_s'] / 1e12:.3f}"),
        (
            f"matmul roofline TFLOP/s ({roof['matmul_size']}, {roof['dtype']})",
            f"{roof['flops_per_s'] / 1e12:.3f}",
        ),
        ("utilisation", f"{100 * perf['utilisation']:.1f}%"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(f"[dim]{perf['convention']}[/]")
    return 0


def _perf_for_records(args: argparse.Namespace, device: Any) -> int:
    """One dedicated perf measurement per leaderboard cell, written as JSON lines (atomically, in a
    fixed order) for ``bench leaderboard build`` to read from the records' sibling ``perf/`` folder."""
    from petlbench.harness.perf import perf_cells, perf_line
    from petlbench.leaderboard.records import load_records

    if args.out is None:
        raise UserError("bench perf --for-records needs --out FILE (e.g. leaderboard/perf/mini.jsonl)")
    cells = perf_cells(load_records(args.for_records))
    lines = []
    for i, cell in enumerate(cells, 1):
        line = perf_line(cell, device, batch_size=args.batch_size, steps=args.steps)
        lines.append(line)
        ratio = "-" if line["x_plain"] is None else f"{line['x_plain']:.2f}x plain"
        plain(f"[{i}/{len(cells)}] {cell['method']} on {cell['backbone']}: {ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    tmp.replace(args.out)
    console.print(f"wrote {len(lines)} perf lines to {args.out}")
    return 0
