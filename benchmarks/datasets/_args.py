"""Checking a loader's ``args`` mapping: unknown keys, missing keys, types, defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from petlbench.errors import UserError

REQUIRED = object()


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_args(
    loader: str, args: Mapping[str, Any], schema: Mapping[str, tuple[type | tuple[type, ...], Any]]
) -> dict[str, Any]:
    """Return ``args`` with defaults filled in. ``schema`` maps a key to ``(types, default)``; a
    default of ``REQUIRED`` makes the key mandatory. ints are accepted where floats are expected, and
    bools are never accepted as numbers (YAML's ``yes`` is not 1)."""
    if not isinstance(args, Mapping):
        raise UserError(f"loader {loader!r}: args must be a mapping, got {type(args).__name__}")
    unknown = sorted(set(args) - set(schema))
    if unknown:
        raise UserError(
            f"loader {loader!r}: unknown args {', '.join(map(repr, unknown))}; "
            f"known args: {', '.join(sorted(schema))}"
        )
    out: dict[str, Any] = {}
    for key, (types, default) in schema.items():
        if key not in args:
            if default is REQUIRED:
                raise UserError(f"loader {loader!r}: missing required arg {key!r} ({_type_name(types)})")
            out[key] = default
            continue
        value = args[key]
        allowed = types if isinstance(types, tuple) else (types,)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok and float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise UserError(
                f"loader {loader!r}: arg {key!r} must be {_type_name(types)}, got {value!r} "
                f"({type(value).__name__})"
            )
        out[key] = value
    return out


def check_range(
    loader: str, key: str, value: float, lo: float | None = None, hi: float | None = None
) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = (
            f"between {lo} and {hi}"
            if lo is not None and hi is not None
            else (f">= {lo}" if lo is not None else f"<= {hi}")
        )
        raise UserError(f"loader {loader!r}: arg {key!r} must be {bounds}, got {value!r}")


def check_choice(loader: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"loader {loader!r}: arg {key!r} must be one of {', '.join(choices)}; got {value!r}")
