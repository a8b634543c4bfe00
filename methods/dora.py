"""DoRA: weight-decomposed low-rank adaptation (Liu et al., ICML 2024), as peft implements it.

On the same targets as our LoRA (the ``qkv_delta`` slot; default q and v of the fused projection), each
adapted projection ``W`` (rows of the fused qkv weight) becomes ``m * (W + s B A) / ||W + s B A||``
with one magnitude per output row, ``m`` initialised to the row norms of ``W`` (B = 0) and the norm
treated as a constant in the backward pass (peft ``tuners/lora/dora.py`` ``DoraLinearLayer``:
``get_weight_norm`` and ``forward``, which detach it as the paper's section 4.3 suggests). The output
added to the frozen projection is ``(m / n - 1) * W x + (m / n) * s B A x`` (the bias is not
rescaled). peft's LoRA defaults apply (r = 8, alpha = 8, no dropout).

Counts: LoRA's plus one magnitude per adapted row: on ViT-B/16, r = 8 on q and v,
294,912 + 12 * 2 * 768 = 313,344; on the fused qkv 294,912 + 12 * 2,304 = 322,560.
:meth:`DoRA.merge` writes ``m * (W + s B A) / ||W + s B A||`` into the frozen rows and empties the
slots; :meth:`DoRA.unmerge` restores ``W`` (to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone

from .lora import PROJECTIONS, LoRA, LoRAConfig, LoRAQKV, parse_targets


@dataclass
class DoRAConfig(LoRAConfig):
    """LoRA's options and defaults (peft LoraConfig with ``use_dora=True``)."""

    rank: int = 8  # r (peft LoraConfig r=8)
    alpha: float = 8.0  # scaling = alpha / rank (peft LoraConfig lora_alpha=8)
    targets: str = "q,v"  # as our LoRA: comma-separated subset of q, k, v; or qkv (the fused projection)
    dropout: float = 0.0  # on the adapted input (peft LoraConfig lora_dropout=0.0)
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names
    merge: bool = False  # after training, merge m (W + sBA) / ||W + sBA|| into the weights (a second stage)


class DoRAQKV(LoRAQKV):
    """One layer's DoRA on the fused qkv projection whose weight ``weight()`` returns (read in place)."""

    def __init__(
        self,
        width: int,
        rank: int,
        targets: tuple[str, ...],
        scaling: float,
        dropout: float,
        weight: Callable[[], torch.Tensor],
    ) -> None:
        super().__init__(width, rank, targets, scaling, dropout)
        self.__dict__["_weight"] = weight  # the backbone's, not the method's
        with torch.no_grad():
            self.magnitude = nn.ParameterDict(
                {t: nn.Parameter(torch.linalg.norm(self._rows(t), dim=1).float()) for t in targets}
            )
        self._merge_norms: dict[str, torch.Tensor] = {}

    def _rows(self, t: str) -> torch.Tensor:
        weight = self.__dict__["_weight"]()
        if t == "qkv":
            return weight
        i = PROJECTIONS.index(t)
        return weight[i * self.width : (i + 1) * self.width]

    def _lora_weight(self, t: str) -> torch.Tensor:
        return self.lora_B[t] @ self.lora_A[t]

    def _norm(self, t: str, rows: torch.Tensor) -> torch.Tensor:
        lora = self._lora_weight(t).detach().to(rows.dtype)
        return torch.linalg.norm(rows + self.scaling * lora, dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        updates = {}
        for t in self.targets:
            rows = self._rows(t).to(x.dtype)
            scale = (self.magnitude[t].to(x.dtype) / self._norm(t, rows)).view(1, -1)
            lora = F.linear(F.linear(x, self.lora_A[t]), self.lora_B[t])
            updates[t] = (scale - 1) * F.linear(x, rows) + scale * lora * self.scaling
        if self.targets == ("qkv",):
            return updates["qkv"]
        zeros = next(iter(updates.values())).new_zeros(*x.shape[:-1], self.width)
        return torch.cat([updates.get(t, zeros) for t in PROJECTIONS], dim=-1)

    @torch.no_grad()
    def merge_into_weight(self) -> None:
        for t in self.targets:
            rows = self._rows(t)
            norm = self._norm(t, rows)
            self._merge_norms[t] = norm
            scale = (self.magnitude[t].to(rows.dtype) / norm).view(-1, 1)
            rows.copy_(scale * (rows + self.scaling * self._lora_weight(t).to(rows.dtype)))

    @torch.no_grad()
    def unmerge_from_weight(self) -> None:
        for t in self.targets:
            rows = self._rows(t)
            scale = (self._merge_norms.pop(t) / self.magnitude[t].to(rows.dtype)).view(-1, 1)
            rows.copy_(rows * scale - self.scaling * self._lora_weight(t).to(rows.dtype))


class DoRA(LoRA):
    name = "dora"
    paper = "Liu et al., DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024 (peft's implementation)"
    Config = DoRAConfig

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        targets = parse_targets(c.targets)
        for tower_name, tower in self.chosen_towers(backbone).items():
            self.lora[tower_name] = nn.ModuleList(
                DoRAQKV(w, c.rank, targets, self.scaling, c.dropout, view.qkv_weight)
                for w, view in zip(tower.layer_widths, tower._views, strict=True)
            )
            self._towers[tower_name] = tower
        self._bind_slots()

    def _write_into_weights(self, undo: bool) -> None:
        for _, layers in self._updates():
            for module in (cast(DoRAQKV, m) for m in layers):
                if undo:
                    module.unmerge_from_weight()
                else:
                    module.merge_into_weight()
