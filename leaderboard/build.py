"""Records -> the leaderboard document (``leaderboard.json``), validated against ``schema.json``.

Aggregation, in order:

* **cell** = every spec field but the seed (suite and its version, method and its config, backbone, task,
  protocol, stage, measurement options except ``test_by_epoch``, which changes no number; each seed
  counted once, see ``one_record_per_seed``). Over a cell's seeds: mean, *sample* standard deviation
  (``statistics.stdev``, n - 1 in the denominator; 0 when n = 1) and n. One row per cell.
* **entry** = (suite, suite version, method, method config, backbone, backbone pretrained or not). When
  an entry has more than one cell for a task (e.g. two learning rates), the cell with the best mean
  *selection* score (``selection_<metric>``, measured on the protocol's selection split) is the one
  averaged; never the test score. Ties go to more seeds, then the smaller cell id.
* **suite / group averages** = the mean over tasks of the chosen cells' means (macro average), with the
  suite's own task groups (``group`` in the suite file). A suite with groups named ``base`` and ``new``
  also gets the base-to-new harmonic mean of those two group averages (CoCoOp's HM); a suite with
  groups also gets the mean of its group averages (VTAB-style), once every group has results. The std of an
  average is the sample std, over the seeds every chosen cell has, of the per-seed averages (null when
  fewer than two such seeds).

Statistics a reader can act on: every row, group and average carries a 95% Student t interval over
seeds (``ci95``: mean -/+ t_{0.975, n-1} * std / sqrt(n), null for one seed) and a rank by interval
(``rank``: 1 + the number of compared items whose interval lies entirely above; equal ranks are ties,
``tied_with``). Each suite names one **headline** average (``suites[].headline``, ``entries[].headline``),
the one entries are ranked by: the mean of group means for a suite with groups (VTAB-1k), the base-to-new
HM for a base/new suite, else the mean over tasks. ``selection_inflation`` (from ``result.selection``) and
``efficiency.speed_ratio`` (from ``result.perf.step_time_ratio``) are null until records carry them.

Only finished, final-stage runs count (search trials of ``bench sweep`` are kept in the records as
provenance, but are not results). Every float is rounded to 6 significant digits, keys are sorted and
nothing depends on the clock, so building twice from the same records gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from petlbench.errors import UserError
from petlbench.harness.spec_argv import run_argv

HERE = Path(__file__).resolve().parent
SCHEMA_PATH = HERE / "schema.json"
REPORTED_PATH = HERE / "reported.yaml"
SCHEMA_VERSION = "1.2"
SIGNIFICANT = 6

CONVENTIONS = {
    "aggregation": "per cell (every spec field but the seed): mean over seeds; suite and group averages are "
    "the mean over tasks of the chosen cells' means (macro average)",
    "std": "sample standard deviation over seeds (statistics.stdev, n - 1 denominator); 0 when n = 1",
    "ci95": "95% confidence interval of a mean over n seeds, Student t: mean -/+ t_{0.975, n-1} * std / "
    "sqrt(n), std with the n - 1 denominator; null when n < 2. An average's interval uses its per-seed "
    "values (over the seeds every chosen cell has) and n = n_seeds",
    "rank": "rank by confidence interval (Chatbot Arena's rank (UB), lm-sys/FastChat "
    "fastchat/serve/monitor/monitor.py:L56-66): 1 + the number of rows whose 95% CI lies entirely above "
    "this row's (lower bound > its upper bound: statistically better); rows with the same rank are tied "
    "(tied_with; shown '=2'); a row without a CI (n < 2) is not ranked. Compared: the same suite and "
    "version, backbone (pretrained or random init) and shot count; per task also the same metric, among "
    "the selected cells only. Entries are ranked by the headline, complete entries only",
    "headline": "an entry's one headline number is the suite's own (suites[].headline): the mean of group "
    "means for a suite with task groups (VTAB-1k), the base-to-new harmonic mean for a suite with 'base' "
    "and 'new' groups (CoCoOp), else the mean over tasks; average (mean over tasks), average_of_groups and "
    "base_new_hm are the other views of the same cells",
    "best": "the best value per column is highlighted (declared once per column: higher or lower is "
    "better), among the selected cells of a task and among the entries of a suite",
    "selection_inflation": "per cell, from each run's result.selection (written by runs made with "
    "`bench run --test-by-epoch`, which scores the test split after every epoch and never lets training "
    "or selection read it): test_by_candidate (the test score of every epoch or grid point the protocol "
    "chose among) and selected_test (the chosen one's, default the run's test metric); "
    "gap = max(test_by_candidate) - selected_test, the optimism selecting on test "
    "would add; mean over the runs that carry it, null when none does",
    "speed_ratio": "per cell, the method's train step time / the plain backbone's (frozen backbone + linear "
    "head), the two steps interleaved in one process by a dedicated perf pass (`bench perf --for-records`, "
    "files in the perf/ folder beside the records, with the hardware they ran on: inputs.perf), or the "
    "mean of the runs' result.perf.step_time_ratio; null when not measured or when the method trains "
    "nothing; an entry's is the mean over its chosen cells",
    "csv": "leaderboard.csv: one line per (method, backbone, task) cell and per entry average (headline, "
    "other averages, group averages); the columns are documented at petlbench.leaderboard.render.CSV_HEADER",
    "selection": "when an entry has several cells for one task, the one with the best selection score is "
    "averaged (never the test score): the search trials' score when the cell came from a search (trained "
    "without the selection split), else the final runs' selection-split score unless they trained on it "
    "(train800val200), in which case the cell has no selection score; ties: more seeds, then the smaller "
    "cell id",
    "deviations": "the named ways a row's runs depart from the suite's reference protocol (empty: the "
    "reference protocol); an entry lists the union over its tasks",
    "base_new_hm": "2 * base * new / (base + new) of the 'base' and 'new' group averages, when a suite "
    "has both",
    "metric_scale": "percent (0-100)",
    "parameters": "trainable parameters the method owns (method) and with the task head (with_head); "
    "percent_of_backbone = method / denominator * 100, denominator named per row",
    "gmacs": "image-tower GMACs per image at the task resolution, batch 1 (fvcore, 1 MAC = 1 'flop'; every "
    "linear, conv and attention matmul counted)",
    "speed_memory": "mean over seeds of the recorded train/eval images per second and peak memory "
    "(CUDA max allocated on GPU, peak RSS on CPU), with device and dtype; hardware-dependent",
    "robustness": "FGSM (adversarial-robustness-toolbox), pixel-space L-inf epsilons, normalisation inside "
    "the model (unit 'pixel'; OFA attacks its embeddings, unit 'embedding'); robust accuracy averaged over "
    "the seeds that measured the same epsilon grid",
    "rounding": f"floats rounded to {SIGNIFICANT} significant digits",
}


# ----- small helpers ------------------------------------------------------------------------------


EXACT_KEYS = frozenset({"spec", "method_config"})  # kept exactly as recorded (they identify runs)


def rnd(value: Any) -> Any:
    """Round floats (recursively) to ``SIGNIFICANT`` significant digits; ints, strings, None unchanged.
    Values under the keys in ``EXACT_KEYS`` are kept as they are."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        out = float(f"{value:.{SIGNIFICANT}g}")
        return 0.0 if out == 0 else out
    if isinstance(value, dict):
        return {str(k): v if k in EXACT_KEYS else rnd(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rnd(v) for v in value]
    return value


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n); std is 0 for a single value. Raises on no values."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, len(values)


