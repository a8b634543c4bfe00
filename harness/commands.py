"""Implementations of the ``bench`` sub-commands (imported lazily by the CLI, so ``--help`` is fast)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from petlbench.errors import UserError

from .arguments import assignments, csv_list, epsilons, seed_list

console = Console(stderr=True)
out = Console()


def _planned(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The suite and the specs of `bench run` / `bench plan` (one planning path for both)."""
    from petlbench.benchmarks.suites import load_suite

    from .plan import plan_runs

    suite = load_suite(args.suite)
    if args.data_root is not None and not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    specs, notes = plan_runs(
        args.method,
        suite,
        backbones=csv_list(args.backbone),
        tasks=csv_list(args.tasks),
        seeds=seed_list(args.seeds),
        method_config=assignments(args.method_options, "--set"),
        protocol_overrides=assignments(args.protocol_options, "--protocol"),
        pretrained=not args.random_init,
        measure={}
        if args.no_fgsm
        else {"fgsm": {"epsilons": epsilons(args.fgsm_eps), "max_examples": args.fgsm_examples}},
    )
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    return suite, specs


def cmd_plan(args: argparse.Namespace) -> int:
    """Every run `bench run` would do, with its effective protocol, without training."""
    from .plan import describe_plan

    suite, specs = _planned(args)
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


def _jobs(value: str, device: Any, runs: int) -> int:
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


def _executor(runner: Any, jobs: int, on_step: Any = None) -> Any:
    from .executors import LocalExecutor, PoolExecutor

    return LocalExecutor(runner, on_step=on_step) if jobs == 1 else PoolExecutor(runner, jobs)


def _image_cache_dir(args: argparse.Namespace) -> Path | None:
    """`--cache-dir` / `--no-image-cache` of run and sweep: the decoded-image cache (default beside
    the store), or None for none."""
    from .image_cache import default_cache_dir

    if args.no_image_cache:
        return None
    return args.cache_dir if args.cache_dir is not None else default_cache_dir(args.store)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import TimeRemainingColumn

    from .runner import Runner, resolve_device
    from .store import Store

    suite, specs = _planned(args)
    if suite.needs_data_root and args.data_root is None:
        raise UserError(f"suite {suite.name!r} reads datasets from disk: pass --data-root FOLDER")
    device = resolve_device(args.device)  # a bad --device is refused before the store is created
    jobs = _jobs(args.jobs, device, len(specs))
    store = Store(args.store)
    runner = Runner(
        store,
        suite,
        data_root=args.data_root,
        device=args.device,
        checkpoint_dir=args.store.parent / "checkpoints",
        image_cache=_image_cache_dir(args),
    )
    runner.on_wait = lambda spec: console.print(
        f"run {spec.run_id[:12]} ({spec.backbone} / {spec.task} / seed {spec.seed}) is being run by "
        "another process: waiting for it instead of training it twice"
    )
    terminal = console.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not terminal,  # off a terminal: one line per finished run (below)
    ) as progress:
        overall = progress.add_task(
            f"{args.method} on {suite.name}" + (f" ({jobs} jobs)" if jobs > 1 else ""),
            total=len(specs),
            info="",
        )
        bars: dict[str, Any] = {}
        finished: list[Any] = []

        def label(spec: Any) -> str:
            return f"  {spec.backbone} / {spec.task} / seed {spec.seed}"

        def on_step(spec: Any, step: int, total: int, loss: float) -> None:
            if spec.run_id not in bars:
                bars[spec.run_id] = progress.add_task(label(spec), total=total, info="")
            progress.update(bars[spec.run_id], completed=step, total=total, info=f"loss {loss:.3f}")

        def on_done(done: Any) -> None:
            metric = done.result.get("metric", "accuracy")
            value = f"{metric} {done.metrics.get(metric, float('nan')):.2f}"
            info = f"failed: {done.error}" if done.error else ("cached" if done.skipped else value)
            if done.waited:
                info = f"{value} (run by another process)"
            if done.spec.run_id not in bars:
                bars[done.spec.run_id] = progress.add_task(label(done.spec), total=1, info="")
            progress.update(bars[done.spec.run_id], total=1, completed=1, info=info)
            progress.advance(overall)
            finished.append(done)
            if not terminal:
                where = f"{label(done.spec).strip()} [{done.spec.run_id[:12]}]"
                console.print(
                    f"[{len(finished)}/{len(specs)}] {where}: {info}",
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                )

        with _executor(runner, jobs, on_step) as executor:
            outcomes = executor.run(specs, on_done)
    store.close()
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


