"""Bottleneck adapters (Houlsby et al., ICML 2019; Pfeiffer et al., EACL 2021).

An adapter maps a branch output ``h`` (B, L, d) to ``h + s * up(act(down(h)))`` with
``down: d -> m`` and ``up: m -> d``; the tower then adds the result to the residual stream. Placement:

* ``style="pfeiffer"`` (default): one adapter per layer on the MLP branch, after the MLP and before
  the residual add (KMnP/vpt's and NOAH's ViT adapters: ``x = x + adapter(mlp(ln_2(x)))``);
* ``style="houlsby"``: one on the attention branch and one on the MLP branch of every layer.

The up projection starts at zero (weight and bias), so the adapted model starts exactly equal to the
backbone; the down projection is Xavier-uniform (NOAH), Kaiming-uniform (``nn.Linear``'s default) or
N(0, 0.02) (``bert``, OFA) with a zero bias. Per adapter ``2*d*m + m + d`` parameters: dim 8,
Pfeiffer, on ViT-B/16 gives 12 * (2*768*8 + 8 + 768) = 156,768. On towers whose width differs by
layer (Swin) each adapter has its layer's width ``d_l`` (and ``m = d_l // reduction`` with ``reduction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.errors import UserError

from ._towers import ENCODER_DECODER_KINDS, TowerChoice, tower_defaults
from .base import MAX_WIDTH

STYLES = ("pfeiffer", "houlsby")
INITS = ("xavier", "kaiming", "bert")


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU (NOAH's adapter activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "quick_gelu": QuickGELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


@dataclass
class AdapterConfig:
    style: str = "pfeiffer"  # pfeiffer (after the MLP) | houlsby (after attention and after the MLP)
    dim: int = 8  # bottleneck width m (NOAH's ADAPTER_DIM 8)
    reduction: int | None = None  # if set, m = width // reduction per tower (KMnP/vpt REDUCATION_FACTOR)
    activation: str = "gelu"  # gelu (VPT) | relu (OFA) | quick_gelu (NOAH) | tanh | silu | identity
    scale: float = 1.0  # s
    init: str = "xavier"  # down-projection init: xavier | kaiming | bert; up is always zero
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names


class BottleneckAdapter(nn.Module):
    """``h -> h + scale * up(act(down(h)))``: a residual bottleneck, zero at init."""

    def __init__(self, width: int, dim: int, activation: str, scale: float, init: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(dim, width)
        self.scale = scale
        with torch.no_grad():
            if init == "xavier":
                nn.init.xavier_uniform_(self.down.weight)
            elif init == "bert":
                nn.init.normal_(self.down.weight, std=0.02)
            else:
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.scale * self.up(self.act(self.down(h)))


class Adapter(TowerChoice):
    name = "adapter"
    family = "adapter"
    paper = "Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019 (and Pfeiffer 2021)"
    Config = AdapterConfig
    limits = {"dim": (1, MAX_WIDTH), "reduction": (1, MAX_WIDTH)}

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if c.style not in STYLES:
            raise UserError(f"adapter: style must be one of {', '.join(STYLES)}, not {c.style!r}")
        if c.activation not in ACTIVATIONS:
            raise UserError(
                f"adapter: activation must be one of {', '.join(ACTIVATIONS)}, not {c.activation!r}"
            )
        if c.init not in INITS:
            raise UserError(f"adapter: init must be one of {', '.join(INITS)}, not {c.init!r}")
        if c.reduction is None and c.dim < 1:
            raise UserError(f"adapter: dim (the bottleneck width) must be at least 1, got {c.dim}")
        if c.reduction is not None and c.reduction < 1:
            raise UserError(f"adapter: reduction must be at least 1, got {c.reduction}")

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        """On OFA: both towers and OFA's ``Adapter_Layer`` (ReLU, BERT init, ``--adapter-dim`` 200)."""
        if kind not in ENCODER_DECODER_KINDS:
            return {}
        return {**tower_defaults(kind), "dim": 200, "activation": "relu", "init": "bert"}

    def bottleneck(self, width: int) -> int:
        """The bottleneck width m for a tower of width ``width``."""
        c = self.config
        if c.reduction is None:
            return c.dim
        if width // c.reduction < 1:
            raise UserError(f"adapter: reduction {c.reduction} leaves no bottleneck for width {width}")
        return width // c.reduction

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.adapters = nn.ModuleDict()  # "<tower>" -> ModuleDict("attn"/"mlp" -> ModuleList per layer)
        places = ("attn", "mlp") if c.style == "houlsby" else ("mlp",)
        for tower_name, tower in self.chosen_towers(backbone).items():
            widths = tower.layer_widths  # one width on ViT/CLIP; per stage on Swin
            per_place = nn.ModuleDict(
                {
                    place: nn.ModuleList(
                        BottleneckAdapter(w, self.bottleneck(w), c.activation, c.scale, c.init)
                        for w in widths
                    )
                    for place in places
                }
            )
            self.adapters[tower_name] = per_place
            for layer in range(tower.depth):
                if "attn" in per_place:
                    tower.slots[layer].after_attn = cast(nn.ModuleList, per_place["attn"])[layer]
                tower.slots[layer].after_mlp = cast(nn.ModuleList, per_place["mlp"])[layer]

    def describe(self) -> dict[str, Any]:
        return {
            "style": self.config.style,
            "bottleneck": {
                t: int(cast(BottleneckAdapter, places.get_submodule("mlp.0")).down.out_features)
                for t, places in self.adapters.items()
            },
        }