# ----- statistics: Student t intervals and ranks by interval --------------------------------------


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``df`` >= 1, in closed form (Abramowitz & Stegun
    26.7.3-26.7.4: a finite series in cos(theta), theta = atan(t / sqrt(df))). Exact to float rounding,
    so the leaderboard needs no scipy (a dependency of no part of petlbench)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c, s = math.cos(theta), math.sin(theta)
    if df % 2 == 1:
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):  # c + 2/3 c^3 + (2*4)/(3*5) c^5 + ... up to c^(df-2)
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return (2 / math.pi) * (theta + s * total)
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):  # 1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


@cache
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom: bisection on
    theta in (0, pi/2) of the closed-form CDF until the interval stops shrinking (deterministic)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, not p={p}, df={df}")
    target = 2 * p - 1
    lo, hi = 0.0, math.pi / 2
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if t_two_sided_cdf(math.sqrt(df) * math.tan(mid), df) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def ci95(mean: float | None, std: float | None, n: int) -> list[float] | None:
    """The 95% confidence interval of a mean over ``n`` seeds: mean -/+ t_{0.975, n-1} * std / sqrt(n)
    with the sample std (n - 1 denominator); None when n < 2 (one seed says nothing about spread)."""
    if mean is None or std is None or n < 2:
        return None
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return [mean - half, mean + half]


def ci_ranks(items: Sequence[tuple[str, list[float] | None]]) -> dict[str, dict[str, Any]]:
    """Rank by confidence interval (Chatbot Arena's "rank (UB)", lm-sys/FastChat
    fastchat/serve/monitor/monitor.py:L56-66 recompute_final_ranking): an item's rank is 1 + the number
    of items whose interval lies entirely above its own (lower bound > its upper bound: statistically
    better). Items whose ranks are equal are tied (``tied_with``); an item without an interval is not
    ranked (position None). Higher is better; ``items`` are (id, [low, high] or None)."""
    ranked = {key: ci for key, ci in items if ci is not None}
    position = {k: 1 + sum(1 for other in ranked.values() if other[0] > ci[1]) for k, ci in ranked.items()}
    out = {}
    for key, _ in items:
        pos = position.get(key)
        tied = sorted(k for k, p in position.items() if k != key and pos is not None and p == pos)
        out[key] = {"position": pos, "tied_with": tied, "out_of": len(ranked)}
    return out


def short_hash(obj: Any, length: int = 8) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _mean_of(values: Iterable[Any]) -> float | int | None:
    """Mean of the numbers among ``values``; an int when they are all the same int (parameter counts)."""
    nums = [v for v in values if _number(v) is not None]
    if not nums:
        return None
    if all(isinstance(v, int) for v in nums) and len(set(nums)) == 1:
        return nums[0]
    return statistics.fmean(float(v) for v in nums)


def _one(values: Iterable[Any]) -> Any:
    """The common value, or None when absent or they disagree."""
    seen = {json.dumps(v, sort_keys=True) for v in values if v is not None}
    return json.loads(seen.pop()) if len(seen) == 1 else None


# ----- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledSuite:
    """What the build needs of an installed suite. The CLI loads the suites (cli/leaderboard.py) and
    hands them over as a :data:`SuiteLookup`, so the leaderboard imports no benchmarks module."""

    version: str
    tasks: tuple[str, ...]
    groups: dict[str, str | None]
    # (task, method) -> the suite's protocol for them as a dict; UserError for an unknown pair
    base_protocol: Callable[[str, str], dict[str, Any]]


