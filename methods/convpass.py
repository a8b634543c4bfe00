"""Convpass: convolutional bypasses beside attention and MLP (Jie & Deng, 2022; JieShibo/PETL-ViT).

Every block becomes ``x = x + attn(ln_1(x)) + s * C_a(ln_1(x))`` and
``x = x + mlp(ln_2(x)) + s * C_m(ln_2(x))`` (convpass/vtab/convpass.py:L7-10), where a bypass
``C`` is ``up(dropout(act(conv(act(down(h))))))`` with QuickGELU ``act``, a 1x1 ``down`` (d -> 8), a 3x3
``conv`` (8 -> 8, padding 1) over the patch grid, dropout 0.1 and a 1x1 ``up`` (8 -> d) (L101-149).
The CLS token (and any token before the grid: prompts) goes through the same conv as a 1x1 image, so
only the kernel's centre and the bias touch it (L139-141). Init: ``down`` Xavier-uniform, ``up`` and
all biases zero, the conv either identity at its centre and zero elsewhere or Xavier-uniform
(``xavier_init``, per task in convpass/vtab/configs/convpass/*.yaml); ``s`` is per task there too.
``dim = 8`` (convpass/vtab/train.py:L69). ``mlp_bypass=false`` is the reference's ``convpass_attn``
variant (the attention bypass only, convpass.py:L13-16).

Per bypass ``2 * 8 * d + 8 + d + 8 * 8 * 9 + 8``: on ViT-B/16, 13,648 and 24 bypasses: 327,552. On Swin
the grid is each block's feature map (``Convpass_swin``, L152-185); on the CLIP image tower its patch
grid; the text tower has no grid and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import ParallelBranch
from petlbench.errors import UserError

from ._towers import TowerChoice, parse_towers
from .adapter import QuickGELU
from .base import MAX_WIDTH, no_drop_path


@dataclass
class ConvpassConfig:
    dim: int = 8  # bottleneck channels (JieShibo/PETL-ViT convpass/vtab/train.py:L69 dim=8)
    scale: float = 1.0  # s: per task in convpass/vtab/configs/convpass/*.yaml (0.01 .. 100); 1 most common
    xavier_init: bool = False  # False: identity conv centre (convpass.py:L111-115); per task in the configs
    dropout: float = 0.1  # after the second activation (convpass.py:L126)
    mlp_bypass: bool = True  # False: the reference's convpass_attn variant (attention bypass only, L13-16)
    tower: str = "image"  # image (ViT, Swin, CLIP image tower); needs a patch grid


class ConvBypass(nn.Module):
    """One bypass on tokens ``h`` (B, L, d) whose last ``rows * cols`` tokens are the patch grid."""

    def __init__(
        self, width: int, dim: int, grid: tuple[int, int], xavier_init: bool, dropout: float
    ) -> None:
        super().__init__()
        self.grid = grid
        self.dim = dim
        self.down = nn.Linear(width, dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.up = nn.Linear(dim, width)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            if xavier_init:
                nn.init.xavier_uniform_(self.conv.weight)
            else:
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] += torch.eye(dim)
            nn.init.zeros_(self.conv.get_parameter("bias"))
            nn.init.xavier_uniform_(self.down.weight)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        rows, cols = self.grid
        lead = length - rows * cols
        if lead < 0:
            raise ValueError(f"convpass: {length} tokens cannot hold a {rows}x{cols} patch grid")
        z = self.act(self.down(h))
        grid = z[:, lead:].reshape(batch, rows, cols, self.dim).permute(0, 3, 1, 2)
        grid = self.conv(grid).permute(0, 2, 3, 1).reshape(batch, rows * cols, self.dim)
        parts = [grid]
        if lead:  # a 1x1 image each: the kernel's centre and the bias
            parts.insert(0, F.linear(z[:, :lead], self.conv.weight[:, :, 1, 1], self.conv.bias))
        z = torch.cat(parts, dim=1) if lead else grid
        return self.up(self.dropout(self.act(z)))


class Scaled(nn.Module):
    def __init__(self, module: nn.Module, scale: float) -> None:
        super().__init__()
        self.module = module
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h) * self.scale


class Convpass(TowerChoice):
    name = "convpass"
    family = "adapter"
    paper = "Jie & Deng, Convolutional Bypasses Are Better Vision Transformer Adapters, arXiv 2207.07039"
    Config = ConvpassConfig
    towers = ("image",)
    backbone_kinds = ("vit", "swin", "clip")  # OFA has no patch grid in its token stream
    limits = {"dim": (1, MAX_WIDTH)}
    deviations = (
        no_drop_path(
            "convpass",
            "the reference trains with drop_path_rate 0.1 on the branches and bypasses, "
            "convpass/vtab/train.py:L66",
        ),
    )

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return cls.towers  # a patch grid: the image tower (TowerChoice's default needs none)

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        names = parse_towers(self.name, c.tower)
        if "text" in names:
            raise UserError("convpass: the text tower has no patch grid to convolve; use tower=image")

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.bypasses = nn.ModuleDict()
        for tower_name, tower in self.chosen_towers(backbone).items():
            grids = [grid for grid in map(tower.layer_grid, range(tower.depth)) if grid is not None]
            if len(grids) < tower.depth:
                raise UserError(f"convpass: tower {tower_name!r} of {backbone.name!r} has no patch grid")
            places = ("attn", "mlp") if c.mlp_bypass else ("attn",)
            per_place = {
                place: nn.ModuleList(
                    ConvBypass(w, c.dim, grid, c.xavier_init, c.dropout)
                    for w, grid in zip(tower.layer_widths, grids, strict=True)
                )
                for place in places
            }
            self.bypasses[tower_name] = nn.ModuleDict(per_place)
            for layer in range(tower.depth):
                slots = tower.slots[layer]
                slots.parallel_attn = ParallelBranch(Scaled(per_place["attn"][layer], c.scale), normed=True)
                if "mlp" in per_place:
                    slots.parallel_mlp = ParallelBranch(Scaled(per_place["mlp"][layer], c.scale), normed=True)

    def describe(self) -> dict[str, Any]:
        return {"dim": self.config.dim, "scale": self.config.scale, "xavier_init": self.config.xavier_init}