def cmd_methods(args: argparse.Namespace) -> int:
    from petlbench.methods.registry import method_entries

    if getattr(args, "name", None):
        return _method_detail(args.name)

    table = Table(title="methods")
    for col in ("name", "family", "towers", "backbones", "paper", "source"):
        table.add_column(col)
    for entry in method_entries().values():
        try:
            cls = entry.load()
            row = [
                cls.family,
                ",".join(cls.towers) or "-",
                ",".join(cls.backbone_kinds or ("any",)),
                cls.paper,
            ]
        except UserError as err:
            row = ["?", "?", "?", f"[red]broken: {err}[/]"]
        source = f"plugin ({entry.distribution})" if entry.plugin else "built-in"
        table.add_row(entry.name, *row, source)
    out.print(table)
    return 0


def _method_detail(name: str) -> int:
    """``bench methods NAME``: what the method is, what it needs, and every option with its default,
    declared range and help."""
    from petlbench.methods.registry import get_method, method_options

    cls = get_method(name)
    _plain(f"{cls.name}: {cls.paper or '(no paper)'}")
    kinds = ",".join(cls.backbone_kinds or ("any",))
    _plain(
        f"family {cls.family}; towers {','.join(cls.towers) or '-'}; backbones {kinds}; head {cls.head}; "
        f"{'trains' if cls.trains else 'training-free'}"
    )
    for dev in cls.deviations:
        _plain(f"deviation {dev.get('id')}: {dev.get('what', '')}")
    options = method_options(cls)
    _plain(f"options (--set KEY=VALUE){':' if options else ': none'}")
    for opt in options:
        limits = f"  in [{_bound(opt.limits[0])}, {_bound(opt.limits[1])}]" if opt.limits else ""
        _plain(f"  {opt.name}: {opt.type} = {opt.default!r}{limits}")
        if opt.help:
            _plain(f"      {opt.help}")
    return 0


