"""The ``bench`` command: the parser (:mod:`.parser`) and one module per verb, imported only when its
verb runs (so ``--help`` is fast). Every user error is one line on stderr and exit status 2, no
traceback. The CLI imports every part of petlbench; nothing imports the CLI."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from petlbench.errors import UserError

# verb -> the module under petlbench.cli that defines its ``cmd_<verb>``
VERBS = {
    "run": "run",
    "plan": "plan",
    "sweep": "sweep",
    "show": "show",
    "runs": "show",
    "robust": "show",
    "methods": "catalog",
    "suites": "catalog",
    "backbones": "catalog",
    "data": "data",
    "perf": "perf",
    "pretrain": "pretrain",
    "export": "export",
    "leaderboard": "leaderboard",
}


def main(argv: Sequence[str] | None = None) -> int:
    from .parser import build_parser

    try:
        args = build_parser().parse_args(argv)
        module = importlib.import_module(f"{__name__}.{VERBS[args.command]}")
        return int(getattr(module, f"cmd_{args.command}")(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; finished runs are stored, the current run resumes from its last epoch",
            file=sys.stderr,
        )
        return 130
