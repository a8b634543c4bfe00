"""FacT: factor-tuning, weight increments tensorised across layers (Jie & Deng, AAAI 2023;
JieShibo/PETL-ViT FacT/).

Every linear of every block (q, k, v, the output projection, fc1, fc2) gets an increment
``s * V . core . U`` of its input, where ``U`` (d -> r, ``FacTu``) and ``V`` (r -> d, ``FacTv``, zero at
init) are shared by all layers and ops, and the r x r core differs per op:

* ``fact-tt`` (tensor-train format, FacT/fact_tt.py:L60-128): one ``nn.Linear`` core per op and
  layer, r x r for q/k/v/proj, r -> 4r for fc1 and 4r -> r for fc2 (the MLP's 4d hidden is handled as 4
  blocks of d, L86-100). ``nn.Linear``'s default init for the cores and ``U``.
* ``fact-tk`` (Tucker format, FacT/fact_tk.py:L59-136): the cores are ``FacTc @ FacTp[:, i:i+k]``
  for one shared r x r x r ``FacTc`` and an r x (12 L) ``FacTp`` (4 columns per attention, 8 per MLP,
  in block order), both Xavier-uniform.

Dropout 0.1 on the factored path (``self.dp``); defaults ``dim = 8``, ``s = 1`` (``set_FacT``,
fact_tt.py:L103, fact_tk.py:L107); the VTAB configs choose rank and scale per task
(FacT/configs/{tt,tk}/*.yaml). Counts on ViT-B/16 (d = 768, L = 12), without head:
TT ``2 d r + L (4 r^2 + 8 r^2)``: r = 8 -> 21,504, r = 16 -> 61,440;
TK ``2 d r + 12 L r + r^3``: r = 16 -> 30,976, r = 32 -> 86,528.

FacT shares ``U``/``V`` across layers of one width, so towers whose width changes by stage (Swin)
are refused; the MLP hidden width must be a multiple of the width (4x on every tower here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from ._towers import TowerChoice
from .base import MAX_WIDTH, no_drop_path

ATTN_OPS = ("q", "k", "v", "proj")


@dataclass
class FacTConfig:
    rank: int = 8  # r, FacT's ``dim`` (JieShibo/PETL-ViT FacT/fact_tt.py:L103, fact_tk.py:L107 default 8)
    scale: float = 1.0  # s (same lines: default 1; per task in FacT/configs/{tt,tk}/*.yaml)
    dropout: float = 0.1  # on the factored path (fact_tt.py:L114, L124)
    tower: str = "image"  # image (ViT, CLIP) | text | both (CLIP) | comma-separated tower names


class FacTFactors(nn.Module):
    """One tower's factors and the increments they give. ``mode`` is ``tt`` or ``tk``."""

    def __init__(
        self, mode: str, width: int, ratio: int, depth: int, rank: int, scale: float, dropout: float
    ) -> None:
        super().__init__()
        self.mode, self.width, self.ratio, self.rank, self.scale = mode, width, ratio, rank, scale
        self.u = nn.Linear(width, rank, bias=False)  # FacTu
        self.v = nn.Linear(rank, width, bias=False)  # FacTv
        nn.init.zeros_(self.v.weight)
        self.dropout = nn.Dropout(dropout)
        if mode == "tt":
            self.cores = nn.ModuleList(
                nn.ModuleDict(
                    {
                        **{op: nn.Linear(rank, rank, bias=False) for op in ATTN_OPS},
                        "fc1": nn.Linear(rank, ratio * rank, bias=False),
                        "fc2": nn.Linear(ratio * rank, rank, bias=False),
                    }
                )
                for _ in range(depth)
            )
        else:
            self.per_layer = 4 + 2 * ratio  # columns of FacTp per block (12 on a 4x MLP)
            self.p = nn.Parameter(torch.zeros(rank, self.per_layer * depth))  # FacTp
            self.c = nn.Parameter(torch.zeros(rank, rank, rank))  # FacTc
            nn.init.xavier_uniform_(self.c)
            nn.init.xavier_uniform_(self.p)

    def _tt_core(self, layer: int, op: str) -> nn.Module:
        return cast(nn.ModuleDict, self.cores[layer])[op]

    def _tk_core(self, layer: int, first: int, count: int) -> torch.Tensor:
        start = layer * self.per_layer + first
        return self.c @ self.p[:, start : start + count]  # (r, r, count)

    def attention(self, layer: int, op: str, x: torch.Tensor) -> torch.Tensor:
        """``s * V(dropout(core(U(x))))`` for op q, k, v or proj (fact_tt.py:L64-66, L81)."""
        z = self.u(x)
        if self.mode == "tt":
            z = self._tt_core(layer, op)(z)
        else:
            z = z @ self._tk_core(layer, 0, 4)[:, :, ATTN_OPS.index(op)]  # fact_tk.py:L61-68
        return self.v(self.dropout(z)) * self.scale

    def fc1(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Increment of fc1 (B, N, ratio * d) from its input (fact_tt.py:L90-92, fact_tk.py:L90-96)."""
        batch, n, _ = h.shape
        z = self.u(h)
        if self.mode == "tt":
            z = self._tt_core(layer, "fc1")(z)
        else:
            z = z @ self._tk_core(layer, 4, 2 * self.ratio)[:, :, : self.ratio].reshape(self.rank, -1)
        z = self.dropout(z).reshape(batch, n, self.ratio, self.rank)
        return self.v(z).reshape(batch, n, self.ratio * self.width) * self.scale

    def fc2(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        """Increment of fc2 (B, N, d) from its input, the activation (fact_tt.py:L96-98,
        fact_tk.py:L100-102)."""
        batch, n, _ = a.shape
        z = self.u(a.reshape(batch, n, self.ratio, self.width)).reshape(batch, n, self.ratio * self.rank)
        if self.mode == "tt":
            z = self._tt_core(layer, "fc2")(z)
        else:
            z = z @ self._tk_core(layer, 4, 2 * self.ratio)[:, :, self.ratio :].reshape(self.rank, -1).t()
        return self.v(self.dropout(z)) * self.scale


class _Delta(nn.Module):
    """A slot's view of the shared factors: one op of one layer. Its parameters are the factors',
    so a tower filled with FacT knows it has trainable parameters (the factors are owned by the method,
    not by this view, so they appear once in the method's state)."""

    def __init__(self, factors: FacTFactors, layer: int, op: str) -> None:
        super().__init__()
        self.factors = factors
        self.layer, self.op = layer, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factors
        if self.op == "qkv":
            return torch.cat([f.attention(self.layer, op, x) for op in ("q", "k", "v")], dim=-1)
        if self.op == "proj":
            return f.attention(self.layer, "proj", x)
        return f.fc1(self.layer, x) if self.op == "fc1" else f.fc2(self.layer, x)


class _FacT(TowerChoice):
    mode: ClassVar[str]
    family = "reparameterization"
    paper = "Jie & Deng, FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023"
    Config = FacTConfig
    towers = ("image", "text")
    backbone_kinds = ("vit", "clip")  # Swin: widths differ by stage; OFA: its layers skip the MLP slots
    limits = {"rank": (1, MAX_WIDTH)}
    deviations = (no_drop_path("fact", "the reference trains with drop_path_rate 0.1, FacT/fact_tt.py:L175"),)

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.factors = nn.ModuleDict()
        for tower_name, tower in self.chosen_towers(backbone).items():
            ratio = self._check(tower_name, tower)
            factors = FacTFactors(self.mode, tower.width, ratio, tower.depth, c.rank, c.scale, c.dropout)
            self.factors[tower_name] = factors
            for layer, slots in enumerate(tower.slots):
                slots.qkv_delta = _Delta(factors, layer, "qkv")
                slots.proj_delta = _Delta(factors, layer, "proj")
                slots.fc1_delta = _Delta(factors, layer, "fc1")
                slots.fc2_delta = _Delta(factors, layer, "fc2")

    def _check(self, tower_name: str, tower: Tower) -> int:
        widths = set(tower.layer_widths)
        if len(widths) != 1:
            raise UserError(
                f"{self.name}: FacT shares its factors across layers of one width; tower {tower_name!r} "
                f"has widths {sorted(widths)}"
            )
        hidden = {view.mlp_parts().fc1.out_features for view in tower._views}
        if len(hidden) != 1 or next(iter(hidden)) % tower.width:
            raise UserError(f"{self.name}: the MLP hidden width must be a multiple of {tower.width}")
        return next(iter(hidden)) // tower.width

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "rank": self.config.rank, "scale": self.config.scale}


class FacTTT(_FacT):
    name = "fact-tt"
    mode = "tt"


class FacTTK(_FacT):
    name = "fact-tk"
    mode = "tk"