def _plain(text: str) -> None:
    """A line of stdout as written: no markup, no highlighting, no wrapping at the console width."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _bound(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def cmd_suites(args: argparse.Namespace) -> int:
    from petlbench.benchmarks.suites import list_suites, load_suite

    table = Table(title="suites")
    for col in ("name", "version", "tasks", "backbones", "seeds", "needs data", "description"):
        table.add_column(col)
    for name in list_suites():
        s = load_suite(name)
        table.add_row(
            s.name,
            str(s.version),
            str(len(s.tasks)),
            ",".join(s.backbones),
            ",".join(map(str, s.seeds)),
            "yes" if s.needs_data_root else "no",
            s.description,
        )
    out.print(table)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from petlbench.backbones.registry import list_backbones

    table = Table(title="backbones")
    for col in ("name", "kind", "description", "source"):
        table.add_column(col)
    for e in list_backbones():
        table.add_row(e.name, e.kind, e.description, e.source)
    out.print(table)
    return 0


def _open_store(path: Path) -> Any:
    from .store import Store

    if not path.exists():
        raise UserError(f"no results store at {path}; run `bench run ...` first or pass --store")
    return Store(path)


def cmd_show(args: argparse.Namespace) -> int:
    from .show import summary_lines

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
            _plain(line)
    if args.plot is not None:
        from petlbench.methods.registry import get_method

        written = get_method(rec.spec.method).plot_description(rec.result.get("method") or {}, args.plot)
        console.print(f"wrote {written}")
    return 0


def cmd_robust(args: argparse.Namespace) -> int:
    from petlbench.benchmarks.suites import load_suite

    from .runner import Runner

    store = _open_store(args.store)
    record = store.resolve(args.run)
    suite = load_suite(args.suite or record.spec.suite)
    runner = Runner(
        store,
        suite,
        data_root=args.data_root,
        device=args.device,
        checkpoint_dir=args.store.parent / "checkpoints",
    )
    with console.status(f"FGSM on run {record.run_id}"):
        measured = runner.remeasure_robustness(record.run_id, epsilons(args.fgsm_eps), args.fgsm_examples)
    table = Table(title=f"FGSM robustness of {record.run_id} ({record.method} on {record.task})")
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
    from .show import format_point, grid_point

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
        if rec.method not in defaults:
            defaults[rec.method] = _method_defaults(rec.method)
        rows.append(
            (
                rec.run_id[:12],
                rec.state,
                rec.method,
                rec.backbone,
                rec.suite,
                rec.task,
                str(rec.seed),
                rec.spec.stage,
                format_point(grid_point(rec.spec.to_dict(), defaults[rec.method])),
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


def cmd_perf(args: argparse.Namespace) -> int:
    from .perf import measure_perf
    from .runner import resolve_device

    if args.data:
        from .perf_data import measure_data_path

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
    from petlbench.leaderboard.records import load_records

    from .perf import perf_cells, perf_line

    if args.out is None:
        raise UserError("bench perf --for-records needs --out FILE (e.g. leaderboard/perf/mini.jsonl)")
    cells = perf_cells(load_records(args.for_records))
    lines = []
    for i, cell in enumerate(cells, 1):
        line = perf_line(cell, device, batch_size=args.batch_size, steps=args.steps)
        lines.append(line)
        ratio = "-" if line["x_plain"] is None else f"{line['x_plain']:.2f}x plain"
        _plain(f"[{i}/{len(cells)}] {cell['method']} on {cell['backbone']}: {ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    tmp.replace(args.out)
    console.print(f"wrote {len(lines)} perf lines to {args.out}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain

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


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.live import Live

    from petlbench.benchmarks.suites import load_suite

    from .executors import RayExecutor, RunDone
    from .runner import Runner, resolve_device
    from .store import Store
    from .sweep import parse_grid, run_sweep

    suite = load_suite(args.suite)
    if args.data_root is not None and not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    if suite.needs_data_root and args.data_root is None:
        raise UserError(f"suite {suite.name!r} reads datasets from disk: pass --data-root FOLDER")
    methods = csv_list(args.methods) or []
    if not methods:
        raise UserError("--methods names no method")
    grid = parse_grid(args.grid)
    resolve_device(args.device)  # a bad --device is refused before the store is created
    store = Store(args.store)
    runner = Runner(
        store,
        suite,
        data_root=args.data_root,
        device=args.device,
        checkpoint_dir=args.store.parent / "checkpoints",
        image_cache=_image_cache_dir(args),
    )
    if args.executor == "ray":
        executor: Any = RayExecutor(
            runner,
            address=args.ray_address,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            max_retries=args.max_retries,
        )
    else:
        executor = _executor(runner, _jobs(args.jobs, runner.device, 1 << 30))
    rows: list[tuple[str, RunDone]] = []

    def table() -> Table:
        t = Table(title=f"sweep on {suite.name} ({args.executor}): {len(rows)} runs done")
        for col in ("phase", "method", "backbone", "task", "seed", "status", "selection", "final"):
            t.add_column(col)
        for phase, d in rows[-25:]:
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

    measure = (
        {}
        if args.no_fgsm
        else {"fgsm": {"epsilons": epsilons(args.fgsm_eps), "max_examples": args.fgsm_examples}}
    )
    # The live table only on a terminal, started with the first finished run (so an error before
    # any run is one line); elsewhere one line per finished run.
    live: Live | None = None

    def on_event(phase: str, done: RunDone) -> None:
        nonlocal live
        rows.append((phase, done))
        if console.is_terminal:
            if live is None:
                live = Live(table(), console=console, refresh_per_second=4, transient=args.json)
                live.start()
            live.update(table())
        elif not args.json:
            console.print(_sweep_line(phase, done), highlight=False, soft_wrap=True, markup=False)
        if args.json and phase == "final":
            line = {"run_id": done.spec.run_id, "metrics": done.metrics, "skipped": done.skipped}
            print(json.dumps(line | {"error": done.error}, sort_keys=True), flush=True)

    try:
        result = run_sweep(
            store,
            suite,
            executor,
            methods,
            backbones=csv_list(args.backbone),
            tasks=csv_list(args.tasks),
            seeds=seed_list(args.seeds),
            grid=grid,
            search=not args.no_search,
            search_seed=args.search_seed,
            method_config=assignments(args.method_options, "--set"),
            protocol_overrides=assignments(args.protocol_options, "--protocol"),
            pretrained=not args.random_init,
            measure=measure,
            on_event=on_event,
        )
    finally:
        executor.close()  # the pool served every phase of the sweep
        if live is not None:
            live.stop()
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


def _sweep_line(phase: str, done: Any) -> str:
    """One finished sweep run as one line (the sweep's output off a terminal)."""
    spec = done.spec
    where = f"{phase} {spec.method} {spec.backbone} {spec.task} seed {spec.seed} [{spec.run_id[:12]}]"
    if done.error:
        return f"{where}: failed: {done.error}"
    values = " ".join(f"{k} {v:.2f}" for k, v in sorted(done.metrics.items()) if isinstance(v, float))
    return f"{where}: {'cached ' if done.skipped else ''}{values}".rstrip()


def cmd_export(args: argparse.Namespace) -> int:
    """Export the store's runs into the records folder. Without --replace a record already there (same
    run id) is kept byte for byte, even when the store's version differs; --replace makes the folder
    exactly the store's export (same run ids take the store's version, the others are dropped). Files
    whose bytes would not change are not written; a run that cannot be a record is refused by id."""
    from petlbench.leaderboard.records import export_store

    done = export_store(args.store, args.out, include_failed=args.include_failed, replace=args.replace)
    kept = f"kept {done.kept} already in {args.out}"
    if done.kept_differing:
        kept += f" ({done.kept_differing} of them differ from the store; --replace to overwrite them)"
    dropped = f", dropped {done.dropped} not in the store" if args.replace else ""
    wrote = ", ".join(map(str, done.files)) or "nothing (no file changed)"
    removed = f"; removed {', '.join(map(str, done.removed))}" if done.removed else ""
    print(
        f"exported from {args.store}: added {done.added}, {kept}, replaced {done.replaced}{dropped}; "
        f"wrote {wrote}{removed}"
    )
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from petlbench.leaderboard.build import build, check, plot

    if args.leaderboard_command == "plot":
        out = args.out if args.out is not None else Path(f"{args.y}-vs-{args.x}.svg")
        plot(args.leaderboard, out, args.x, args.y)
        print(f"plot: {args.y} vs {args.x} from {args.leaderboard} -> {out}")
        return 0
    if args.leaderboard_command == "build":
        doc = build(args.records, args.out)
        print(
            f"leaderboard: {len(doc['rows'])} rows, {len(doc['entries'])} entries from "
            f"{doc['inputs']['used']} of {doc['inputs']['records']} records in {args.records} -> {args.out}"
        )
        return 0
    differ = check(args.records, args.out)
    if differ:
        import sys

        print(
            f"leaderboard check failed: files in {args.out} differ from a rebuild of the records in "
            f"{args.records}: {', '.join(differ)}; run `bench leaderboard build` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"leaderboard in {args.out} is up to date with the records in {args.records}")
    return 0


def _data_cache(args: argparse.Namespace, suite: Any, tasks: list[Any]) -> int:
    """`bench data cache`: decode every task's evaluation split once into the image cache, for each
    backbone's input size, so the runs of a sweep (and its Ray workers on this machine) only read."""
    from rich.progress import TimeRemainingColumn

    from . import data_check as dc
    from .image_cache import ImageCache, plain_progress

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    targets = dc.cache_targets(suite, args.data_root, tasks, csv_list(args.backbone))
    terminal = console.is_terminal
    rows: list[tuple[str, ...]] = []
    failed: list[str] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
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


def cmd_data(args: argparse.Namespace) -> int:
    from petlbench.benchmarks.suites import load_suite

    from . import data_check as dc

    suite = load_suite(args.suite)
    if not args.data_root.is_dir():
        raise UserError(f"--data-root {args.data_root} is not a folder")
    tasks = [suite.task(t) for t in csv_list(args.tasks)] if args.tasks else list(suite.tasks)
    if args.data_command == "prepare":
        from . import data_download as dl

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
                try:
                    with console.status(f"downloading {task.name}") as status:
                        notes += dl.download_task(
                            task,
                            args.data_root,
                            lambda f, n, total, s=status: s.update(
                                f"downloading {f}: {n / 2**20:.0f}"
                                + (f" / {total / 2**20:.0f}" if total else "")
                                + " MiB"
                            ),
                        )
                except UserError as err:  # a failed download, a corrupt or malformed archive
                    errors.append(f"{task.name}: {err}")
                    notes.append("[red]download failed (see the error below)[/]")
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

    if args.data_command == "cache":
        return _data_cache(args, suite, tasks)

    manifest_path = None if args.no_manifest else (args.manifest or args.data_root / dc.MANIFEST_NAME)
    manifest = dc.read_manifest(manifest_path) if manifest_path is not None else None
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
        dc.write_manifest(manifest_path, manifest)
    bad = [c for c in checks if not c.ok]
    from .image_cache import ImageCache

    loadable = [t for t, c in zip(tasks, checks, strict=True) if c.ok and c.skipped is None]
    targets = dc.cache_targets(suite, args.data_root, loadable)
    cache_state = dc.cache_column(targets, ImageCache(args.cache_dir))
    for c in checks:
        if c.skipped is not None:
            cache_state[c.task] = "generated data: not cached"
    if args.json:
        for c in checks:
            row = {
                "cache": cache_state.get(c.task, "-"),
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
            print(json.dumps(row))
        return 1 if bad else 0
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
    for c in bad:
        if c.error:
            out.print(f"[red]{c.task}[/]: {c.error}", highlight=False, soft_wrap=True)
        for path, source in c.missing[:10]:
            out.print(
                f"[red]{c.task}[/]: missing {path} (listed in {source})", highlight=False, soft_wrap=True
            )
        for path, reason in c.corrupt[:10]:
            out.print(f"[red]{c.task}[/]: corrupt {path}: {reason}", highlight=False, soft_wrap=True)
        for line in c.leakage_lines():
            out.print(f"[red]{c.task}[/]: {line}", highlight=False, soft_wrap=True)
        extra = max(0, len(c.missing) - 10) + max(0, len(c.corrupt) - 10)
        if extra:
            out.print(
                f"{c.task}: {extra} more problem(s) (use --json for the full list)",
                highlight=False,
                soft_wrap=True,
            )
    if manifest_path is not None and manifest is not None:
        console.print(f"manifest {manifest_path}: {len(manifest)} files ({len(manifest) - known} new)")
    return 1 if bad else 0
