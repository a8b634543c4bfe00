"""Methods by name, discovered through the ``petlbench.methods`` entry-point group.

Built-ins are registered in our own ``pyproject.toml`` through that same group, so a third-party
plugin takes exactly the path every built-in takes.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import typing
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

from petlbench.errors import UserError
from petlbench.registry import BUILTIN, Registry, load_entry_point

from .base import Method
from .compose import Composed, compose

GROUP = "petlbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    """A registered method, not imported yet: listing the methods imports none of them."""

    name: str
    entry_point: EntryPoint
    distribution: str

    @property
    def plugin(self) -> bool:
        return self.distribution != BUILTIN

    def load(self) -> type[Method]:
        cls = load_entry_point(self.entry_point, "method", self.distribution)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UserError(
                f"entry point {self.name!r} ({self.entry_point.value}) is not a petlbench Method subclass"
            )
        return cls


METHODS: Registry[MethodEntry] = Registry(
    "method",
    entry_point_group=GROUP,
    from_entry_point=lambda ep, source: MethodEntry(ep.name, ep, source),
)


def method_entries() -> dict[str, MethodEntry]:
    return dict(METHODS.items())


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; ``a+b`` composes the methods ``a`` and ``b`` into one
    that attaches both through their slots."""
    if "+" in name:
        return compose([get_method(part) for part in name.split("+")])
    return METHODS.get(name).load()


@dataclass(frozen=True)
class OptionInfo:
    """One option of a method, as ``bench methods NAME`` lists it."""

    name: str
    type: str
    default: Any
    limits: tuple[float, float] | None
    help: str


def method_options(cls: type[Method]) -> list[OptionInfo]:
    """A method's options in declaration order: type, default, declared range and help.

    The help is a field's ``metadata["help"]`` when it has one, otherwise the comment that follows
    the field on its line of the Config's source (how every built-in documents its options: the
    reference value and where it comes from), so the listing cannot drift from the code. A
    composition ``a+b`` lists each part's options in turn, named as ``--set`` addresses them
    (``a.option``)."""
    if issubclass(cls, Composed):
        return [
            dataclasses.replace(opt, name=f"{part.name}.{opt.name}")
            for part in cls.parts
            for opt in method_options(part)
        ]
    comments = _field_comments(cls.Config)
    hints = typing.get_type_hints(cls.Config)
    out = []
    for f in dataclasses.fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        hint = hints.get(f.name, f.type)
        type_name = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
        out.append(
            OptionInfo(
                name=f.name,
                type=type_name or str(hint).replace("typing.", ""),
                default=default,
                limits=cls.limits.get(f.name),
                help=str(f.metadata.get("help") or comments.get(f.name, "")),
            )
        )
    return out


def _field_comments(config: type) -> dict[str, str]:
    """Each field's comment in a dataclass's source: the one after it on its line
    (``name: type = value  # comment``), else the block of comment lines right above it."""
    try:
        source = inspect.getsource(config)
    except (OSError, TypeError):
        return {}
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            trailing[token.start[0] - 1] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for number, line in enumerate(lines):
        match = re.match(r"\s*([A-Za-z_]\w*)\s*:", line)
        if not match or match.group(1) in comments or line.lstrip().startswith("#"):
            continue
        if number in trailing:
            comments[match.group(1)] = trailing[number]
            continue
        above: list[str] = []
        k = number - 1
        while k >= 0 and lines[k].lstrip().startswith("#"):
            above.insert(0, lines[k].strip().lstrip("#").strip())
            k -= 1
        if above:
            comments[match.group(1)] = " ".join(above)
    return comments
