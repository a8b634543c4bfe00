"""The entry-point registry: built-ins come through the same group a plugin uses."""

import pytest

from petlbench.errors import UserError
from petlbench.methods import get_method, method_entries
from petlbench.methods.base import Method


def test_builtins_are_registered_through_entry_points():
    entries = method_entries()
    for name in ("zeroshot", "linear", "full", "vpt"):
        assert name in entries and not entries[name].plugin
        cls = get_method(name)
        assert issubclass(cls, Method) and cls.name == name


def test_unknown_method_lists_known_ones():
    with pytest.raises(UserError, match="unknown method 'nope'.*vpt"):
        get_method("nope")


def test_incompatible_pairing_is_refused():
    with pytest.raises(UserError, match="needs a clip backbone"):
        get_method("zeroshot").check_compatible("tiny-vit", "vit", ("image",))
