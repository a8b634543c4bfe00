"""The one registry type (petlbench/registry.py) every name lookup goes through."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import petlbench.registry
from petlbench.errors import UserError
from petlbench.registry import Registry


class FakeDist:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeEntryPoint:
    """An entry point of distribution ``dist`` whose ``load()`` returns ``value`` (or raises it)."""

    def __init__(self, name: str, dist: str, value: object) -> None:
        self.name, self.dist, self.value, self._value = name, FakeDist(dist), f"{dist}_mod:X", value

    def load(self) -> object:
        if isinstance(self._value, Exception):
            raise self._value
        return self._value


def test_register_decorator_lookup_and_the_unknown_name_line():
    reg: Registry[object] = Registry("widget", hint="Pick one.")
    reg.register("b", 2)

    @reg.register("a")
    def a() -> int:
        return 1

    assert reg.get("a") is a and reg.get("b") == 2
    assert reg.names() == ["a", "b"] and reg.items() == [("a", a), ("b", 2)]
    assert "a" in reg and "c" not in reg
    with pytest.raises(UserError) as err:
        reg.get("c")
    assert str(err.value) == "unknown widget 'c'; known widgets: a, b. Pick one."
    assert str(pytest.raises(UserError, Registry("gadget", kinds="things").get, "x").value) == (
        "unknown gadget 'x'; known things: (none)"
    )
    reg.unregister("b")
    assert reg.names() == ["a"]


def test_a_taken_name_is_refused_naming_both_and_registering_again_is_not():
    reg: Registry[object] = Registry("widget")
    first = object()
    reg.register("a", first)
    assert reg.register("a", first) is first
    with pytest.raises(
        ValueError, match=r"widget 'a' is already registered as <object .*; not registering 7"
    ):
        reg.register("a", 7)


def test_entry_points_read_once_builtins_win_and_a_broken_plugin_is_one_line(monkeypatch):
    found = [
        FakeEntryPoint("shadow", "other-plugin", "plugin's"),
        FakeEntryPoint("shadow", "petlbench", "built-in"),
        FakeEntryPoint("mine", "petlbench", "built-in mine"),
        FakeEntryPoint("mine", "late-plugin", "late"),
        FakeEntryPoint("extra", "first-plugin", "first"),
        FakeEntryPoint("extra", "second-plugin", "second"),
        FakeEntryPoint("broken", "bad-plugin", ImportError("no module named bad_mod")),
    ]
    calls = []

    def entry_points(group: str) -> list[FakeEntryPoint]:
        calls.append(group)
        return found

    monkeypatch.setattr(petlbench.registry, "entry_points", entry_points)
    reg: Registry[object] = Registry("widget", entry_point_group="test.widgets")
    reg.register("coded", "in code")
    assert calls == []  # nothing is read before the first use
    assert reg.names() == ["broken", "coded", "extra", "mine", "shadow"]
    assert reg.get("shadow") == "built-in" and reg.get("mine") == "built-in mine"
    assert reg.get("extra") == "first" and reg.get("coded") == "in code"
    assert calls == ["test.widgets"]  # read once
    assert "broken" in reg and [name for name, _ in reg.items()] == ["coded", "extra", "mine", "shadow"]
    with pytest.raises(UserError) as err:
        reg.get("broken")
    assert str(err.value) == (
        "widget 'broken' from bad-plugin failed to import (bad-plugin_mod:X): "
        "ImportError: no module named bad_mod"
    )


def test_from_entry_point_turns_each_entry_point_into_the_registrys_type(monkeypatch):
    ep = EntryPoint("thing", "json:dumps", "test.things")
    monkeypatch.setattr(petlbench.registry, "entry_points", lambda group: [ep])
    reg: Registry[tuple[str, str]] = Registry(
        "thing", entry_point_group="test.things", from_entry_point=lambda e, source: (e.value, source)
    )
    assert reg.items() == [("thing", ("json:dumps", "unknown"))]