# A suite's name -> the installed suite; UserError or OSError when none of that name is installed.
SuiteLookup = Callable[[str], InstalledSuite]


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    version: str
    tasks: tuple[str, ...]
    groups: dict[str, str | None]
    found: bool
    note: str | None = None
    suite: InstalledSuite | None = None


def suite_info(name: str, version: str, tasks_seen: Sequence[str], suites: SuiteLookup) -> SuiteInfo:
    """The suite's task list and groups, when the installed suite of that name has the same version."""
    try:
        suite = suites(name)
    except (UserError, OSError) as err:
        note = f"suite {name!r} is not installed ({err}); tasks are ungrouped"
        return SuiteInfo(name, version, tuple(sorted(tasks_seen)), dict.fromkeys(tasks_seen), False, note)
    if str(suite.version) != str(version):
        note = (
            f"suite {name!r}: records are version {version}, the installed suite is version "
            f"{suite.version}; tasks are ungrouped"
        )
        return SuiteInfo(name, version, tuple(sorted(tasks_seen)), dict.fromkeys(tasks_seen), False, note)
    return SuiteInfo(name, version, suite.tasks, suite.groups, True, None, suite)


# ----- reproduce command --------------------------------------------------------------------------


def reproduce_command(spec: dict[str, Any], seeds: Sequence[int], info: SuiteInfo) -> str:
    """The ``bench run`` command that recreates these specs (same run ids) for these seeds."""
    base: dict[str, Any] = {}
    if info.suite is not None:
        try:
            base = info.suite.base_protocol(spec["task"], spec["method"])
        except UserError:
            base = {}
    return shlex.join(["bench", *run_argv(spec, seeds, base)])


# ----- cells --------------------------------------------------------------------------------------


@dataclass
class Cell:
    spec: dict[str, Any]  # the spec without its seed
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cell_id(self) -> str:
        return short_hash(self.spec, 12)

    @property
    def metric(self) -> str:
        return _one(_get(r, "result", "metric") for r in self.records) or "accuracy"

    def values(self, key: str) -> list[tuple[int, float]]:
        out = []
        for r in self.records:
            v = _number((r.get("metrics") or {}).get(key))
            if v is not None:
                out.append((int(r["spec"]["seed"]), v))
        return sorted(out)


def shots_variant(spec: dict[str, Any]) -> int | None:
    """The shot count a user chose for the run (``--protocol shots=K``), or None for the suite's own:
    the leaderboard keeps shot counts apart (CoOp's 1/2/4/8/16-shot tables)."""
    if (spec.get("protocol_source") or {}).get("shots") == "user":
        shots = (spec.get("protocol") or {}).get("shots")
        return int(shots) if isinstance(shots, int) else None
    return None


# Measurement options that add to a record without changing any of its numbers: records that differ
# only in them belong to one cell (their run ids differ; see one_record_per_seed).
RESULT_NEUTRAL_MEASURES = frozenset({"test_by_epoch"})


def cell_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """A record's spec in the one shape cells are described and hashed in: version 1's, where
    ``pretrained`` sits in the protocol as ``backbone_pretrained``. Records of spec version 2 (a
    ``pretrained`` field and a ``version``) of the same configuration land in the same cell as version-1
    ones, and a board built from version-1 records is byte for byte what it was."""
    measure = spec.get("measure") or {}
    if RESULT_NEUTRAL_MEASURES & set(measure):  # a measurement that changes no number is not a new cell
        spec = {**spec, "measure": {k: v for k, v in measure.items() if k not in RESULT_NEUTRAL_MEASURES}}
    if "version" not in spec:
        return spec
    out = {k: v for k, v in spec.items() if k not in ("version", "pretrained")}
    pretrained = bool(spec.get("pretrained", True))
    out["protocol"] = {**(spec.get("protocol") or {}), "backbone_pretrained": pretrained}
    return out


def one_record_per_seed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A cell counts each seed once. Two records of one seed in one cell computed the same thing (a
    version-2 re-run of a version-1 record, or a ``--test-by-epoch`` re-run, which scores test per
    epoch besides): the one carrying ``result.selection`` is kept, else the smaller run id; the
    records keep their order."""
    keep: dict[int, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (_get(r, "result", "selection") is None, r["run_id"])):
        keep.setdefault(int(r["spec"]["seed"]), r)
    kept = {id(r) for r in keep.values()}
    return [r for r in records if id(r) in kept]


def entry_key(spec: dict[str, Any]) -> tuple[str, ...]:
    pretrained = bool((spec.get("protocol") or {}).get("backbone_pretrained", True))
    key = (
        spec["suite"],
        str(spec["suite_version"]),
        spec["method"],
        short_hash(spec.get("method_config") or {}),
        spec["backbone"],
        "pretrained" if pretrained else "random-init",
    )
    shots = shots_variant(spec)
    return key if shots is None else (*key, f"shots={shots}")


def deviations_of(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The named deviations of a cell's runs from the reference protocol (their union, by id, in
    order of first appearance); empty: the reference protocol."""
    seen: dict[str, dict[str, str]] = {}
    for r in records:
        found = _get(r, "result", "deviations")
        if not isinstance(found, list):
            found = (r.get("spec") or {}).get("deviations") or []
        for d in found:
            if isinstance(d, dict) and isinstance(d.get("id"), str):
                seen.setdefault(d["id"], {"id": d["id"], "what": str(d.get("what", ""))})
    return list(seen.values())


