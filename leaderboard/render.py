"""Views of the leaderboard document: Markdown, a static sortable HTML page, a Pareto plot.

Every renderer is a pure function of the document, so a rebuild from the same records gives the same
bytes (the plots: Agg backend, fixed SVG hash salt, no dates or software names in the metadata, text
kept as text in the SVG, point labels placed by adjustText in a fixed number of iterations).
"""

from __future__ import annotations

import csv
import html
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# ----- formatting ---------------------------------------------------------------------------------


def fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def fmt_params(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def fmt_mean(mean: Any, std: Any, n: Any = None) -> str:
    if mean is None:
        return "-"
    text = f"{mean:.2f}"
    if std is not None:
        text += f" ± {std:.2f}"
    if n is not None:
        text += f" (n={n})"
    return text


def fmt_gmacs(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def fmt_fgsm(fgsm: Any) -> str:
    """Robust accuracy at the largest epsilon, e.g. '12.30 @8/255'."""
    if not fgsm or not fgsm.get("accuracy"):
        return "-"
    if fgsm.get("unit", "pixel") != "pixel" or not fgsm.get("eps_x255"):
        return f"{fgsm['accuracy'][-1]:.2f} @{fgsm['eps'][-1]:.3g} ({fgsm.get('unit', 'pixel')})"
    eps255 = fgsm["eps_x255"][-1]
    eps = f"{eps255:g}/255" if abs(eps255 - round(eps255)) < 1e-3 else f"{fgsm['eps'][-1]:g}"
    return f"{fgsm['accuracy'][-1]:.2f} @{eps}"


def fmt_deviations(deviations: Any) -> str:
    """'reference protocol' when a row has no named deviation, else their ids."""
    return ", ".join(d["id"] for d in deviations or []) or "reference protocol"


def _group_names(doc: dict[str, Any], suite: str, version: str) -> list[str]:
    for s in doc["suites"]:
        if s["suite"] == suite and s["suite_version"] == version:
            names: list[str] = []
            for task in s["tasks"]:
                g = s["groups"].get(task)
                if g is not None and g not in names:
                    names.append(g)
            return names
    return []


def _suites(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["suite"], s["suite_version"]) for s in doc["suites"]]


# ----- tables (shared by Markdown and HTML) -------------------------------------------------------

# Which way each numeric column is better, declared once: the views highlight the best value per column.
HIGHER, LOWER = "higher", "lower"
BETTER = {
    "accuracy": HIGHER,  # a task's mean, a group's, any average
    "params": LOWER,
    "+ head": LOWER,
    "%": LOWER,
    "GMACs": LOWER,
    "train img/s": HIGHER,
    "speed ratio": LOWER,
    "peak MiB": LOWER,
    "FGSM acc": HIGHER,
}


@dataclass
class Table:
    """A view's cells as text, with the numbers behind them: ``best`` marks, per column that declares a
    direction (``BETTER``), the cells holding the best value among the eligible rows of one ``scope``."""

    header: list[str]
    better: list[str | None]  # per column: a BETTER kind or None (not compared)
    rows: list[list[str]] = field(default_factory=list)
    values: list[list[float | None]] = field(default_factory=list)
    scopes: list[Any] = field(default_factory=list)  # rows compete only within one scope
    eligible: list[bool] = field(default_factory=list)

    def add(self, cells: Sequence[tuple[str, Any]], scope: Any = None, eligible: bool = True) -> None:
        self.rows.append([text for text, _ in cells])
        self.values.append([None if v is None or isinstance(v, bool) else float(v) for _, v in cells])
        self.scopes.append(scope)
        self.eligible.append(eligible)

    def best(self) -> set[tuple[int, int]]:
        """(row, column) of every best cell: the maximum (or minimum) of the column over the eligible
        rows of the row's scope; equal values are all best; a column with one value has no best."""
        out: set[tuple[int, int]] = set()
        for col, kind in enumerate(self.better):
            direction = BETTER.get(kind or "")
            if direction is None:
                continue
            sign = 1.0 if direction == HIGHER else -1.0
            by_scope: dict[Any, dict[int, float]] = defaultdict(dict)
            for i, ok in enumerate(self.eligible):
                value = self.values[i][col]
                if ok and value is not None:
                    by_scope[self.scopes[i]][i] = sign * value
            for members in by_scope.values():
                if len(members) < 2:
                    continue
                top = max(members.values())
                out |= {(i, col) for i, v in members.items() if v == top}
        return out


def fmt_rank(rank: Any) -> str:
    """'3', '=2' when tied with another row, '-' when not ranked."""
    if not rank or rank.get("position") is None:
        return "-"
    return ("=" if rank["tied_with"] else "") + str(rank["position"])


def fmt_ci(ci: Any) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def fmt_headline(item: dict[str, Any]) -> str:
    """'74.24 ± 0.97 [71.83, 76.65] (n=3)': mean ± std over seeds, 95% CI, seeds."""
    text = fmt_mean(item["mean"], item["std"])
    if item["mean"] is not None and item.get("ci95"):
        text += " " + fmt_ci(item["ci95"])
    if item["mean"] is not None and item.get("n_seeds"):
        text += f" (n={item['n_seeds']})"
    return text


def fmt_inflation(value: Any) -> str:
    return "-" if not value else f"{value['gap']:.2f}"


def _fgsm_value(fgsm: Any) -> float | None:
    return fgsm["accuracy"][-1] if fgsm and fgsm.get("accuracy") else None


def suite_headline(doc: dict[str, Any], suite: str, version: str) -> dict[str, str]:
    for s in doc["suites"]:
        if (s["suite"], s["suite_version"]) == (suite, version):
            return s["headline"]
    raise KeyError((suite, version))


def other_averages(doc: dict[str, Any], suite: str, version: str) -> list[tuple[str, str]]:
    """The entry averages that are not the suite's headline, (key, column name), in a fixed order."""
    groups = _group_names(doc, suite, version)
    keys = ["average"] + (["average_of_groups"] if groups else [])
    keys += ["base_new_hm"] if {"base", "new"} <= set(groups) else []
    names = {
        "average": "mean over tasks",
        "average_of_groups": "mean of groups",
        "base_new_hm": "HM (base, new)",
    }
    head = suite_headline(doc, suite, version)["key"]
    return [(k, names[k]) for k in keys if k != head]


def average_table(doc: dict[str, Any], suite: str, version: str) -> Table:
    """One line per entry: its rank and headline first, then the group averages, the other averages,
    efficiency, robustness and protocol."""
    groups = _group_names(doc, suite, version)
    headline = suite_headline(doc, suite, version)
    others = other_averages(doc, suite, version)
    columns: list[tuple[str, str | None]] = [
        ("rank", None),
        ("method", None),
        ("backbone", None),
        (f"{headline['name']} ± std [95% CI] (seeds)", "accuracy"),
        *((g, "accuracy") for g in groups),
        *((name, "accuracy") for _, name in others),
        ("tasks", None),
        ("search trials", None),
        ("params", "params"),
        ("+ head", "+ head"),
        ("% (denominator)", "%"),
        ("GMACs", "GMACs"),
        ("train img/s", "train img/s"),
        ("speed ratio", "speed ratio"),
        ("peak MiB", "peak MiB"),
        ("FGSM acc", "FGSM acc"),
        ("selection inflation", None),
        ("protocol", None),
    ]
    table = Table([c for c, _ in columns], [b for _, b in columns])
    for e in doc["entries"]:
        if (e["suite"], e["suite_version"]) != (suite, version):
            continue
        by_group = {g["group"]: g for g in e["groups"]}
        head = e["headline"]
        cells: list[tuple[str, Any]] = [
            (fmt_rank(e["rank"]), None),
            (e["label"], None),
            (e["backbone"] + ("" if e["backbone_pretrained"] else " (random init)"), None),
            (fmt_headline(head), head["mean"]),
        ]
        for g in groups:
            item = by_group.get(g)
            text = fmt_mean(item["mean"], None) if item else "-"
            if item and item["n_tasks"] and not item["complete"]:
                text += f" (partial: {item['n_tasks']}/{len(item['tasks'])})"
            cells.append((text, item["mean"] if item else None))
        for key, _ in others:
            value = e["average"]["mean"] if key == "average" else e[key]
            text = fmt_mean(value, e["average"]["std"]) if key == "average" else fmt_num(value)
            cells.append((text, value))
        eff = e["efficiency"]
        missing = "" if e["complete"] else f" (missing {len(e['missing_tasks'])})"
        cells += [
            (str(e["average"]["n_tasks"]) + missing, None),
            (str(e["search_trials"]), None),
            *_efficiency_cells(eff, f" ({eff['denominator'] or '?'})"),
            (fmt_fgsm(e["fgsm"]), _fgsm_value(e["fgsm"])),
            (fmt_inflation(e.get("selection_inflation")), None),
            (fmt_deviations(e.get("deviations")), None),
        ]
        table.add(cells)
    return table


def _efficiency_cells(eff: dict[str, Any], percent_note: str = "") -> list[tuple[str, Any]]:
    """The cost columns a row shows (params, + head, %, GMACs, train img/s, speed ratio, peak MiB)."""
    pct = eff["percent_of_backbone"]
    return [
        (fmt_params(eff["trainable_params_method"]), eff["trainable_params_method"]),
        (fmt_params(eff["trainable_params_with_head"]), eff["trainable_params_with_head"]),
        ("-" if pct is None else f"{pct:.4g}%{percent_note}", pct),
        (fmt_gmacs(eff["image_gmacs"]), eff["image_gmacs"]),
        (fmt_num(eff["train_images_per_s"], 1), eff["train_images_per_s"]),
        (fmt_num(eff.get("speed_ratio")), eff.get("speed_ratio")),
        (fmt_num(eff["train_peak_memory_mib"], 0), eff["train_peak_memory_mib"]),
    ]


TASK_COLUMNS: list[tuple[str, str | None]] = [
    ("task", None),
    ("group", None),
    ("rank", None),
    ("method", None),
    ("backbone", None),
    ("metric", None),
    ("mean ± std", "accuracy"),
    ("95% CI", None),
    ("n", None),
    ("search trials", None),
    ("params", "params"),
    ("+ head", "+ head"),
    ("%", "%"),
    ("GMACs", "GMACs"),
    ("train img/s", "train img/s"),
    ("speed ratio", "speed ratio"),
    ("peak MiB", "peak MiB"),
    ("device / dtype", None),
    ("FGSM acc", "FGSM acc"),
    ("selection inflation", None),
    ("protocol", None),
    ("runs", None),
]
TASK_HEADER = [name for name, _ in TASK_COLUMNS]


def task_table(doc: dict[str, Any], suite: str, version: str) -> Table:
    """One line per cell; the best value per column is found among the selected cells of each task."""
    table = Table(list(TASK_HEADER), [b for _, b in TASK_COLUMNS])
    for r in doc["rows"]:
        if (r["suite"], r["suite_version"]) != (suite, version):
            continue
        eff = r["efficiency"]
        label = r["label"] + ("" if r["selected"] else " (not selected)")
        device = " / ".join(x for x in (eff["device"], eff["dtype"]) if x) or "-"
        cells: list[tuple[str, Any]] = [
            (r["task"], None),
            (r["group"] or "-", None),
            (fmt_rank(r["rank"]), None),
            (label, None),
            (r["backbone"], None),
            (r["metric"], None),
            (fmt_mean(r["mean"], r["std"]), r["mean"]),
            (fmt_ci(r["ci95"]), None),
            (str(r["n"]), None),
            ("-" if r["search"] is None else str(r["search"]["trials"]), None),
            *_efficiency_cells(eff),
            (device, None),
            (fmt_fgsm(r["fgsm"]), _fgsm_value(r["fgsm"])),
            (fmt_inflation(r.get("selection_inflation")), None),
            (fmt_deviations(r.get("deviations")), None),
            (" ".join(run["run_id"][:8] for run in r["runs"]), None),
        ]
        table.add(cells, scope=(r["task"], r["metric"]), eligible=r["selected"])
    return table


REPORTED_HEADER = [
    "method",
    "setting",
    "backbone",
    "params",
    "%",
    "GMACs",
    "accuracy",
    "source",
    "status",
    "note",
]


def reported_table(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in doc["reported"]:
        pct = r.get("percent")
        denominator = r.get("denominator")
        rows.append(
            [
                r["method"],
                r.get("setting") or "-",
                r.get("backbone") or "-",
                fmt_params(r.get("trainable_params")),
                "-" if pct is None else f"{pct:g}%" + (f" of {denominator}" if denominator else ""),
                fmt_gmacs(r.get("gmacs")),
                fmt_num(r.get("accuracy")),
                r["source"],
                r.get("status") or "-",
                r.get("note") or "",
            ]
        )
    return rows


# ----- Markdown -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], best: set[tuple[int, int]] | None = None
) -> list[str]:
    """A Markdown table; the ``best`` cells in bold."""
    best = best or set()
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in best else _md_cell(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_view(table: Table) -> list[str]:
    return _md_table(table.header, table.rows, table.best())


def averages_notes(doc: dict[str, Any], suite: str, version: str) -> list[str]:
    """What the averages table's numbers are, in sentences shared by the Markdown and HTML views."""
    conv = doc["conventions"]
    head = suite_headline(doc, suite, version)
    whats = {
        "average": "the mean over tasks of each task's mean over seeds (every task weighs the same)",
        "average_of_groups": "the mean of the group averages (every group weighs the same)",
        "base_new_hm": "the harmonic mean of the base and new group averages",
    }
    notes = [f"Headline: {head['name']}: {head['what']}."]
    others = other_averages(doc, suite, version)
    if others:
        notes.append(
            "Not the headline, shown for reference: "
            + "; ".join(f"{name}: {whats[key]}" for key, name in others)
            + ". They differ from the headline whenever groups hold different numbers of tasks."
        )
    notes += [
        f"Rank: {conv['rank']}.",
        f"95% CI: {conv['ci95']}.",
        f"Best per column (bold): {conv['best']}.",
        f"Speed ratio: {conv['speed_ratio']}. Selection inflation (points): {conv['selection_inflation']}.",
    ]
    return notes


def records_used(doc: dict[str, Any]) -> str:
    """How many records the numbers come from, and why the others do not count."""
    inputs = doc["inputs"]
    text = f"{inputs['used']} of {inputs['records']} records used: finished, final stage"
    if inputs.get("superseded_same_seed"):
        n = inputs["superseded_same_seed"]
        text += (
            f", one per seed ({n} re-run{'s' if n > 1 else ''} of a seed a cell already has: the seed "
            "counts once, with the record that carries the per-epoch test score)"
        )
    return text


def render_markdown(doc: dict[str, Any]) -> str:
    conv = doc["conventions"]
    lines = [
        "# petlbench leaderboard",
        "",
        "Generated by `bench leaderboard build` from the records in `leaderboard/records/` "
        f"({records_used(doc)}). "
        "Do not edit by hand: `bench leaderboard check` fails when this file differs from a rebuild.",
        "",
        f"- mean ± std: {conv['std']}.",
        f"- 95% CI: {conv['ci95']}.",
        f"- averages: {conv['aggregation']}.",
        f"- headline: {conv['headline']}.",
        f"- selection: {conv['selection']}.",
        f"- parameters: {conv['parameters']}.",
        f"- GMACs: {conv['gmacs']}.",
        f"- speed / memory: {conv['speed_memory']}.",
        f"- FGSM: {conv['robustness']}; the tables show robust accuracy at the largest epsilon.",
        f"- protocol: {conv['deviations']}.",
        "",
    ]
    for note in doc["notes"]:
        lines.append(f"> note: {note}")
    if doc["notes"]:
        lines.append("")
    if not doc["rows"]:
        lines += ["_No measured results yet: export runs with `bench export` and rebuild._", ""]
    for suite, version in _suites(doc):
        lines += [f"## {suite} (suite version {version})", "", "### Averages", ""]
        lines += _md_view(average_table(doc, suite, version)) + [""]
        lines += [f"- {note}" for note in averages_notes(doc, suite, version)] + ["", "### Per task", ""]
        lines += _md_view(task_table(doc, suite, version)) + [""]
        named: dict[str, str] = {}
        for r in doc["rows"]:
            if (r["suite"], r["suite_version"]) == (suite, version):
                for d in r.get("deviations") or []:
                    named.setdefault(d["id"], d["what"])
        if named:
            lines += ["### Deviations from the reference protocol", ""]
            lines += [f"- `{key}`: {what}" for key, what in sorted(named.items())] + [""]
        lines += ["### Reproduce", ""]
        for r in doc["rows"]:
            if (r["suite"], r["suite_version"]) == (suite, version):
                lines.append(f"- {r['task']} / {r['label']} / {r['backbone']} (cell `{r['cell_id']}`):")
                lines.append(f"  `{r['reproduce']}`")
        lines.append("")
    lines += [
        "## Reported by the papers",
        "",
        "Numbers from the papers and their code (`leaderboard/reported.yaml`), marked **reported**; they are "
        "on the papers' backbones and benchmarks, shown for reference beside our measured rows.",
        "",
    ]
    lines += _md_table(["kind", *REPORTED_HEADER], [["reported", *row] for row in reported_table(doc)])
    return "\n".join(lines).rstrip("\n") + "\n"


# ----- HTML ---------------------------------------------------------------------------------------

SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-value");
        if (v === null) { v = cell.textContent.trim(); }
        var n = parseFloat(v);
        return (v !== "" && !isNaN(n) && isFinite(v)) ? [0, n] : [1, v.toLowerCase()];
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (x[0] !== y[0]) { return x[0] - y[0]; }
        c = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr.reported td { background: #fff8e6; font-style: italic; }
td.best { background: #e3f4e1; font-weight: bold; }
details > summary { cursor: pointer; font-weight: bold; margin: 1em 0; }
ul.notes { font-size: 0.9em; max-width: 70em; }
code { font-size: 0.85em; }
"""


def _sort_value(text: str) -> str | None:
    """A numeric sort key for a displayed cell ('43.40 ± 1.20 (n=3)' -> '43.40', a tied rank '=2' -> '2',
    a CI '[41.10, 45.70]' -> '41.10'), else None."""
    head = text.split(" ")[0].replace(",", "").rstrip("%").lstrip("=[")
    try:
        float(head)
    except ValueError:
        return None
    return head


def _html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    table_id: str,
    *,
    row_classes: Sequence[str | None] | None = None,
    code_columns: Sequence[int] = (),
    best: set[tuple[int, int]] | None = None,
) -> list[str]:
    """A sortable table; the ``best`` (row, column) cells get class "best"."""
    best = best or set()
    out = [f'<table class="sortable" id="{table_id}">', "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out += ["</tr></thead>", "<tbody>"]
    for index, row in enumerate(rows):
        cls = row_classes[index] if row_classes else None
        cells = []
        for col, c in enumerate(row):
            value = _sort_value(c)
            attr = f' data-value="{html.escape(value)}"' if value is not None else ""
            text = f"<code>{html.escape(c)}</code>" if col in code_columns else html.escape(c)
            if (index, col) in best:
                attr += ' class="best"'
            cells.append(f"<td{attr}>{text}</td>")
        out.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return out


def render_html(doc: dict[str, Any], svg: bytes | None = None) -> str:
    """A self-contained page that opens on each suite's averages (best value per column highlighted),
    with what the headline, ranks and intervals mean right under them; the long per-task table is
    collapsed in a <details>; every table sorts on a header click; the Pareto plot's SVG is inlined when
    given (else linked as pareto.svg)."""
    e = html.escape
    body = [
        "<h1>petlbench leaderboard</h1>",
        f"<p>{e(records_used(doc))}. "
        "Click a column header to sort; the best value per column is highlighted.</p>",
    ]
    body += [f'<p class="note">note: {e(n)}</p>' for n in doc["notes"]]
    if not doc["rows"]:
        body.append("<p><em>No measured results yet.</em></p>")
    for i, (suite, version) in enumerate(_suites(doc)):
        body.append(f"<h2>{e(suite)} (suite version {e(version)})</h2>")
        body.append("<h3>Averages</h3>")
        averages = average_table(doc, suite, version)
        body += _html_table(averages.header, averages.rows, f"averages-{i}", best=averages.best())
        body.append('<ul class="notes">')
        body += [f"<li>{e(note)}</li>" for note in averages_notes(doc, suite, version)]
        body.append("</ul>")
        tasks = task_table(doc, suite, version)
        repro = [r["reproduce"] for r in doc["rows"] if (r["suite"], r["suite_version"]) == (suite, version)]
        body.append(f'<details id="per-task-{i}">')
        body.append(f"<summary>Per task ({len(tasks.rows)} rows)</summary>")
        body += _html_table(
            [*tasks.header, "reproduce"],
            [[*row, cmd] for row, cmd in zip(tasks.rows, repro, strict=True)],
            f"tasks-{i}",
            code_columns=(len(tasks.header),),
            best=tasks.best(),
        )
        body.append("</details>")
    body.append("<h2>Measured (averages) and reported by the papers</h2>")
    body.append(
        "<p>Rows marked <em>reported</em> come from the papers (<code>leaderboard/reported.yaml</code>), on "
        "their own backbones and benchmarks.</p>"
    )
    combined_header = [
        "kind",
        "method",
        "setting / suite",
        "backbone",
        "params",
        "+ head",
        "GMACs",
        "accuracy",
        "source",
    ]
    combined: list[list[str]] = []
    for entry in doc["entries"]:
        eff = entry["efficiency"]
        combined.append(
            [
                "measured",
                entry["label"],
                f"{entry['suite']} v{entry['suite_version']} ({entry['headline']['name']})",
                entry["backbone"],
                fmt_params(eff["trainable_params_method"]),
                fmt_params(eff["trainable_params_with_head"]),
                fmt_gmacs(eff["image_gmacs"]),
                fmt_num(entry["headline"]["mean"]),
                "petlbench",
            ]
        )
    for r in doc["reported"]:
        combined.append(
            [
                "reported",
                r["method"],
                r.get("setting") or "-",
                r.get("backbone") or "-",
                fmt_params(r.get("trainable_params")),
                "-",
                fmt_gmacs(r.get("gmacs")),
                fmt_num(r.get("accuracy")),
                r["source"] + (f" ({r['status']})" if r.get("status") else ""),
            ]
        )
    body += _html_table(
        combined_header,
        combined,
        "measured-and-reported",
        row_classes=[row[0] if row[0] == "reported" else None for row in combined],
    )
    body.append("<h2>Accuracy vs trainable parameters</h2>")
    if svg is None:
        body.append('<p><img src="pareto.svg" alt="Pareto plot"></p>')
    else:
        text = svg.decode("utf-8")
        body.append('<figure id="pareto">' + text[text.index("<svg") :].strip() + "</figure>")
    page = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>petlbench leaderboard</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *body,
        f"<script>{SORT_JS}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(page) + "\n"


# ----- Pareto plot --------------------------------------------------------------------------------


def pareto_front(
    points: Sequence[tuple[float, float]], x_better: str = LOWER, y_better: str = HIGHER
) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (by default: fewer or equal parameters and higher
    accuracy), in order along x from the best x."""
    sx = 1.0 if x_better == LOWER else -1.0
    sy = 1.0 if y_better == HIGHER else -1.0
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (sx * p[0], -sy * p[1])):
        if sy * y > best:
            front.append((x, y))
            best = sy * y
    return front


@dataclass(frozen=True)
class PlotColumn:
    """A column an entry can be plotted by: its axis label, its value, which way is better."""

    label: str
    path: tuple[str, ...]  # where an entry holds the value
    better: str
    log: bool = False  # log scale; values below 1 are shown at 1 (a count of 0 parameters)


PLOT_COLUMNS = {
    "accuracy": PlotColumn("{headline} (%)", ("headline", "mean"), HIGHER),
    "params": PlotColumn(
        "trainable parameters (with head, log scale; 0 shown at 1)",
        ("efficiency", "trainable_params_with_head"),
        LOWER,
        log=True,
    ),
    "gmacs": PlotColumn("image GMACs per image", ("efficiency", "image_gmacs"), LOWER),
    "memory": PlotColumn("train peak memory (MiB)", ("efficiency", "train_peak_memory_mib"), LOWER),
    "speed-ratio": PlotColumn("train step time / plain backbone's", ("efficiency", "speed_ratio"), LOWER),
}


def _plot_value(entry: dict[str, Any], column: PlotColumn) -> float | None:
    value: Any = entry
    for key in column.path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool):
        return None
    return max(float(value), 1.0) if column.log else float(value)


LABEL_ITERATIONS = 500  # a fixed budget, not adjustText's default 1 s, so every rebuild is identical


def place_labels(ax: Any, texts: Sequence[Any]) -> None:
    """Move a panel's point labels apart with ``adjustText`` (away from each other, the points and
    the legend; a thin line back to the point when a label had to move), deterministically."""
    if not texts:
        return
    from adjustText import adjust_text

    points = [t.get_position() for t in texts]
    legend = ax.get_legend()
    # adjustText maps a Bbox given in data coordinates to the display itself
    avoid = None if legend is None else [legend.get_window_extent().transformed(ax.transData.inverted())]
    adjust_text(
        list(texts),
        x=[p[0] for p in points],
        y=[p[1] for p in points],
        objects=avoid,
        ax=ax,
        iter_lim=LABEL_ITERATIONS,
        time_lim=None,
        expand=(1.2, 1.5),
        force_static=(0.4, 0.8),
        min_arrow_len=8,
        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
    )


def _axis_label(column: PlotColumn, headline: str) -> str:
    return column.label.format(headline=headline)


def render_plot(doc: dict[str, Any], x: str = "params", y: str = "accuracy") -> dict[str, bytes]:
    """Entries by any two ``PLOT_COLUMNS`` (default: headline accuracy vs trainable parameters), one
    panel per suite, one Pareto frontier per backbone (better on both axes, each column's own
    direction). Returns {'svg': ..., 'png': ...}."""
    from petlbench.errors import UserError

    for name in (x, y):
        if name not in PLOT_COLUMNS:
            raise UserError(f"no plot column {name!r}; choose from {', '.join(PLOT_COLUMNS)}")
    if x == y:
        raise UserError(f"plot two different columns, not {x!r} against itself")
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise UserError("the plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cx, cy = PLOT_COLUMNS[x], PLOT_COLUMNS[y]
    suites = _suites(doc)
    rc: Any = {  # matplotlib types its keys as a Literal of every rc name
        "svg.hashsalt": "petlbench",
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "path.simplify": False,
    }
    with matplotlib.rc_context(rc):
        n = max(1, len(suites))
        fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.8), squeeze=False)
        if not suites:
            ax = axes[0][0]
            ax.text(0.5, 0.5, "no measured results yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(_axis_label(cx, "average accuracy"))
            ax.set_ylabel(_axis_label(cy, "average accuracy"))
        markers = "osD^vP*X"
        panels: list[tuple[Any, list[Any]]] = []
        for ax, (suite, version) in zip(axes[0], suites, strict=False):
            headline = next(
                (s.get("headline") or {}).get("name", "average accuracy")
                for s in doc["suites"]
                if (s["suite"], s["suite_version"]) == (suite, version)
            )
            by_backbone: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
            for e in doc["entries"]:
                if (e["suite"], e["suite_version"]) != (suite, version):
                    continue
                px, py = _plot_value(e, cx), _plot_value(e, cy)
                if px is not None and py is not None:
                    by_backbone[e["backbone"]].append((px, py, e["label"]))
            labels: list[Any] = []  # a text per point of this panel, in its backbone's colour
            for k, (backbone, pts) in enumerate(sorted(by_backbone.items())):
                color = f"C{k % 10}"
                ax.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=color,
                    marker=markers[k % len(markers)],
                    label=backbone,
                )
                labels += [ax.text(px, py, label, fontsize=7, color=color, zorder=3) for px, py, label in pts]
                front = pareto_front([(p[0], p[1]) for p in pts], cx.better, cy.better)
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=color, alpha=0.5)
            if not by_backbone:
                text = f"no entry has both {x} and {y}"
                ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
            if cx.log:
                ax.set_xscale("log")
            if cy.log:
                ax.set_yscale("log")
            ax.margins(x=0.06, y=0.1)  # room for the labels at the edges
            ax.set_title(f"{suite} v{version}: {y} vs {x}")
            ax.set_xlabel(_axis_label(cx, headline))
            ax.set_ylabel(_axis_label(cy, headline))
            ax.grid(True, which="major", alpha=0.3)
            if by_backbone:
                corner = "lower right" if (cx.better, cy.better) == (LOWER, HIGHER) else "best"
                ax.legend(fontsize=8, loc=corner)
            panels.append((ax, labels))
        fig.tight_layout()
        for ax, labels in panels:  # after the layout: label placement works in display coordinates
            place_labels(ax, labels)
        svg, png = io.BytesIO(), io.BytesIO()
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
        fig.savefig(png, format="png", metadata={"Software": None})
        plt.close(fig)
    return {"svg": svg.getvalue(), "png": png.getvalue()}


