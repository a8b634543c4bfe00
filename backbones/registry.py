"""Backbones by name, from the ``petlbench.backbones`` entry-point group: the built-ins
(backbones/catalog.py, registered in our pyproject) and third-party ones take the same path."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from importlib.metadata import EntryPoint
from typing import Any

from petlbench.errors import UserError
from petlbench.registry import BUILTIN, Registry, load_entry_point

from .base import Backbone

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: how to build it, and its facts declared as data (known without building).

    ``pretrained`` is the checkpoint that ``build(True)`` loads, as ``<library>:<tag>``
    (``"timm:vit_base_patch16_224.orig_in21k"``, ``"open_clip:ViT-B-16-quickgelu/openai"``,
    ``"petlbench:micro-clip (shipped)"``), or None for seeded random-init backbones. ``mean``/``std``
    normalise [0, 1] pixels, ``image_size`` is the square input side, ``towers`` the tower names;
    every built-in entry declares them and a test checks each against the backbone it builds
    (tests/backbones/test_registry_facts.py). Plugin entries declare nothing (``declared`` is False):
    build one to learn its facts.
    """

    name: str
    kind: str
    description: str
    build: Callable[[bool], Backbone]  # pretrained -> backbone
    source: str = BUILTIN
    _: KW_ONLY
    pretrained: str | None = None
    mean: Triple | None = None
    std: Triple | None = None
    image_size: int | None = None
    towers: tuple[str, ...] | None = None
    generative: bool = False  # an encoder-decoder that generates text (OFA): runs seq2seq tasks

    @property
    def declared(self) -> bool:
        return None not in (self.mean, self.std, self.image_size, self.towers)

    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` as declared; None for a plugin entry (facts unknown)."""
        if self.mean is None or self.std is None:
            return None
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    def facts(self) -> dict[str, Any]:
        """The declared facts as JSON-ready data (None where undeclared)."""
        return {
            "pretrained": self.pretrained,
            **(self.normalization() or {"mean": None, "std": None}),
            "image_size": self.image_size,
            "towers": list(self.towers) if self.towers is not None else None,
        }


IMAGE = ("image",)
IMAGE_TEXT = ("image", "text")
ENCODER_DECODER = ("encoder", "decoder")
GROUP = "petlbench.backbones"


def entry_of(ep: EntryPoint, source: str) -> BackboneEntry:
    """An entry point's :class:`BackboneEntry` (declared facts), or, for a plain build function
    ``build(pretrained) -> Backbone``, an entry whose facts are known only once built (kind
    "plugin"). A plugin that fails to import is listed as broken and refuses to build in one line."""
    try:
        obj = load_entry_point(ep, "backbone", source)
    except UserError as err:
        reason = str(err)

        def broken(pretrained: bool) -> Backbone:
            raise UserError(reason)

        return BackboneEntry(ep.name, "broken", reason, broken, source=source)
    if isinstance(obj, BackboneEntry):
        return dataclasses.replace(obj, name=ep.name, source=source)
    if callable(obj):
        return BackboneEntry(ep.name, "plugin", f"from {source}", obj, source=source)
    raise UserError(f"backbone entry point {ep.name!r} ({ep.value}) is neither a BackboneEntry nor a builder")


BACKBONES: Registry[BackboneEntry] = Registry("backbone", entry_point_group=GROUP, from_entry_point=entry_of)


def backbone_entries() -> dict[str, BackboneEntry]:
    """Every backbone of the ``petlbench.backbones`` entry-point group, built-ins first."""
    entries = BACKBONES.items()
    if not any(e.source == BUILTIN for _, e in entries):
        raise UserError(
            "no built-in backbones are registered (the package's entry points are missing): "
            "reinstall it with pip install -e ."
        )
    return dict(sorted(entries, key=lambda item: (item[1].source != BUILTIN, item[0])))


def list_backbones() -> list[BackboneEntry]:
    return list(backbone_entries().values())


def backbone_entry(name: str) -> BackboneEntry:
    return BACKBONES.get(name)


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone; ``pretrained=False`` gives the same architecture with random weights."""
    backbone = backbone_entry(name).build(pretrained)
    backbone.freeze()
    return backbone
