"""AdaptFormer: a scaled bottleneck beside every MLP (Chen et al., NeurIPS 2022; ShoufaChen/AdaptFormer).

Each block's MLP sublayer becomes ``x + mlp(ln_2(x)) + s * up(dropout(relu(down(x))))``: the
adapter reads the residual stream ``x`` itself, not ``ln_2(x)`` (``ffn_option="parallel"``,
``adaptmlp(x, add_residual=False)`` before ``norm2``, models/custom_modules.py:L76-93), with no
LayerNorm of its own (``ffn_adapter_layernorm_option="none"``), ``s = 0.1``
(``ffn_adapter_scalar``), bottleneck 64 (``--ffn_num``, main_image.py:L114, L184-191), ReLU, dropout
0.1 (custom_modules.py:L70), and the ``lora`` init: down Kaiming-uniform (a = sqrt 5), up and both
biases zero (models/adapter.py:L36-48), so the adapted model starts equal to the backbone.

Per layer ``2 * d * m + m + d``: on ViT-B/16 with m = 64, 12 * (2 * 768 * 64 + 64 + 768) = 1,189,632.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import ParallelBranch

from ._towers import TowerChoice
from .base import MAX_WIDTH, no_drop_path


@dataclass
class AdaptFormerConfig:
    dim: int = 64  # bottleneck width (ShoufaChen/AdaptFormer main_image.py:L114 --ffn_num 64)
    scale: float = 0.1  # s (main_image.py:L190 ffn_adapter_scalar "0.1")
    dropout: float = 0.1  # on the bottleneck (models/custom_modules.py:L70)
    tower: str = "image"  # image (ViT, Swin, CLIP) | text | both (CLIP) | comma-separated tower names


class ParallelAdapter(nn.Module):
    """``x -> scale * up(dropout(relu(down(x))))`` (ShoufaChen/AdaptFormer models/adapter.py:L50-70)."""

    def __init__(self, width: int, dim: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale


class AdaptFormer(TowerChoice):
    name = "adaptformer"
    family = "adapter"
    paper = (
        "Chen et al., AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition, NeurIPS 2022"
    )
    Config = AdaptFormerConfig
    towers = ("image", "text")
    backbone_kinds = ("vit", "swin", "clip")  # OFA's layers do not read the parallel-branch slots
    limits = {"dim": (1, MAX_WIDTH)}
    deviations = (
        no_drop_path(
            "adaptformer",
            "the reference's ViT applies its drop_path to the MLP branch, models/custom_modules.py:L83",
        ),
    )

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.adapters = nn.ModuleDict()
        for tower_name, tower in self.chosen_towers(backbone).items():
            layers = nn.ModuleList(ParallelAdapter(w, c.dim, c.scale, c.dropout) for w in tower.layer_widths)
            self.adapters[tower_name] = layers
            for layer, module in enumerate(layers):
                tower.slots[layer].parallel_mlp = ParallelBranch(module, normed=False)

    def describe(self) -> dict[str, Any]:
        return {"dim": self.config.dim, "scale": self.config.scale}
