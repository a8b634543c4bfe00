"""Zero-shot CLIP: class prompts through the frozen text tower; nothing is trained."""

from __future__ import annotations

from petlbench.backbones.base import Backbone

from .base import Method


class ZeroShot(Method):
    name = "zeroshot"
    family = "baseline"
    paper = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"
    towers = ()
    backbone_kinds = ("clip",)
    head = "text"
    trains = False

    def attach(self, backbone: Backbone) -> None:
        """Nothing to attach: the frozen backbone and the text head are the whole model."""
