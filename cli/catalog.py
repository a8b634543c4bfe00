"""``bench methods`` (with NAME: one method's options), ``bench suites`` and ``bench backbones``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from petlbench.errors import UserError

from .output import out, plain

if TYPE_CHECKING:
    from petlbench.methods.registry import OptionInfo


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
    from petlbench.methods.compose import Composed
    from petlbench.methods.registry import get_method, method_options

    cls = get_method(name)
    plain(f"{cls.name}: {cls.paper or '(no paper)'}")
    kinds = ",".join(cls.backbone_kinds or ("any",))
    plain(
        f"family {cls.family}; towers {','.join(cls.towers) or '-'}; backbones {kinds}; head {cls.head}; "
        f"{'trains' if cls.trains else 'training-free'}"
    )
    for dev in cls.deviations:
        plain(f"deviation {dev.get('id')}: {dev.get('what', '')}")
    options = method_options(cls)
    plain(f"options (--set KEY=VALUE){':' if options else ': none'}")
    if not issubclass(cls, Composed):
        _print_options(options, "  ")
        return 0
    for part in cls.parts:  # a composition: each part's options under its name, as PART.OPTION
        mine = [opt for opt in options if opt.name.startswith(f"{part.name}.")]
        plain(f"  {part.name}{':' if mine else ': none'}")
        _print_options(mine, "    ")
    return 0


def _print_options(options: list[OptionInfo], indent: str) -> None:
    for opt in options:
        limits = f"  in [{_bound(opt.limits[0])}, {_bound(opt.limits[1])}]" if opt.limits else ""
        plain(f"{indent}{opt.name}: {opt.type} = {opt.default!r}{limits}")
        if opt.help:
            plain(f"{indent}    {opt.help}")


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
