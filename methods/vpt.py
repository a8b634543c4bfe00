"""VPT: visual prompt tuning, shallow and deep (Jia et al., ECCV 2022), as KMnP/vpt implements it.

Prompts enter after CLS (image) or after SOS (CLIP text) with no position embedding. Deep mode
gives every layer its own prompts, which replace the previous layer's outputs at those positions.
Init is uniform in +-sqrt(6 / (3*16*16 + d)): Xavier with the reference's ViT-B/16 patch fan-in
(the 16 is the reference's constant, kept for every backbone).

On Swin (backbones/swin.py) layer ``l``'s prompts have that layer's stage width and are shared by
all windows, as in the reference's Swin variant; the init bound uses the tower's first width
(the reference's ``embed_dim``), with the same 3*16*16 fan-in constant (the reference's Swin code
uses its 4x4 patch there: bound 0.185 instead of 0.0818 on Swin-B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import InputTokens
from petlbench.errors import UserError

from .base import Method


@dataclass
class VPTConfig:
    num_tokens: int = 5  # p (KMnP/vpt NUM_TOKENS default)
    deep: bool = False
    depth: int | None = None  # layers that get their own prompts in deep mode (None: all)
    dropout: float = 0.0  # prompt dropout (0.1 in the reference's deep runs)
    tower: str = "image"  # image | text | both (text and both need CLIP)
    text_tokens: int | None = None  # tokens per layer on the text tower (None: num_tokens)


class VPT(Method):
    name = "vpt"
    family = "prompt"
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022"
    Config = VPTConfig
    towers = ("image", "text")

    def validate_config(self) -> None:
        c = self.config
        if c.tower not in ("image", "text", "both"):
            raise UserError(f"vpt: tower must be image, text or both, not {c.tower!r}")
        if c.num_tokens < 1 or (c.text_tokens is not None and c.text_tokens < 1):
            raise UserError("vpt: num_tokens must be at least 1")
        if not 0.0 <= c.dropout < 1.0:
            raise UserError("vpt: dropout must be in [0, 1)")

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ("image",)

    def _tower_names(self) -> list[str]:
        return ["image", "text"] if self.config.tower == "both" else [self.config.tower]

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.prompts = nn.ModuleDict()
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else None
        for tower_name in self._tower_names():
            if tower_name not in backbone.towers:
                raise UserError(f"vpt: backbone {backbone.name!r} has no {tower_name} tower")
            tower = backbone.tower(tower_name)
            n = c.text_tokens if tower_name == "text" and c.text_tokens else c.num_tokens
            layers = (c.depth or tower.depth) if c.deep else 1
            if layers > tower.depth:
                raise UserError(f"vpt: depth {layers} exceeds the {tower_name} tower's {tower.depth} layers")
            bound = math.sqrt(6.0 / (3 * 16 * 16 + tower.width))
            params = nn.ParameterList(
                nn.Parameter(torch.empty(n, tower.layer_width(layer)).uniform_(-bound, bound))
                for layer in range(layers)
            )
            self.prompts[tower_name] = params
            for layer, p in enumerate(params):
                tower.slots[layer].input_tokens = InputTokens(
                    p, mode="replace", position="after_first", dropout=self.dropout
                )

    def describe(self) -> dict:
        return {
            "tokens_per_layer": {
                name: [int(p.shape[0]) for p in params] for name, params in self.prompts.items()
            }
        }
