"""Converters for ``bench`` option values (comma lists, seeds, KEY=VALUE pairs, FGSM epsilons).

Shared by the parser (harness/cli.py) and the commands (harness/commands.py), so neither imports the
other's internals. Every malformed value is a one-line UserError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from petlbench.errors import UserError


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def seed_list(value: str | None) -> list[int] | None:
    items = csv_list(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UserError(f"--seeds takes integers separated by commas, not {value!r}") from None


def assignments(values: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as JSON when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes key=value, not {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def epsilons(value: str) -> list[float]:
    """Parse '1/255,0.01' into floats."""
    out = []
    for item in csv_list(value) or []:
        num, sep, den = item.partition("/")
        try:
            out.append(float(num) / float(den) if sep else float(num))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fgsm-eps takes numbers or fractions like 8/255, not {item!r}") from None
        if out[-1] < 0:
            raise UserError(f"--fgsm-eps must be non-negative, not {item!r}")
    return out
