"""Views of the leaderboard document: Markdown, a static sortable HTML page, a Pareto plot.

Every renderer is a pure function of the document, so a rebuild from the same records gives the same
bytes (the plots: Agg backend, fixed SVG hash salt, no dates or software names in the metadata, text
kept as text in the SVG, point labels placed by adjustText in a fixed number of iterations).
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from collections.abc import Sequence
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


def average_table(doc: dict[str, Any], suite: str, version: str) -> tuple[list[str], list[list[str]]]:
    groups = _group_names(doc, suite, version)
    header = [
        "method",
        "backbone",
        "average ± std (seeds)",
        *groups,
        "tasks",
        "search trials",
        "params",
        "+ head",
        "% (denominator)",
    ]
    header += ["GMACs", "train img/s", "peak MiB", "FGSM acc", "protocol"]
    has_hm = {"base", "new"} <= set(groups)
    if groups:
        header.insert(3 + len(groups), "mean of groups")
    if has_hm:
        header.insert(4 + len(groups), "HM (base, new)")
    rows = []
    for e in doc["entries"]:
        if (e["suite"], e["suite_version"]) != (suite, version):
            continue
        avg = e["average"]
        by_group = {g["group"]: g for g in e["groups"]}
        cells = [e["label"], e["backbone"] + ("" if e["backbone_pretrained"] else " (random init)")]
        cells.append(fmt_mean(avg["mean"], avg["std"], avg["n_seeds"] or None))
        for g in groups:
            item = by_group.get(g)
            text = fmt_mean(item["mean"], None) if item else "-"
            if item and item["n_tasks"] and not item["complete"]:
                text += f" (partial: {item['n_tasks']}/{len(item['tasks'])})"
            cells.append(text)
        if groups:
            cells.append(fmt_num(e["average_of_groups"]))
        if has_hm:
            cells.append(fmt_num(e["base_new_hm"]))
        eff = e["efficiency"]
        pct = eff["percent_of_backbone"]
        cells += [
            f"{avg['n_tasks']}" + ("" if e["complete"] else f" (missing {len(e['missing_tasks'])})"),
            str(e["search_trials"]),
            fmt_params(eff["trainable_params_method"]),
            fmt_params(eff["trainable_params_with_head"]),
            "-" if pct is None else f"{pct:.4g}% ({eff['denominator'] or '?'})",
            fmt_gmacs(eff["image_gmacs"]),
            fmt_num(eff["train_images_per_s"], 1),
            fmt_num(eff["train_peak_memory_mib"], 0),
            fmt_fgsm(e["fgsm"]),
            fmt_deviations(e.get("deviations")),
        ]
        rows.append(cells)
    return header, rows


TASK_HEADER = [
    "task",
    "group",
    "method",
    "backbone",
    "metric",
    "mean ± std",
    "n",
    "search trials",
    "params",
    "+ head",
    "%",
    "GMACs",
    "train img/s",
    "peak MiB",
    "device / dtype",
    "FGSM acc",
    "protocol",
    "runs",
]


def task_table(doc: dict[str, Any], suite: str, version: str) -> list[list[str]]:
    rows = []
    for r in doc["rows"]:
        if (r["suite"], r["suite_version"]) != (suite, version):
            continue
        eff = r["efficiency"]
        pct = eff["percent_of_backbone"]
        label = r["label"] + ("" if r["selected"] else " (not selected)")
        device = " / ".join(x for x in (eff["device"], eff["dtype"]) if x) or "-"
        rows.append(
            [
                r["task"],
                r["group"] or "-",
                label,
                r["backbone"],
                r["metric"],
                fmt_mean(r["mean"], r["std"]),
                str(r["n"]),
                "-" if r["search"] is None else str(r["search"]["trials"]),
                fmt_params(eff["trainable_params_method"]),
                fmt_params(eff["trainable_params_with_head"]),
                "-" if pct is None else f"{pct:.4g}%",
                fmt_gmacs(eff["image_gmacs"]),
                fmt_num(eff["train_images_per_s"], 1),
                fmt_num(eff["train_peak_memory_mib"], 0),
                device,
                fmt_fgsm(r["fgsm"]),
                fmt_deviations(r.get("deviations")),
                " ".join(run["run_id"][:8] for run in r["runs"]),
            ]
        )
    return rows


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


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    conv = doc["conventions"]
    lines = [
        "# petlbench leaderboard",
        "",
        "Generated by `bench leaderboard build` from the records in `leaderboard/records/` "
        f"({doc['inputs']['used']} of {doc['inputs']['records']} records used: finished, final stage). "
        "Do not edit by hand: `bench leaderboard check` fails when this file differs from a rebuild.",
        "",
        f"- mean ± std: {conv['std']}.",
        f"- averages: {conv['aggregation']}.",
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
        lines += [f"## {suite} (suite version {version})", "", "### Averages over tasks", ""]
        header, rows = average_table(doc, suite, version)
        lines += _md_table(header, rows) + ["", "### Per task", ""]
        lines += _md_table(TASK_HEADER, task_table(doc, suite, version)) + [""]
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
code { font-size: 0.85em; }
"""


