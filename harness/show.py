"""What ``bench show RUN`` prints: a stored run read at a glance.

The raw record is hundreds of lines of JSON (``bench show RUN --json`` prints it); a researcher first
wants the score, what it cost, how it was trained and where it departs from the reference. These are
pure functions of the record's dictionary, so they are tested without a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, scaled between the series' min and max (a flat series is all
    middle bars); missing or non-finite values are a space."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    chars = []
    for v in values:
        if v is None or not math.isfinite(v):
            chars.append(" ")
        elif hi == lo:
            chars.append(SPARK[len(SPARK) // 2])
        else:
            chars.append(SPARK[round((v - lo) / (hi - lo) * (len(SPARK) - 1))])
    return "".join(chars)


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def grid_point(spec: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """What sets a run apart within its cell: the protocol values a search chose (layer ``search``)
    and the method options that differ from the method's defaults (``defaults``; all options
    when not given are left out)."""
    sources = spec.get("protocol_source") or {}
    protocol = spec.get("protocol") or {}
    point = {k: protocol[k] for k in sorted(protocol) if sources.get(k) == "search"}
    if defaults is not None:
        for key, value in sorted((spec.get("method_config") or {}).items()):
            if key in defaults and defaults[key] != value:
                point[key] = value
    return point


def format_point(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or "-"


def _selection_inflation_lines(selection: dict[str, Any]) -> list[str]:
    """The test score per candidate (``--test-by-epoch``): what the protocol's selection got against
    what picking the best test score would have claimed (the leaderboard's selection-inflation cell)."""
    scores = [v for v in selection.get("test_by_candidate") or [] if isinstance(v, int | float)]
    chosen = selection.get("selected_test")
    if not scores or not isinstance(chosen, int | float):
        return []
    best = max(scores)
    at = scores.index(best)
    return [
        f"test by epoch:      {sparkline(scores)}  {_num(scores[0])} -> {_num(scores[-1])}",
        f"  selected {_num(chosen)}; best over {len(scores)} {selection.get('candidates', 'candidates')} "
        f"{_num(best)} (#{at + 1}): a test-selected number would claim {best - chosen:+.2f} "
        "(test is never read by training or selection)",
    ]


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The summary of one run: identity, metrics, parameters, cost, speed, protocol (with the layer
    each value came from), deviations, training history as sparklines, robustness, error."""
    spec = record.get("spec") or {}
    result = record.get("result") or {}
    metrics = record.get("metrics") or {}
    lines = [
        f"run {record.get('run_id')}  [{record.get('status')}]  "
        f"{spec.get('method')} on {spec.get('backbone')}",
        f"  suite {spec.get('suite')} v{spec.get('suite_version')}  task {spec.get('task')}  "
        f"seed {spec.get('seed')}  stage {spec.get('stage', 'final')}",
    ]
    if record.get("wall_time_s") is not None:
        lines[-1] += f"  wall {record['wall_time_s']:.1f} s"
    if record.get("error"):
        lines.append(f"error: {str(record['error']).strip().splitlines()[-1]}")
    if metrics:
        primary = result.get("metric", "accuracy")
        ordered = [primary] + sorted(k for k in metrics if k != primary)
        lines.append("metrics: " + ", ".join(f"{k} {_num(metrics[k])}" for k in ordered if k in metrics))
    params = result.get("parameters") or {}
    if params:
        percent = params.get("percent_of_backbone")
        share = "" if percent is None else f" ({percent:.3f}% of {params.get('denominator', 'the backbone')})"
        lines.append(
            f"parameters: method {_num(params.get('method'))}, head {_num(params.get('head'))}, "
            f"with head {_num(params.get('with_head'))}{share}"
        )
    cost = result.get("cost") or {}
    if cost:
        unit = cost.get("unit", "GMACs")
        parts = [f"image {_num(cost.get('image_gmacs'), 4)} {unit} at {cost.get('image_size')} px"]
        if cost.get("text_gmacs_per_prompt") is not None:
            parts.append(
                f"text {_num(cost['text_gmacs_per_prompt'], 4)} per prompt x {cost.get('text_prompts')} "
                f"({cost.get('text_runs', '')})"
            )
        lines.append("cost: " + "; ".join(parts))
    train, evaluation = result.get("train") or {}, result.get("eval") or {}
    speed = []
    if train.get("images_per_second") is not None:
        speed.append(f"train {_num(train['images_per_second'], 1)} img/s over {train.get('epochs')} epochs")
    if evaluation.get("images_per_second") is not None:
        speed.append(f"eval {_num(evaluation['images_per_second'], 1)} img/s")
    memory = train.get("memory") or evaluation.get("memory") or {}
    if memory.get("peak_mib") is not None:
        speed.append(f"{memory.get('kind', 'peak memory')} {memory['peak_mib']:.0f} MiB")
    if speed:
        lines.append("speed (this run, this machine): " + "; ".join(speed))
    protocol = spec.get("protocol") or {}
    if protocol:
        sources = spec.get("protocol_source") or {}
        shown = [
            f"{k}={protocol[k]}" + (f"[{sources[k]}]" if sources.get(k) not in (None, "suite") else "")
            for k in sorted(protocol)
        ]
        lines.append("protocol: " + " ".join(shown) + "   ([layer] where not the suite's)")
    if spec.get("method_config"):
        lines.append("method options: " + format_point(dict(sorted(spec["method_config"].items()))))
    search = result.get("search") or {}
    if search:
        lines.append(
            f"search: chose {format_point(search.get('chosen') or {})} from {search.get('trials')} trials "
            f"(selection score {_num(search.get('selection_score'))})"
        )
    deviations = list(result.get("deviations") or spec.get("deviations") or [])
    lines.append("deviations: " + ("none" if not deviations else ""))
    for dev in deviations:
        lines.append(f"  - {dev.get('id')}: {dev.get('what', '')}")
    history = result.get("history") or []
    if history:
        selection = [h.get("selection_accuracy", h.get("selection_score")) for h in history]
        loss = [h.get("loss") for h in history]
        sel = [v for v in selection if v is not None]
        if sel:
            lines.append(f"selection by epoch: {sparkline(selection)}  {_num(sel[0])} -> {_num(sel[-1])}")
        finite = [v for v in loss if v is not None]
        if finite:
            ends = f"{_num(finite[0], 4)} -> {_num(finite[-1], 4)}"
            lines.append(f"loss by epoch:      {sparkline(loss)}  {ends}")
    lines += _selection_inflation_lines(result.get("selection") or {})
    fgsm = (result.get("robustness") or {}).get("fgsm") or {}
    if fgsm.get("eps"):
        pairs = ", ".join(
            f"{e * 255:.0f}/255 {_num(a)}" if fgsm.get("unit", "pixel") == "pixel" else f"{e:g} {_num(a)}"
            for e, a in zip(fgsm["eps"], fgsm.get("accuracy", []), strict=False)
        )
        lines.append(f"FGSM ({fgsm.get('examples')} examples): clean {_num(fgsm.get('clean'))}; {pairs}")
    if (result.get("method") or {}).get("warning"):
        lines.append(f"warning: {result['method']['warning']}")
    return lines