def render_pareto(doc: dict[str, Any]) -> dict[str, bytes]:
    """The committed plot: headline accuracy vs trainable parameters (with head, log scale).
    Returns {'pareto.svg': ..., 'pareto.png': ...}."""
    plot = render_plot(doc, "params", "accuracy")
    return {"pareto.svg": plot["svg"], "pareto.png": plot["png"]}


# ----- CSV ----------------------------------------------------------------------------------------

# leaderboard.csv, one line per (method, backbone, task) cell and per entry average. Columns:
#   kind            cell | headline (the entry's headline average) | average (another average of the
#                   entry: mean over tasks, mean of groups, HM) | group (a group average)
#   suite, suite_version, method (the entry label), backbone, backbone_pretrained, shots
#   scope           the task (cell), the average's name (headline, average) or the group's name (group)
#   group           the task's group (cell)
#   metric          the cell's metric (cell)
#   selected        whether the entry's averages use this cell (cell)
#   mean, std, n    mean and sample std over seeds (n: seeds; for an average: the seeds its std is over)
#   ci95_low, ci95_high   the 95% Student t interval (empty when n < 2)
#   rank, tied      rank by CI and whether it is shared (cell: among the task's selected cells;
#                   headline: among the suite's entries on that backbone)
#   params_method, params_with_head, percent_of_backbone, image_gmacs, train_images_per_s,
#   train_peak_memory_mib, speed_ratio     efficiency (cell and headline lines)
#   selection_inflation   max test score over the candidates - the selected one's (cell, headline)
#   fgsm_accuracy, fgsm_eps   robust accuracy at the largest epsilon (cell and headline lines)
#   deviations      named deviations from the reference protocol, ';'-separated
#   id              cell_id (cell) or entry_id (the others)
# Empty means no value; numbers are as in leaderboard.json (6 significant digits).
CSV_HEADER = [
    "kind",
    "suite",
    "suite_version",
    "method",
    "backbone",
    "backbone_pretrained",
    "shots",
    "scope",
    "group",
    "metric",
    "selected",
    "mean",
    "std",
    "n",
    "ci95_low",
    "ci95_high",
    "rank",
    "tied",
    "params_method",
    "params_with_head",
    "percent_of_backbone",
    "image_gmacs",
    "train_images_per_s",
    "train_peak_memory_mib",
    "speed_ratio",
    "selection_inflation",
    "fgsm_accuracy",
    "fgsm_eps",
    "deviations",
    "id",
]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv_efficiency(item: dict[str, Any]) -> dict[str, Any]:
    eff, fgsm = item["efficiency"], item.get("fgsm")
    return {
        "params_method": eff.get("trainable_params_method"),
        "params_with_head": eff.get("trainable_params_with_head"),
        "percent_of_backbone": eff.get("percent_of_backbone"),
        "image_gmacs": eff.get("image_gmacs"),
        "train_images_per_s": eff.get("train_images_per_s"),
        "train_peak_memory_mib": eff.get("train_peak_memory_mib"),
        "speed_ratio": eff.get("speed_ratio"),
        "selection_inflation": (item.get("selection_inflation") or {}).get("gap"),
        "fgsm_accuracy": _fgsm_value(fgsm),
        "fgsm_eps": fgsm["eps"][-1] if fgsm and fgsm.get("eps") else None,
        "deviations": ";".join(d["id"] for d in item.get("deviations") or []),
    }


