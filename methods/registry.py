"""Methods by name, discovered through the ``petlbench.methods`` entry-point group.

Built-ins are registered in our own ``pyproject.toml`` through that same group, so a third-party
plugin takes exactly the path every built-in takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from petlbench.errors import UserError

from .base import Method

GROUP = "petlbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    value: str  # "module:Class"
    distribution: str
    plugin: bool

    def load(self) -> type[Method]:
        try:
            cls = _load(self.value)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            raise UserError(
                f"method {self.name!r} from {self.distribution} failed to import ({self.value}): "
                f"{exc.__class__.__name__}: {exc}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UserError(f"entry point {self.name!r} ({self.value}) is not a petlbench Method subclass")
        return cls


def _load(value: str) -> object:
    import importlib

    module, _, attr = value.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def method_entries() -> dict[str, MethodEntry]:
    entries: dict[str, MethodEntry] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        entry = MethodEntry(ep.name, ep.value, dist, plugin=dist.replace("_", "-") != "petlbench")
        # Built-ins win over a plugin of the same name; the first plugin wins among plugins.
        if ep.name not in entries or (entries[ep.name].plugin and not entry.plugin):
            entries[ep.name] = entry
    return dict(sorted(entries.items()))


def get_method(name: str) -> type[Method]:
    entries = method_entries()
    if name not in entries:
        raise UserError(f"unknown method {name!r}; registered methods: {', '.join(entries) or '(none)'}")
    return entries[name].load()