def _sort_value(text: str) -> str | None:
    """A numeric sort key for a displayed cell ('43.40 ± 1.20 (n=3)' -> '43.4'), else None."""
    head = text.split(" ")[0].replace(",", "").rstrip("%")
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
) -> list[str]:
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
            cells.append(f"<td{attr}>{text}</td>")
        out.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return out


def render_html(doc: dict[str, Any], svg: bytes | None = None) -> str:
    """A self-contained page: one sortable table per view (click a header to sort), and the Pareto plot's
    SVG inlined when given (else linked as pareto.svg)."""
    e = html.escape
    body = [
        "<h1>petlbench leaderboard</h1>",
        f"<p>{doc['inputs']['used']} of {doc['inputs']['records']} records used (finished, final stage). "
        "Click a column header to sort. Std: " + e(doc["conventions"]["std"]) + ".</p>",
    ]
    body += [f'<p class="note">note: {e(n)}</p>' for n in doc["notes"]]
    if not doc["rows"]:
        body.append("<p><em>No measured results yet.</em></p>")
    for i, (suite, version) in enumerate(_suites(doc)):
        body.append(f"<h2>{e(suite)} (suite version {e(version)})</h2>")
        body.append("<h3>Averages over tasks</h3>")
        header, rows = average_table(doc, suite, version)
        body += _html_table(header, rows, f"averages-{i}")
        body.append("<h3>Per task</h3>")
        rows = task_table(doc, suite, version)
        repro = [r["reproduce"] for r in doc["rows"] if (r["suite"], r["suite_version"]) == (suite, version)]
        body += _html_table(
            [*TASK_HEADER, "reproduce"],
            [[*row, cmd] for row, cmd in zip(rows, repro, strict=True)],
            f"tasks-{i}",
            code_columns=(len(TASK_HEADER),),
        )
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
                f"{entry['suite']} v{entry['suite_version']} (average)",
                entry["backbone"],
                fmt_params(eff["trainable_params_method"]),
                fmt_params(eff["trainable_params_with_head"]),
                fmt_gmacs(eff["image_gmacs"]),
                fmt_num(entry["average"]["mean"]),
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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats with fewer (or equal) parameters and higher accuracy."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


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


def render_pareto(doc: dict[str, Any]) -> dict[str, bytes]:
    """Suite-average accuracy vs trainable parameters (with head, log scale), one panel per suite,
    one frontier per backbone. Returns {'pareto.svg': ..., 'pareto.png': ...}."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        from petlbench.errors import UserError

        raise UserError("the Pareto plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    suites = _suites(doc)
    rc = {
        "svg.hashsalt": "petlbench",
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "path.simplify": False,
    }
    files: dict[str, bytes] = {}
    with matplotlib.rc_context(rc):
        n = max(1, len(suites))
        fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.8), squeeze=False)
        if not suites:
            ax = axes[0][0]
            ax.text(0.5, 0.5, "no measured results yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("trainable parameters (with head)")
            ax.set_ylabel("average accuracy (%)")
        markers = "osD^vP*X"
        panels: list[tuple[Any, list[Any]]] = []
        for ax, (suite, version) in zip(axes[0], suites, strict=False):
            by_backbone: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
            for e in doc["entries"]:
                if (e["suite"], e["suite_version"]) != (suite, version) or e["average"]["mean"] is None:
                    continue
                x = e["efficiency"]["trainable_params_with_head"]
                if x is None:
                    continue
                by_backbone[e["backbone"]].append(
                    (max(float(x), 1.0), float(e["average"]["mean"]), e["label"])
                )
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
                labels += [ax.text(x, y, label, fontsize=7, color=color, zorder=3) for x, y, label in pts]
                front = pareto_front([(p[0], p[1]) for p in pts])
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=color, alpha=0.5)
            ax.set_xscale("log")
            ax.margins(x=0.06, y=0.1)  # room for the labels at the edges
            ax.set_title(f"{suite} v{version}: average over tasks")
            ax.set_xlabel("trainable parameters (with head, log scale; 0 shown at 1)")
            ax.set_ylabel("average accuracy (%)")
            ax.grid(True, which="major", alpha=0.3)
            if by_backbone:
                ax.legend(fontsize=8, loc="lower right")
            panels.append((ax, labels))
        fig.tight_layout()
        for ax, labels in panels:  # after the layout: label placement works in display coordinates
            place_labels(ax, labels)
        svg, png = io.BytesIO(), io.BytesIO()
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
        fig.savefig(png, format="png", metadata={"Software": None})
        plt.close(fig)
    files["pareto.svg"] = svg.getvalue()
    files["pareto.png"] = png.getvalue()
    return files
