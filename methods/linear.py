"""Linear probe: a linear classifier on frozen image features (the head is all that trains)."""

from __future__ import annotations

from petlbench.backbones.base import Backbone

from .base import Method


class LinearProbe(Method):
    name = "linear"
    family = "baseline"
    paper = "linear probing of frozen features (e.g. Radford et al. 2021; Jia et al. 2022, VPT)"
    towers = ()
    head = "linear"

    def attach(self, backbone: Backbone) -> None:
        """Nothing to attach: the trainable linear head is created by the harness."""
