"""The entry-point registry: built-ins come through the same group a plugin uses."""

import pytest

from petlbench.errors import UserError
from petlbench.methods import get_method, method_entries
from petlbench.methods.base import Method
from petlbench.methods.registry import method_options


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


def test_clip_methods_are_registered_with_their_papers():
    """Issue 18: each CLIP method behind the interface, listed with its paper, refusing non-CLIP backbones."""
    entries = method_entries()
    for name in (
        "kgcoop",
        "clip-adapter",
        "tip-adapter",
        "tip-adapter-f",
        "clip-lora",
        "maple",
        "ivlp",
        "promptsrc",
    ):
        assert name in entries and not entries[name].plugin
        cls = get_method(name)
        assert cls.name == name and cls.paper and cls.backbone_kinds == ("clip",)
        assert all(o.help for o in method_options(cls)), name  # every option says its reference value
        with pytest.raises(UserError, match="needs a clip backbone"):
            cls.check_compatible("tiny-vit", "vit", ("image",))


def test_a_plus_name_composes_the_registered_methods():
    composed = get_method("vpt+bitfit")
    assert issubclass(composed, Method) and composed.name == "vpt+bitfit"
    with pytest.raises(UserError, match="unknown method 'nope'; known methods: adapt"):
        get_method("vpt+nope")
