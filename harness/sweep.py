"""`bench sweep`: methods x backbones x tasks x seeds, with a hyperparameter search on the selection
split, run by a local or a Ray executor.

The search is the suite's reference search space (``search:`` in the suite file, e.g. VPT's lr x
weight-decay grid on VTAB-1k, with the lr scaled by batch/256, then E2VPT's pruning rates) unless
``--grid`` gives one (or ``--no-search`` runs the fixed protocol). Phases are searched one after
another: each cell (method, backbone, task) runs one *search* trial per point of a phase (stage
``search``, seed ``search_seed``, trained on the training split without the selection split and
scored on the selection split; the evaluation split is never read), keeps the best point (ties by
the search space's ``tie_break``, then grid order), and crosses it with the next phase. The final
seeds then run with the chosen point (protocol layer ``search``). Every trial and every final run is
an ordinary RunSpec in the store, so a sweep that dies is resumed by running the same command.
Final runs record the search (phases, trials, chosen point, its selection score and the trials'
run ids) in their result: the leaderboard selects between cells by that trial score, never by a
final run's score on a split it may have trained on.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from petlbench.benchmarks.suites import Protocol, SearchSpace, Suite
from petlbench.errors import UserError

from .executors import Executor
from .plan import check_seed, plan_runs
from .runner import RunResult
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
    batch_size: int = 0  # the cell's batch before the search (for the lr scaling rule)
    best: dict[str, Any] = field(default_factory=dict)  # chosen point so far (unscaled grid values)
    best_score: float | None = None
    trials: list[tuple[dict[str, Any], RunSpec]] = field(default_factory=list)


@dataclass
class SweepResult:
    search: list[RunResult]
    final: list[RunResult]
    chosen: dict[tuple[str, str, str], dict[str, Any]]
    failed: list[RunResult]


def _selection_score(done: RunResult) -> float | None:
    values = [v for k, v in done.metrics.items() if k.startswith("selection_")]
    return float(values[0]) if values else None


def _tie_key(point: dict[str, Any], tie_break: Sequence[tuple[str, str]]) -> tuple[float, ...]:
    out = []
    for key, direction in tie_break:
        value = point.get(key)
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
        out.append(number if direction == "min" else -number)
    return tuple(out)


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
    search: bool = True,
    search_seed: int | None = None,
    method_config: dict[str, Any] | None = None,
    protocol_overrides: dict[str, Any] | None = None,
    pretrained: bool = True,
    measure: dict[str, Any] | None = None,
    on_event: Callable[[str, RunResult], None] | None = None,
) -> SweepResult:
    """Search (``grid``, else the suite's search space unless ``search`` is False), then the final
    seeds with each cell's chosen point."""
    if not methods:
        raise UserError("--methods names no method")
    seed_list = list(seeds) if seeds else list(suite.seeds)
    search_seed = seed_list[0] if search_seed is None else check_seed(search_seed, "--search-seed")
    base_config = dict(method_config or {})
    base_protocol = dict(protocol_overrides or {})
    if grid:
        space: SearchSpace | None = SearchSpace((dict(grid),), {})
        extra = [{"id": "user-search", "what": f"searched the user's --grid {grid} instead of the suite's"}]
        if suite.search is None:
            extra = []
    elif search and suite.search is not None:
        space, extra = suite.search, []
    else:
        space, extra = None, []
    common: dict[str, Any] = {"tasks": tasks, "pretrained": pretrained}
    # Everything the sweep runs is planned before its first run (final seeds here, every search
    # point below), so a bad name or value is one line before anything trains.
    planned_finals = {
        method: plan_runs(
            method,
            suite,
            backbones=backbones,
            seeds=seed_list,
            method_config=base_config,
            protocol_overrides=base_protocol,
            measure=dict(measure or {}),
            **common,
        )[0]
        for method in methods
    }

    cells: dict[tuple[str, str, str], Cell] = {}
    phases: dict[str, list[dict[str, list[Any]]]] = {}
    if space is not None:
        for method in methods:
            phases[method] = space.phases_for(method)
            planned, _ = plan_runs(
                method,
                suite,
                backbones=backbones,
                seeds=[search_seed],
                method_config=base_config,
                protocol_overrides=base_protocol,
                **common,
            )
            for spec in planned:
                key = (spec.method, spec.backbone, spec.task)
                cells[key] = Cell(*key, batch_size=int(spec.protocol["batch_size"]))
        for cell in cells.values():
            for phase in phases[cell.method]:
                for point in grid_points(phase):
                    _cell_specs(
                        suite,
                        cell,
                        point,
                        space,
                        base_config,
                        base_protocol,
                        pretrained,
                        extra,
                        [search_seed],
                    )

    search_done: list[RunResult] = []
    for phase_index in range(max((len(p) for p in phases.values()), default=0)):
        phase_specs: list[tuple[Cell, dict[str, Any], RunSpec]] = []
        for cell in cells.values():
            method_phases = phases[cell.method]
            if phase_index >= len(method_phases):
                continue
            for point in grid_points(method_phases[phase_index]):
                full = {**cell.best, **point}
                (spec,) = _cell_specs(
                    suite, cell, full, space, base_config, base_protocol, pretrained, extra, [search_seed]
                )
                phase_specs.append((cell, full, dataclasses.replace(spec, stage="search")))
        phase_runs = [s for _, _, s in phase_specs]
        phase_done = executor.run(phase_runs, lambda d: on_event and on_event("search", d))
        search_done += phase_done
        by_id = {d.spec.run_id: d for d in phase_done}
        scored: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
        for index, (cell, full, spec) in enumerate(phase_specs):
            cell.trials.append((full, spec))
            d = by_id.get(spec.run_id)
            score = _selection_score(d) if d is not None and d.error is None else None
            if score is None:
                continue
            tie = _tie_key(full, space.tie_break if space is not None else ())
            scored.setdefault((cell.method, cell.backbone, cell.task), []).append((-score, tie, index, full))
        for key, items in scored.items():
            neg, _, _, full = min(items, key=lambda t: (t[0], t[1], t[2]))
            cells[key].best, cells[key].best_score = full, -neg

    chosen: dict[tuple[str, str, str], dict[str, Any]] = {}
    final_specs: list[RunSpec] = []
    search_info: dict[str, dict[str, Any]] = {}
    for method in methods:
        if space is None:
            final_specs += planned_finals[method]  # the fixed protocol: as planned up front
            continue
        for key, cell in cells.items():
            if key[0] != method or cell.best_score is None:
                continue  # every trial of the cell failed: reported in SweepResult.failed
            chosen[key] = dict(cell.best)
            info = {
                "grid": phases[method][0] if len(phases[method]) == 1 else None,
                "phases": phases[method],
                "lr_scaling": space.lr_scaling,
                "trials": len(cell.trials),
                "search_seed": search_seed,
                "chosen": dict(cell.best),
                "chosen_protocol": _search_layer(cell, cell.best, space)[0],
                "selection_score": cell.best_score,
                "trial_run_ids": [s.run_id for _, s in cell.trials],
            }
            for spec in _cell_specs(
                suite,
                cell,
                cell.best,
                space,
                base_config,
                base_protocol,
                pretrained,
                extra,
                seed_list,
                measure,
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


def _cell_specs(
    suite: Suite,
    cell: Cell,
    point: dict[str, Any],
    space: SearchSpace | None,
    base_config: dict[str, Any],
    base_protocol: dict[str, Any],
    pretrained: bool,
    extra: Sequence[dict[str, str]],
    seeds: Sequence[int],
    measure: dict[str, Any] | None = None,
) -> list[RunSpec]:
    """The specs of one cell at a grid point: protocol values as the search layer (lr scaled by the
    space's rule), method options over the user's."""
    scaled, opts = _search_layer(cell, point, space)
    specs, _ = plan_runs(
        cell.method,
        suite,
        backbones=[cell.backbone],
        tasks=[cell.task],
        seeds=list(seeds),
        method_config=base_config | opts,
        protocol_overrides=base_protocol,
        pretrained=pretrained,
        measure=dict(measure or {}),
        search_point=scaled,
        extra_deviations=extra,
    )
    return specs


def _search_layer(
    cell: Cell, point: dict[str, Any], space: SearchSpace | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grid point split into the protocol values the run uses (lr scaled by the space's rule at the
    cell's batch size) and method options."""
    proto, opts = split_point(point)
    batch = int(proto.get("batch_size", cell.batch_size))
    return (space.scaled(proto, batch) if space is not None else proto), opts