def _selection(records: Sequence[dict[str, Any]], cell: Any, search: dict[str, Any] | None) -> tuple:
    """(score, source) the leaderboard selects cells by: a search's trial score (trained without the
    selection split), else the final runs' selection score when they did not train on that split,
    else nothing (a train800val200 final run has seen val200)."""
    if search is not None and _number(search.get("selection_score")) is not None:
        return float(search["selection_score"]), "search trials"
    protocol = (records[0].get("spec") or {}).get("protocol") or {}
    if protocol.get("train_split") == "trainval" and protocol.get("selection_split") in ("val", "train"):
        return None, "none: the final runs trained on the selection split"
    selection = [v for _, v in cell.values(f"selection_{cell.metric}")]
    return (statistics.fmean(selection), "final runs") if selection else (None, "none")


def _efficiency(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    res = [r.get("result") or {} for r in records]
    return {
        "trainable_params_method": _mean_of(_get(r, "parameters", "method") for r in res),
        "trainable_params_with_head": _mean_of(_get(r, "parameters", "with_head") for r in res),
        "head_params": _mean_of(_get(r, "parameters", "head") for r in res),
        "percent_of_backbone": _mean_of(_get(r, "parameters", "percent_of_backbone") for r in res),
        "denominator": _one(_get(r, "parameters", "denominator") for r in res),
        "backbone_params": _mean_of(_get(r, "parameters", "backbone_total") for r in res),
        "percent_of_backbone_without_token_embedding": _mean_of(
            _get(r, "parameters", "percent_of_backbone_without_token_embedding") for r in res
        ),
        "image_gmacs": _mean_of(_get(r, "cost", "image_gmacs") for r in res),
        "text_gmacs_per_prompt": _mean_of(_get(r, "cost", "text_gmacs_per_prompt") for r in res),
        "train_images_per_s": _mean_of(_get(r, "train", "images_per_second") for r in res),
        "eval_images_per_s": _mean_of(_get(r, "eval", "images_per_second") for r in res),
        "seconds_per_epoch": _mean_of(_get(r, "train", "seconds_per_epoch") for r in res),
        "train_peak_memory_mib": _mean_of(_get(r, "train", "memory", "peak_mib") for r in res),
        "memory_kind": _one(_get(r, "train", "memory", "kind") for r in res),
        "device": _one(_get(r, "train", "device") for r in res),
        "dtype": _one(_get(r, "train", "dtype") for r in res),
        # filled by a dedicated perf pass: train step time / the plain backbone's (1 = no overhead)
        "speed_ratio": _mean_of(_get(r, "perf", "step_time_ratio") for r in res),
    }


def _selection_inflation(cell: Cell) -> dict[str, Any] | None:
    """How much better the test score could have looked had the test split chosen the epoch / grid
    point: per run, ``result.selection.test_by_candidate`` (the test score of every candidate the protocol
    chose among, same metric and scale) against the test score of the candidate the protocol selected
    (``result.selection.selected_test``, by default the run's reported metric); means over the runs that
    carry it. None when no run does."""
    selected, best, candidates = [], [], []
    for r in cell.records:
        sel = _get(r, "result", "selection")
        if not isinstance(sel, dict):
            continue
        scores = [_number(v) for v in sel.get("test_by_candidate") or []]
        if not scores or None in scores:
            continue
        chosen = _number(sel.get("selected_test"))
        if chosen is None:
            chosen = _number((r.get("metrics") or {}).get(cell.metric))
        if chosen is None:
            continue
        selected.append(chosen)
        best.append(max(s for s in scores if s is not None))
        candidates.append(sel.get("candidates"))
    if not selected:
        return None
    return {
        "selected_test": statistics.fmean(selected),
        "best_test": statistics.fmean(best),
        "gap": statistics.fmean(b - s for b, s in zip(best, selected, strict=True)),
        "n": len(selected),
        "candidates": _one(candidates),
    }


def _robustness(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [_get(r, "result", "robustness", "fgsm") for r in records]
    measured = [m for m in measured if isinstance(m, dict) and m.get("eps")]
    if not measured:
        return None
    grid = measured[0]["eps"]
    same = [m for m in measured if m["eps"] == grid and len(m.get("accuracy") or []) == len(grid)]
    accuracy = [statistics.fmean(m["accuracy"][i] for m in same) for i in range(len(grid))]
    clean = [m["clean"] for m in same if _number(m.get("clean")) is not None]
    unit = measured[0].get("unit", "pixel")
    return {
        "unit": unit,
        "eps": list(grid),
        "eps_x255": [e * 255 for e in grid] if unit == "pixel" else None,
        "accuracy": accuracy,
        "clean": statistics.fmean(clean) if clean else None,
        "n": len(same),
    }


def _search(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The hyperparameter search a cell's final runs came from (``bench sweep --grid``), or None when
    they were run with fixed settings: the grid, the trials spent, the chosen point and its score."""
    found = [_get(r, "result", "search") for r in records]
    found = [f for f in found if isinstance(f, dict)]
    if not found:
        return None
    first = min(found, key=lambda f: json.dumps(f, sort_keys=True))  # one search per cell; be order-free
    return {
        "grid": first.get("grid"),
        "trials": int(first.get("trials") or 0),
        "search_seed": first.get("search_seed"),
        "chosen": first.get("chosen"),
        "selection_score": first.get("selection_score"),
        "trial_run_ids": list(first.get("trial_run_ids") or []),
    }


def _row(cell: Cell, info: SuiteInfo) -> dict[str, Any]:
    metric = cell.metric
    values = cell.values(metric)
    mean, std, n = mean_std([v for _, v in values]) if values else (None, None, 0)
    search = _search(cell.records)
    selection_mean, selection_source = _selection(cell.records, cell, search)
    seeds = sorted(int(r["spec"]["seed"]) for r in cell.records)
    spec = cell.spec
    return {
        "cell_id": cell.cell_id,
        "entry_id": short_hash(entry_key(spec), 12),
        "suite": spec["suite"],
        "suite_version": str(spec["suite_version"]),
        "method": spec["method"],
        "method_config": spec.get("method_config") or {},
        "config_id": short_hash(spec.get("method_config") or {}),
        "backbone": spec["backbone"],
        "backbone_pretrained": bool((spec.get("protocol") or {}).get("backbone_pretrained", True)),
        "task": spec["task"],
        "group": info.groups.get(spec["task"]),
        "metric": metric,
        "mean": mean,
        "std": std,
        "n": n,
        "ci95": ci95(mean, std, n),
        "rank": None,  # set among the selected rows of one comparison (_rank_rows)
        "values": [{"seed": s, "value": v} for s, v in values],
        "selection_mean": selection_mean,
        "selection_source": selection_source,
        "selected": False,
        "efficiency": _efficiency(cell.records),
        "selection_inflation": _selection_inflation(cell),
        "fgsm": _robustness(cell.records),
        "search": search,
        "shots": shots_variant(spec),
        "deviations": deviations_of(cell.records),
        "spec": spec,
        "runs": [
            {"run_id": r["run_id"], "seed": int(r["spec"]["seed"])}
            for r in sorted(cell.records, key=lambda r: (int(r["spec"]["seed"]), r["run_id"]))
        ],
        "reproduce": reproduce_command(spec, seeds, info),
    }


def deviations_of_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """An entry's deviations: the union over its chosen rows, by id."""
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        for d in row.get("deviations") or []:
            seen.setdefault(d["id"], d)
    return list(seen.values())


def _average(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Macro average over tasks of the rows' means, and its std over the seeds all rows share."""
    means = [r["mean"] for r in rows if r["mean"] is not None]
    common: set[int] | None = None
    for r in rows:
        seeds = {v["seed"] for v in r["values"]}
        common = seeds if common is None else common & seeds
    per_seed = []
    for seed in sorted(common or ()):
        per_seed.append(
            statistics.fmean(next(v["value"] for v in r["values"] if v["seed"] == seed) for r in rows)
        )
    mean = statistics.fmean(means) if means else None
    std = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    return {
        "mean": mean,
        "std": std,
        "n_seeds": len(per_seed),
        "n_tasks": len(means),
        "ci95": ci95(mean, std, len(per_seed)),
    }


NO_AVERAGE = {"mean": None, "std": None, "n_seeds": 0, "n_tasks": 0, "ci95": None}

# The one number an entry is ranked by, per suite: what the suite's own papers report.
HEADLINES = {
    "average": (
        "mean over tasks",
        "the mean over the suite's tasks of each task's mean over seeds (every task weighs the same); the "
        "headline of a suite without task groups",
    ),
    "average_of_groups": (
        "mean of group means",
        "the mean of the group averages (every group weighs the same, whatever its number of tasks), each "
        "group average the mean over its tasks; the headline of a suite with task groups, as VTAB-1k reports "
        "it (benchmarks/suites/vtab1k.yaml:L9-10: Natural / Specialized / Structured and the mean of the "
        "group means); null until every group has a result",
    ),
    "base_new_hm": (
        "HM (base, new)",
        "2 * base * new / (base + new) of the 'base' and 'new' group averages: the headline of a base-to-new "
        "suite, CoCoOp's H (Zhou et al. 2022, Table 1)",
    ),
}


def headline_key(group_names: Sequence[str]) -> str:
    """Which average is a suite's headline: HM for a suite with 'base' and 'new' groups, the mean of
    group means for any other suite with groups, else the mean over tasks."""
    if {"base", "new"} <= set(group_names):
        return "base_new_hm"
    return "average_of_groups" if group_names else "average"


def combine(key: str, by_task: dict[str, float], groups: dict[str, str | None], names: Sequence[str]) -> Any:
    """One average (a ``HEADLINES`` key) of per-task values; None when the groups it needs are empty.
    The same function gives an entry's value and its per-seed values (for its std and CI)."""
    if not by_task:
        return None
    if key == "average":
        return statistics.fmean(by_task.values())
    needed = ["base", "new"] if key == "base_new_hm" else list(names)
    means = {}
    for g in needed:
        values = [v for t, v in by_task.items() if groups.get(t) == g]
        if not values:
            return None
        means[g] = statistics.fmean(values)
    if key == "average_of_groups":
        return statistics.fmean(means.values()) if means else None
    base, new = means["base"], means["new"]
    return 2 * base * new / (base + new) if base + new > 0 else None


def _headline(key: str, picked: Sequence[dict[str, Any]], info: SuiteInfo, names: Sequence[str]) -> dict:
    """The headline average of an entry, with its std over the per-seed headlines of the seeds every
    chosen cell has, and its 95% CI (headline -/+ t * std / sqrt(n_seeds))."""
    mean = combine(key, {r["task"]: r["mean"] for r in picked}, info.groups, names)
    common: set[int] | None = None
    for r in picked:
        seeds = {v["seed"] for v in r["values"]}
        common = seeds if common is None else common & seeds
    per_seed = []
    for seed in sorted(common or ()) if mean is not None else ():
        by_task = {r["task"]: next(v["value"] for v in r["values"] if v["seed"] == seed) for r in picked}
        value = combine(key, by_task, info.groups, names)
        if value is not None:
            per_seed.append(value)
    std = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    return {
        "key": key,
        "name": HEADLINES[key][0],
        "mean": mean,
        "std": std,
        "n_seeds": len(per_seed),
        "ci95": ci95(mean, std, len(per_seed)),
    }


def group_names_of(info: SuiteInfo) -> list[str]:
    """The suite's groups in the order of their first task."""
    names: list[str] = []
    for t in info.tasks:
        g = info.groups.get(t)
        if g is not None and g not in names:
            names.append(g)
    return names


def _headline_of_suite(info: SuiteInfo) -> dict[str, str]:
    key = headline_key(group_names_of(info))
    return {"key": key, "name": HEADLINES[key][0], "what": HEADLINES[key][1]}


def _entries(rows: list[dict[str, Any]], infos: dict[tuple[str, str], SuiteInfo]) -> list[dict[str, Any]]:
    by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_entry[row["entry_id"]].append(row)
    entries = []
    for entry_id, items in sorted(by_entry.items()):
        first = items[0]
        info = infos[(first["suite"], first["suite_version"])]
        chosen: dict[str, dict[str, Any]] = {}
        for task in sorted({r["task"] for r in items}):
            candidates = [r for r in items if r["task"] == task and r["mean"] is not None]
            if not candidates:
                continue
            best = sorted(
                candidates,
                key=lambda r: (
                    -(r["selection_mean"] if r["selection_mean"] is not None else float("-inf")),
                    -r["n"],
                    r["cell_id"],
                ),
            )[0]
            best["selected"] = True
            chosen[task] = best
        order = [t for t in info.tasks if t in chosen] + sorted(t for t in chosen if t not in info.tasks)
        picked = [chosen[t] for t in order]
        groups = []
        group_names = group_names_of(info)
        for g in group_names:
            members = [t for t in info.tasks if info.groups.get(t) == g]
            present = [chosen[t] for t in members if t in chosen]
            avg = _average(present) if present else NO_AVERAGE
            groups.append({"group": g, "tasks": members, "complete": len(present) == len(members), **avg})
        by_task = {r["task"]: r["mean"] for r in picked}
        of_groups = combine("average_of_groups", by_task, info.groups, group_names) if group_names else None
        has_hm = {"base", "new"} <= set(group_names)
        hm = combine("base_new_hm", by_task, info.groups, group_names) if has_hm else None
        effs = [r["efficiency"] for r in picked]
        fgsm = [r["fgsm"] for r in picked if r["fgsm"]]
        grid = fgsm[0]["eps"] if fgsm else []
        same = [f for f in fgsm if f["eps"] == grid]
        entries.append(
            {
                "entry_id": entry_id,
                "suite": first["suite"],
                "suite_version": first["suite_version"],
                "method": first["method"],
                "method_config": first["method_config"],
                "config_id": first["config_id"],
                "backbone": first["backbone"],
                "backbone_pretrained": first["backbone_pretrained"],
                "label": first["method"]
                + ("" if first.get("shots") is None else f" ({first['shots']}-shot)"),
                "shots": first.get("shots"),
                "deviations": deviations_of_rows(picked),
                "tasks": order,
                "missing_tasks": [t for t in info.tasks if t not in chosen],
                "complete": all(t in chosen for t in info.tasks),
                "average": _average(picked) if picked else NO_AVERAGE,
                "headline": _headline(headline_key(group_names), picked, info, group_names),
                "rank": None,  # set among the entries of one comparison (_rank_entries)
                "groups": groups,
                "base_new_hm": hm,
                "average_of_groups": of_groups,
                "cells": [chosen[t]["cell_id"] for t in order],
                # Search budget behind the entry: trials of the chosen cells' searches, plus one per
                # extra cell of a task (a setting run and compared on the selection split).
                "search_trials": sum((r["search"] or {}).get("trials", 0) for r in picked)
                + sum(len([r for r in items if r["task"] == t]) - 1 for t in order),
                "efficiency": {
                    "trainable_params_method": _mean_of(e["trainable_params_method"] for e in effs),
                    "trainable_params_with_head": _mean_of(e["trainable_params_with_head"] for e in effs),
                    "percent_of_backbone": _mean_of(e["percent_of_backbone"] for e in effs),
                    "denominator": _one(e["denominator"] for e in effs),
                    "image_gmacs": _mean_of(e["image_gmacs"] for e in effs),
                    "train_images_per_s": _mean_of(e["train_images_per_s"] for e in effs),
                    "train_peak_memory_mib": _mean_of(e["train_peak_memory_mib"] for e in effs),
                    "speed_ratio": _mean_of(e["speed_ratio"] for e in effs),
                },
                "selection_inflation": _inflation_of(picked),
                "fgsm": None
                if not same
                else {
                    "unit": same[0].get("unit", "pixel"),
                    "eps": grid,
                    "eps_x255": [e * 255 for e in grid] if same[0].get("unit", "pixel") == "pixel" else None,
                    "accuracy": [statistics.fmean(f["accuracy"][i] for f in same) for i in range(len(grid))],
                    "n_tasks": len(same),
                },
            }
        )
    # A method with several configs in one (suite, backbone) is labelled method#config_id.
    counts: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for e in entries:
        counts[(e["suite"], e["backbone"], e["method"])].add(e["config_id"] + str(e["backbone_pretrained"]))
    for e in entries:
        if len(counts[(e["suite"], e["backbone"], e["method"])]) > 1:
            e["label"] = f"{e['method']}#{e['config_id']}" + ("" if e["backbone_pretrained"] else " (random)")
    entries.sort(key=lambda e: (e["suite"], e["suite_version"], e["backbone"], e["label"], e["entry_id"]))
    return entries


def _inflation_of(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """An entry's selection inflation: the mean gap over its chosen cells that carry one."""
    gaps = [r["selection_inflation"]["gap"] for r in rows if r["selection_inflation"]]
    return {"gap": statistics.fmean(gaps), "n_tasks": len(gaps)} if gaps else None


def comparison_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """What an entry is ranked against: the entries of the same suite (and version), backbone (pretrained
    or random init) and shot count. A row also needs the same task and metric."""
    key = (item["suite"], item["suite_version"], item["backbone"], item["backbone_pretrained"], item["shots"])
    return (*key, item["task"], item["metric"]) if "task" in item else key


def _rank(items: Sequence[dict[str, Any]], ci: Any, ident: str) -> None:
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_key[comparison_key(item)].append(item)
    for members in by_key.values():
        ranks = ci_ranks([(m[ident], ci(m)) for m in members])
        for m in members:
            m["rank"] = ranks[m[ident]]


def _rank_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Rank each task's selected cells by their CI (not-selected cells are alternatives of an entry,
    not competitors: their rank stays None)."""
    _rank([r for r in rows if r["selected"]], lambda r: r["ci95"], "cell_id")


def _rank_entries(entries: Sequence[dict[str, Any]]) -> None:
    """Rank entries by their headline's CI; an entry missing a task is not ranked."""
    _rank(entries, lambda e: e["headline"]["ci95"] if e["complete"] else None, "entry_id")


# ----- reported -----------------------------------------------------------------------------------


def load_reported(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The papers' reported numbers (``reported.yaml``), sorted by (method, setting)."""
    path = Path(path) if path is not None else REPORTED_PATH
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = data.get("reported", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a mapping with a 'reported' list")
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("method") or not item.get("source"):
            raise UserError(f"{path}: reported[{i}] needs at least 'method' and 'source'")
        rows.append({"kind": "reported", **item})
    return sorted(
        rows, key=lambda r: (str(r["method"]), str(r.get("setting", "")), str(r.get("backbone", "")))
    )


# ----- build --------------------------------------------------------------------------------------


PERF_FORMAT = "petlbench.perf/1"


def perf_key(method: str, method_config: dict[str, Any], backbone: str) -> tuple[str, str, str]:
    return (method, short_hash(method_config or {}), backbone)


def load_perf(folder: str | Path) -> list[dict[str, Any]]:
    """The perf lines of ``folder/*.jsonl`` (written by ``bench perf --for-records``); a line that is not
    one is refused in one line naming ``file:line``. A missing folder holds none."""
    folder = Path(folder)
    lines: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(line, dict) or line.get("format") != PERF_FORMAT:
                raise UserError(f"{path}:{number}: not a perf line ({PERF_FORMAT})")
            ratio = line.get("x_plain")
            named = isinstance(line.get("method"), str) and isinstance(line.get("backbone"), str)
            number_ok = isinstance(ratio, int | float) and not isinstance(ratio, bool) and ratio > 0
            if not named or not (ratio is None or number_ok):
                raise UserError(f"{path}:{number}: a perf line needs method, backbone, x_plain > 0 (or null)")
            lines.append(line)
    return lines


def _apply_perf(rows: list[dict[str, Any]], perf: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Fill each row's speed ratio from the perf lines of its (method, options, backbone); what the
    perf pass ran on, for ``inputs.perf``."""
    if not perf:
        return None
    by_key = {perf_key(p["method"], p.get("method_config") or {}, p["backbone"]): p for p in perf}
    for row in rows:
        line = by_key.get(perf_key(row["method"], row["method_config"], row["backbone"]))
        if line is not None and row["efficiency"]["speed_ratio"] is None:
            row["efficiency"]["speed_ratio"] = line.get("x_plain")
    return {
        "cells": len(by_key),
        "hardware": sorted({str(p.get("hardware")) for p in perf}),
        "plain": "frozen backbone + trainable linear head, interleaved step by step with the method's",
    }


def build_leaderboard(
    records: Iterable[dict[str, Any]],
    reported: Sequence[dict[str, Any]] | None = None,
    perf: Sequence[dict[str, Any]] = (),
    *,
    suites: SuiteLookup,
) -> dict[str, Any]:
    """The leaderboard document for ``records`` (``RunRecord.to_dict()`` dicts); ``perf`` lines (a
    dedicated perf pass, :func:`load_perf`) fill the speed ratio of the cells they measured; ``suites``
    gives the installed suites' task lists, groups and protocols."""
    records = list(records)
    used = [
        r
        for r in records
        if r.get("status", "finished") == "finished" and r["spec"].get("stage", "final") == "final"
    ]
    cells: dict[str, Cell] = {}
    for r in used:
        spec = {k: v for k, v in cell_shape(r["spec"]).items() if k != "seed"}
        spec.setdefault("stage", "final")
        spec.setdefault("measure", {})
        cell = Cell(spec)
        cells.setdefault(cell.cell_id, cell).records.append(r)
    for cell in cells.values():
        cell.records = one_record_per_seed(cell.records)
    superseded = len(used) - sum(len(cell.records) for cell in cells.values())
    tasks_by_suite: dict[tuple[str, str], set[str]] = defaultdict(set)
    for cell in cells.values():
        tasks_by_suite[(cell.spec["suite"], str(cell.spec["suite_version"]))].add(cell.spec["task"])
    infos = {
        key: suite_info(key[0], key[1], sorted(tasks), suites)
        for key, tasks in sorted(tasks_by_suite.items())
    }
    rows = [_row(c, infos[(c.spec["suite"], str(c.spec["suite_version"]))]) for c in cells.values()]
    perf_info = _apply_perf(rows, perf)
    entries = _entries(rows, infos)
    _rank_rows(rows)
    _rank_entries(entries)
    labels = {e["entry_id"]: e["label"] for e in entries}
    for row in rows:
        row["label"] = labels[row["entry_id"]]
    order = {key: {t: i for i, t in enumerate(info.tasks)} for key, info in infos.items()}
    rows.sort(
        key=lambda r: (
            r["suite"],
            r["suite_version"],
            order[(r["suite"], r["suite_version"])].get(r["task"], 10**6),
            r["task"],
            r["backbone"],
            r["label"],
            r["cell_id"],
        )
    )
    suite_rows = [
        {
            "suite": info.name,
            "suite_version": info.version,
            "tasks": list(info.tasks),
            "groups": {t: g for t, g in info.groups.items() if t in info.tasks},
            "installed": info.found,
            "headline": _headline_of_suite(info),
        }
        for info in infos.values()
    ]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "generator": "petlbench.leaderboard.build",
        "conventions": CONVENTIONS,
        "inputs": {
            "records": len(records),
            "used": len(used) - superseded,
            "skipped_not_final_or_unfinished": len(records) - len(used),
            # a second record of a seed a cell already counts (see one_record_per_seed)
            **({"superseded_same_seed": superseded} if superseded else {}),
            "records_sha256": hashlib.sha256(
                "".join(sorted(r["run_id"] for r in records)).encode()
            ).hexdigest(),
            **({"perf": perf_info} if perf_info is not None else {}),
        },
        "notes": sorted(info.note for info in infos.values() if info.note),
        "suites": suite_rows,
        "entries": entries,
        "rows": rows,
        "reported": list(reported or []),
    }
    return rnd(doc)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(doc: dict[str, Any]) -> None:
    """Raise ``UserError`` naming the first few schema violations of ``doc``."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        raise UserError("validating the leaderboard needs jsonschema: pip install jsonschema") from None
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5]]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise UserError("leaderboard.json does not match leaderboard/schema.json: " + "; ".join(lines) + more)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n"


OUTPUTS = ("leaderboard.json", "leaderboard.md", "leaderboard.csv", "index.html", "pareto.svg", "pareto.png")


def render_all(doc: dict[str, Any]) -> dict[str, bytes]:
    """Every output file's name and bytes."""
    from .render import render_csv, render_html, render_markdown, render_pareto

    plots = render_pareto(doc)
    return {
        "leaderboard.json": dumps(doc).encode(),
        "leaderboard.md": render_markdown(doc).encode(),
        "leaderboard.csv": render_csv(doc).encode(),
        "index.html": render_html(doc, plots["pareto.svg"]).encode(),
        **plots,
    }


def build(
    records_dir: str | Path,
    out_dir: str | Path,
    reported_path: str | Path | None = None,
    *,
    suites: SuiteLookup,
) -> dict[str, Any]:
    """Build and validate the leaderboard from ``records_dir`` and write every output into ``out_dir``.
    The records are checked first (``records.load_records``): a bad line, a missing folder or one with no
    records is refused in one line, before anything is written."""
    from .records import load_records

    perf = load_perf(Path(records_dir).parent / "perf")
    doc = build_leaderboard(load_records(records_dir), load_reported(reported_path), perf, suites=suites)
    validate(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in render_all(doc).items():
        (out / name).write_bytes(data)
    return doc


def read_leaderboard(path: str | Path) -> dict[str, Any]:
    """A built leaderboard.json, refused in one line unless it is UTF-8 JSON that matches the schema."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no leaderboard there; build one with `bench leaderboard build`")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text (byte {err.start + 1} is 0x{err.object[err.start]:02x})"
        ) from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    validate(doc)
    return doc


def plot(leaderboard: str | Path, out: str | Path, x: str = "params", y: str = "accuracy") -> Path:
    """Plot a built leaderboard's entries by two columns (``render.PLOT_COLUMNS``) into ``out``, an .svg
    or .png file (the suffix chooses)."""
    from .render import render_plot

    out = Path(out)
    kind = out.suffix.lower().lstrip(".")
    if kind not in ("svg", "png"):
        given = repr(out.suffix) if out.suffix else "a name without a suffix"
        raise UserError(f"--out {out}: the plot is written as .svg or .png, not {given}")
    files = render_plot(read_leaderboard(leaderboard), x, y)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(files[kind])
    return out


def check(
    records_dir: str | Path,
    committed_dir: str | Path,
    reported_path: str | Path | None = None,
    *,
    suites: SuiteLookup,
) -> list[str]:
    """Rebuild from the records and compare with the committed files. Returns the names that differ or
    are missing (empty: up to date). Schema errors (of the rebuilt or the committed JSON) raise."""
    import tempfile

    committed = Path(committed_dir)
    with tempfile.TemporaryDirectory(prefix="petlbench-leaderboard-") as tmp:
        build(records_dir, tmp, reported_path, suites=suites)
        differ = []
        for name in OUTPUTS:
            fresh = (Path(tmp) / name).read_bytes()
            path = committed / name
            if not path.exists():
                differ.append(f"{name} (missing)")
            elif path.read_bytes() != fresh:
                differ.append(name)
    json_path = committed / "leaderboard.json"
    if json_path.exists():
        read_leaderboard(json_path)
    return differ
