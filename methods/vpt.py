"""VPT: visual prompt tuning, shallow and deep (Jia et al., ECCV 2022), as KMnP/vpt implements it.

Prompts enter after CLS (image) or after SOS (CLIP text) with no position embedding. Deep mode
gives every layer its own prompts, which replace the previous layer's outputs at those positions.
Init is uniform in +-sqrt(6 / (3*16*16 + d)): Xavier with the reference's ViT-B/16 patch fan-in
(the 16 is the reference's constant, kept for every backbone).

On Swin (backbones/swin.py) layer ``l``'s prompts have that layer's stage width and are shared by
all windows, as in the reference's Swin variant; the init bound uses the tower's first width
(the reference's ``embed_dim``), with the same 3*16*16 fan-in constant (the reference's Swin code
uses its 4x4 patch there: bound 0.185 instead of 0.0818 on Swin-B).

On the OFA encoder-decoder (towers ``encoder`` and ``decoder``) ``tower`` defaults to ``encoder``
(the ``[image ; text]`` stream, where visual prompts belong); ``decoder``, a comma-separated list or
``both`` (every tower of the backbone) prompt the decoder too. Encoder prompts go after the first
image patch, decoder prompts after BOS (causal: every later position sees them, BOS does not), both
with zero position bias and no padding, and are stripped before the tower's final LayerNorm, so the
memory and the logits keep the backbone's positions. ``text_tokens`` applies to the decoder (the text
side) as to CLIP's text tower. Deep VPT on OFA-Base's encoder with 10 tokens: 10 * 6 * 768 = 46,080.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import InputTokens
from petlbench.errors import UserError

from ._towers import ENCODER_DECODER_KINDS, parse_towers, resolve_towers
from .base import Method


@dataclass
class VPTConfig:
    num_tokens: int = 5  # p (KMnP/vpt NUM_TOKENS default)
    deep: bool = False
    depth: int | None = None  # layers that get their own prompts in deep mode (None: all)
    dropout: float = 0.0  # prompt dropout (0.1 in the reference's deep runs)
    tower: str = "image"  # image | text | both (text and both need CLIP) | encoder | decoder (OFA)
    text_tokens: int | None = None  # tokens per layer on the text tower / OFA decoder (None: num_tokens)


class VPT(Method):
    name = "vpt"
    family = "prompt"
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022"
    Config = VPTConfig
    towers = ("image", "text", "encoder", "decoder")

    def validate_config(self) -> None:
        c = self.config
        parse_towers(self.name, c.tower)  # image, text, encoder, decoder, a list of them, or both
        if c.num_tokens < 1 or (c.text_tokens is not None and c.text_tokens < 1):
            raise UserError("vpt: num_tokens must be at least 1")
        if not 0.0 <= c.dropout < 1.0:
            raise UserError("vpt: dropout must be in [0, 1)")

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ()  # any of ``towers``: image (ViT, Swin, CLIP) or encoder/decoder (OFA)

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, str]:
        return {"tower": "encoder"} if kind in ENCODER_DECODER_KINDS else {}

    def _tower_names(self, backbone: Backbone) -> list[str]:
        spec = self.config.tower.strip().lower()
        if spec == "both" and "image" in backbone.towers:
            return ["image", "text"]  # CLIP's two towers (refused below where there is no text tower)
        return list(resolve_towers(self.name, spec, backbone))

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.prompts = nn.ModuleDict()
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else None
        for tower_name in self._tower_names(backbone):
            if tower_name not in backbone.towers:
                raise UserError(f"vpt: backbone {backbone.name!r} has no {tower_name} tower")
            tower = backbone.tower(tower_name)
            text_side = tower_name in ("text", "decoder")
            n = c.text_tokens if text_side and c.text_tokens else c.num_tokens
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
