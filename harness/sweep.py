"""`bench sweep`: methods x backbones x tasks x seeds, with an optional hyperparameter grid searched
on the selection split, run by a local or a Ray executor.

With a grid, each cell (method, backbone, task) first runs one *search* trial per grid point (stage
``search``, seed ``search_seed``; scored on the selection split, the evaluation split is never
read), picks the best point (ties: the earlier point in grid order), then runs the final seeds with
it. Every trial and every final run is an ordinary RunSpec in the store, so a sweep that dies is
resumed by running the same command: nothing finished is repeated. Final runs record the search
(grid, trials, chosen point, its selection score) in their result.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from petlbench.benchmarks.suites import Protocol, Suite
from petlbench.errors import UserError

from .executors import Executor, RunDone
from .runner import plan_runs
from .spec import RunSpec
from .store import Store


def parse_grid(items: Sequence[str] | None) -> dict[str, list[Any]]:
    """``["lr=0.1,0.01", "num_tokens=5,10"]`` -> ``{"lr": [0.1, 0.01], "num_tokens": [5, 10]}``."""
    import json

    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise UserError(f"--grid takes key=v1,v2,..., not {item!r}")
        values = []
        for v in raw.split(","):
            try:
                values.append(json.loads(v))
            except json.JSONDecodeError:
                values.append(v)
        if key in grid:
            raise UserError(f"--grid names {key!r} twice")
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def split_point(point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Protocol fields go to the protocol, everything else to the method's options."""
    fields = set(Protocol.field_names())
    return {k: v for k, v in point.items() if k in fields}, {
        k: v for k, v in point.items() if k not in fields
    }


@dataclass
class Cell:
    method: str
    backbone: str
    task: str
    trials: list[tuple[dict[str, Any], RunSpec]] = field(default_factory=list)


@dataclass
class SweepResult:
    search: list[RunDone]
    final: list[RunDone]
    chosen: dict[tuple[str, str, str], dict[str, Any]]
    failed: list[RunDone]


def _specs(
    method: str,
    suite: Suite,
    *,
    backbones: Sequence[str] | None,
    tasks: Sequence[str] | None,
    seeds: Sequence[int] | None,
    method_config: dict[str, Any],
    protocol_overrides: dict[str, Any],
    pretrained: bool,
    measure: dict[str, Any],
) -> list[RunSpec]:
    specs, _ = plan_runs(
        method,
        suite,
        backbones=backbones,
        tasks=tasks,
        seeds=seeds,
        method_config=method_config,
        protocol_overrides=protocol_overrides,
        pretrained=pretrained,
        measure=measure,
    )
    return specs


def run_sweep(
    store: Store,
    suite: Suite,
    executor: Executor,
    methods: Sequence[str],
    *,
    backbones: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    grid: dict[str, list[Any]] | None = None,
    search_seed: int | None = None,
    method_config: dict[str, Any] | None = None,
    protocol_overrides: dict[str, Any] | None = None,
    pretrained: bool = True,
    measure: dict[str, Any] | None = None,
    on_event: Callable[[str, RunDone], None] | None = None,
) -> SweepResult:
    seed_list = list(seeds) if seeds else list(suite.seeds)
    search_seed = seed_list[0] if search_seed is None else search_seed
    points = grid_points(grid or {})
    base_config = dict(method_config or {})
    base_protocol = dict(protocol_overrides or {})
    common = {"tasks": tasks, "pretrained": pretrained}

    cells: dict[tuple[str, str, str], Cell] = {}
    search_specs: list[RunSpec] = []
    if grid:
        for method in methods:
            for point in points:
                proto, opts = split_point(point)
                for spec in _specs(
                    method,
                    suite,
                    backbones=backbones,
                    seeds=[search_seed],
                    method_config=base_config | opts,
                    protocol_overrides=base_protocol | proto,
                    measure={},
                    **common,
                ):
                    spec = dataclasses.replace(spec, stage="search")
                    key = (spec.method, spec.backbone, spec.task)
                    cells.setdefault(key, Cell(*key)).trials.append((point, spec))
                    search_specs.append(spec)
    search_done = executor.run(search_specs, lambda d: on_event and on_event("search", d))
    by_id = {d.spec.run_id: d for d in search_done}

    chosen: dict[tuple[str, str, str], dict[str, Any]] = {}
    final_specs: list[RunSpec] = []
    search_info: dict[str, dict[str, Any]] = {}
    for method in methods:
        if not grid:
            final_specs += _specs(
                method,
                suite,
                backbones=backbones,
                seeds=seed_list,
                method_config=base_config,
                protocol_overrides=base_protocol,
                measure=dict(measure or {}),
                **common,
            )
            continue
        for key, cell in cells.items():
            if key[0] != method:
                continue
            scored = []
            for index, (point, spec) in enumerate(cell.trials):
                done = by_id.get(spec.run_id)
                if done is None or done.error is not None:
                    continue
                selection = {k: v for k, v in done.metrics.items() if k.startswith("selection_")}
                scored.append((-next(iter(selection.values())), index, point, spec))
            if not scored:
                continue  # every trial failed; reported in SweepResult.failed
            score, _, point, spec = min(scored, key=lambda t: (t[0], t[1]))
            proto, opts = split_point(point)
            chosen[key] = point
            info = {
                "grid": grid,
                "trials": len(cell.trials),
                "search_seed": search_seed,
                "chosen": point,
                "selection_score": -score,
                "trial_run_ids": [s.run_id for _, s in cell.trials],
            }
            for spec in _specs(
                method,
                suite,
                backbones=[key[1]],
                seeds=seed_list,
                method_config=base_config | opts,
                protocol_overrides=base_protocol | proto,
                measure=dict(measure or {}),
                pretrained=pretrained,
                tasks=[key[2]],
            ):
                final_specs.append(spec)
                search_info[spec.run_id] = info
    final_done = executor.run(final_specs, lambda d: on_event and on_event("final", d))
    for done in final_done:
        if done.error is None and done.spec.run_id in search_info:
            record = store.get(done.spec.run_id)
            if record is not None and record.result.get("search") != search_info[done.spec.run_id]:
                store.update_result(
                    done.spec.run_id, record.result | {"search": search_info[done.spec.run_id]}
                )
    failed = [d for d in search_done + final_done if d.error is not None]
    return SweepResult(search_done, final_done, chosen, failed)
