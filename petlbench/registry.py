"""One registry type for everything the harness finds by name: methods, backbones, dataset formats
and metrics (DESIGN section 9).

A :class:`Registry` holds objects registered in code (``register``, or its decorator form) and,
given an ``entry_point_group``, the entry points of that group, read once on first use. Our own
distribution's entry points and objects registered in code are built-ins; a plugin (another
distribution's entry point) never replaces a built-in of the same name, and among plugins the first
one read wins. Unknown names and broken plugins are one-line :class:`UserError`s, since the CLI
prints those as they are: a plugin that fails to import stays listed by name, and using it raises
why.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast, overload

from petlbench.errors import UserError

T = TypeVar("T")

BUILTIN = "petlbench"  # the distribution whose entry points are built-ins


def distribution_of(ep: EntryPoint) -> str:
    """The name of the distribution declaring ``ep``, "petlbench" for our own."""
    name = ep.dist.name if ep.dist is not None else "unknown"
    return BUILTIN if name.replace("_", "-") == BUILTIN else name


def load_entry_point(ep: EntryPoint, kind: str, source: str) -> object:
    """Import what ``ep`` names; a plugin that fails to import is one line naming it, not a traceback."""
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
        raise UserError(
            f"{kind} {ep.name!r} from {source} failed to import ({ep.value}): {exc.__class__.__name__}: {exc}"
        ) from None


class Registry(Generic[T]):
    """Objects of one kind by name.

    ``kind`` and ``kinds`` word the unknown-name error ("unknown <kind> 'x'; known <kinds>: a, b"),
    ``hint`` is appended to it. With ``entry_point_group``, ``from_entry_point(ep, source)`` turns
    each entry point into a ``T`` (default: import it), ``source`` being its distribution's name.
    """

    def __init__(
        self,
        kind: str,
        *,
        kinds: str | None = None,
        hint: str = "",
        entry_point_group: str | None = None,
        from_entry_point: Callable[[EntryPoint, str], T] | None = None,
    ) -> None:
        self.kind = kind
        self.kinds = kinds or f"{kind}s"
        self.hint = hint
        self.entry_point_group = entry_point_group
        self._from_entry_point = from_entry_point
        self._objects: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._broken: dict[str, str] = {}  # plugin name -> why it cannot be used (one line)
        self._discovered = False

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` as a built-in under ``name``; without ``obj``, a decorator that does.
        A name taken by another object is refused (registering the same object again is not)."""
        if obj is None:
            return lambda target: self.register(name, target)
        known = self._objects.get(name)
        if known is not None and known is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered as {known!r}; not registering {obj!r}"
            )
        self._objects[name] = obj
        self._sources[name] = BUILTIN
        return obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test's throwaway entry)."""
        self._objects.pop(name, None)
        self._sources.pop(name, None)
        self._broken.pop(name, None)

    def _discover(self) -> None:
        group = self.entry_point_group
        if self._discovered or group is None:
            return
        self._discovered = True
        convert = self._from_entry_point
        for ep in entry_points(group=group):
            source = distribution_of(ep)
            taken = self._sources.get(ep.name)
            if taken is not None and (source != BUILTIN or taken == BUILTIN):
                continue  # a plugin never replaces a built-in; the first plugin wins among plugins
            self._sources[ep.name] = source
            try:
                self._objects[ep.name] = (
                    convert(ep, source) if convert else cast(T, load_entry_point(ep, self.kind, source))
                )
                self._broken.pop(ep.name, None)
            except UserError as err:  # kept, so that using it says why it is broken
                self._objects.pop(ep.name, None)
                self._broken[ep.name] = str(err)

    def get(self, name: str) -> T:
        self._discover()
        if name in self._broken:
            raise UserError(self._broken[name])
        if name not in self._objects:
            known = ", ".join(self.names()) or "(none)"
            hint = f". {self.hint}" if self.hint else ""
            raise UserError(f"unknown {self.kind} {name!r}; known {self.kinds}: {known}{hint}")
        return self._objects[name]

    def names(self) -> list[str]:
        """Every registered name, broken plugins included."""
        self._discover()
        return sorted([*self._objects, *self._broken])

    def items(self) -> list[tuple[str, T]]:
        """Every usable entry by name (a broken plugin has nothing to give)."""
        return [(name, self._objects[name]) for name in self.names() if name in self._objects]

    def __contains__(self, name: object) -> bool:
        return name in self.names()
