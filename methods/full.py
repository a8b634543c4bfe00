"""Full fine-tuning: every backbone weight trains (the upper-bound baseline).

This is the one method that deliberately unfreezes the backbone; its checkpoint therefore holds the
backbone's weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from petlbench.backbones.base import Backbone

from .base import Method


class FullFineTune(Method):
    name = "full"
    family = "baseline"
    paper = "full fine-tuning (baseline in Jia et al. 2022, VPT)"
    towers = ("image",)
    copies_unfrozen = False  # a copy of the whole tower: full fine-tuning cannot be detached
    _backbone: Backbone  # set by attach, outside the module tree

    def attach(self, backbone: Backbone) -> None:
        self.__dict__["_backbone"] = backbone  # a reference: the classifier owns the backbone
        for p in backbone.tower("image").parameters():
            p.requires_grad_(True)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self._backbone.tower("image").parameters() if p.requires_grad)

    def method_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._backbone.tower("image").state_dict().items()}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        self._backbone.tower("image").load_state_dict(state)