def _csv_stats(item: dict[str, Any], n: Any, rank: Any = None) -> dict[str, Any]:
    ci = item.get("ci95")
    return {
        "mean": item["mean"],
        "std": item["std"],
        "n": n,
        "ci95_low": ci[0] if ci else None,
        "ci95_high": ci[1] if ci else None,
        "rank": rank["position"] if rank else None,
        "tied": bool(rank["tied_with"]) if rank and rank["position"] is not None else None,
    }


def render_csv(doc: dict[str, Any]) -> str:
    """The leaderboard as CSV (``CSV_HEADER``): per suite, each entry's headline, other averages and
    group averages, then its cells; in the order of leaderboard.json."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    rows_by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in doc["rows"]:
        rows_by_entry[r["entry_id"]].append(r)
    for e in doc["entries"]:
        common = {
            "suite": e["suite"],
            "suite_version": e["suite_version"],
            "method": e["label"],
            "backbone": e["backbone"],
            "backbone_pretrained": e["backbone_pretrained"],
            "shots": e["shots"],
        }
        lines = [
            {
                "kind": "headline",
                "scope": e["headline"]["name"],
                **_csv_stats(e["headline"], e["headline"]["n_seeds"], e["rank"]),
                **_csv_efficiency(e),
                "id": e["entry_id"],
            }
        ]
        for key, name in other_averages(doc, e["suite"], e["suite_version"]):
            if key == "average":
                stats = _csv_stats(e["average"], e["average"]["n_seeds"])
            else:
                stats = {"mean": e[key]}
            lines.append({"kind": "average", "scope": name, **stats, "id": e["entry_id"]})
        for g in e["groups"]:
            stats = _csv_stats(g, g["n_seeds"])
            lines.append({"kind": "group", "scope": g["group"], **stats, "id": e["entry_id"]})
        for r in rows_by_entry[e["entry_id"]]:
            lines.append(
                {
                    "kind": "cell",
                    "scope": r["task"],
                    "group": r["group"],
                    "metric": r["metric"],
                    "selected": r["selected"],
                    **_csv_stats(r, r["n"], r["rank"]),
                    **_csv_efficiency(r),
                    "id": r["cell_id"],
                }
            )
        for line in lines:
            writer.writerow({k: _csv_value(v) for k, v in {**common, **line}.items()})
    return out.getvalue()
