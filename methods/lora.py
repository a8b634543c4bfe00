"""LoRA: low-rank updates of the frozen attention projections (Hu et al., ICLR 2022).

Through the ``qkv_delta`` slot: for every layer of the chosen towers the fused qkv projection gets
``scaling * B A x`` added, with ``scaling = alpha / r``, ``A`` (r, d) Kaiming-uniform (a = sqrt 5) and
``B`` zero, so the model starts equal to the backbone (PEFT's defaults: r = 8, alpha = 8, no dropout).

``targets`` picks what is adapted:

* a comma-separated subset of ``q``, ``k``, ``v`` (default ``q,v``, the paper's and PEFT's setting):
  one (A, B) pair per projection, ``B`` of shape (d, r); 2 * 2 * r * d per layer for q and v;
* ``qkv``: one pair on the fused projection (NOAH's ``qkv_super_prompt``), ``B`` of shape (3d, r);
  r * (d + 3d) per layer.

Both give 12 * 8 * (768 + 2304) = 294,912 at r = 8 on ViT-B/16; on Swin each layer uses its own
width ``d_l`` (per layer ``4 * r * d_l`` for q and v).

:meth:`LoRA.merge` adds ``scaling * B A`` into the frozen qkv weights in place and empties the slots,
so inference costs exactly the backbone's; :meth:`LoRA.unmerge` undoes it (to float rounding). With
``merge=true`` a second, training-free stage merges after training. The merged flag travels with the
method's state, so a checkpoint of a merged model reloads merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from ._folding import FoldsIntoWeights
from ._towers import TowerChoice, tower_defaults
from .base import MAX_WIDTH

PROJECTIONS = ("q", "k", "v")


@dataclass
class LoRAConfig:
    rank: int = 8  # r
    alpha: float = 8.0  # scaling = alpha / rank
    targets: str = "q,v"  # comma-separated subset of q, k, v; or qkv (one update of the fused projection)
    dropout: float = 0.0  # dropout on the LoRA branch's input
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names
    merge: bool = False  # after training, merge the updates into the frozen weights (a second stage)


def parse_targets(spec: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip().lower() for t in spec.split(",") if t.strip()))
    if names == ("qkv",):
        return names
    if not names or any(n not in PROJECTIONS for n in names):
        raise UserError(
            f"lora: targets must be a comma-separated subset of q, k, v, or qkv (the fused projection); "
            f"got {spec!r}"
        )
    return tuple(n for n in PROJECTIONS if n in names)  # canonical q, k, v order


class LoRAQKV(nn.Module):
    """One layer's LoRA: ``x`` (B, L, d) -> the delta of the fused qkv projection (B, L, 3d)."""

    def __init__(
        self, width: int, rank: int, targets: tuple[str, ...], scaling: float, dropout: float
    ) -> None:
        super().__init__()
        self.width = width
        self.targets = targets
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        out = 3 * width if targets == ("qkv",) else width
        self.lora_A = nn.ParameterDict({t: nn.Parameter(torch.empty(rank, width)) for t in targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(out, rank)) for t in targets})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def _update(self, t: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A[t]), self.lora_B[t]) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        if self.targets == ("qkv",):
            return self._update("qkv", x)
        updates = {t: self._update(t, x) for t in self.targets}
        # Zeros for the projections left alone, in the updates' dtype (bf16 under autocast).
        zeros = next(iter(updates.values())).new_zeros(*x.shape[:-1], self.width)
        return torch.cat([updates.get(t, zeros) for t in PROJECTIONS], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B A`` placed in the rows of the fused (3d, d) qkv weight."""
        if self.targets == ("qkv",):
            return self.lora_B["qkv"] @ self.lora_A["qkv"] * self.scaling
        A = next(iter(self.lora_A.values()))
        rows = [
            self.lora_B[t] @ self.lora_A[t] * self.scaling
            if t in self.lora_A
            else A.new_zeros(self.width, self.width)
            for t in PROJECTIONS
        ]
        return torch.cat(rows, dim=0)


class LoRA(FoldsIntoWeights, TowerChoice):
    name = "lora"
    family = "reparameterization"
    paper = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"
    Config: ClassVar[type] = LoRAConfig
    limits = {"rank": (1, MAX_WIDTH)}
    fold_option = "merge"
    fold_stage = ("merge", "merge the low-rank updates into the frozen weights")
    fold_key = "merged"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.lora = nn.ModuleDict()  # "<tower>" -> ModuleList of LoRAQKV, one per layer
        self._towers: dict[str, Tower] = {}  # plain dict: the method must not own backbone weights

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if not math.isfinite(c.alpha) or c.alpha <= 0:
            raise UserError(f"lora: alpha must be a positive number, got {c.alpha}")
        parse_targets(c.targets)

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        return tower_defaults(kind)

    @property
    def scaling(self) -> float:
        return self.config.alpha / self.config.rank

    @property
    def merged(self) -> bool:
        return self._in_weights

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        targets = parse_targets(c.targets)
        for tower_name, tower in self.chosen_towers(backbone).items():
            self.lora[tower_name] = nn.ModuleList(
                LoRAQKV(w, c.rank, targets, self.scaling, c.dropout) for w in tower.layer_widths
            )
            self._towers[tower_name] = tower
        self._bind_slots()

    def _updates(self) -> Iterator[tuple[str, list[LoRAQKV]]]:
        """Each attached tower's name and its per-layer updates (``self.lora`` holds them as
        ``nn.ModuleList`` objects, which type their items as plain modules)."""
        for tower_name, layers in self.lora.items():
            yield tower_name, [cast(LoRAQKV, module) for module in cast(nn.ModuleList, layers)]

    def _bind_slots(self) -> None:
        for tower_name, layers in self._updates():
            tower = self._towers[tower_name]
            for layer, module in enumerate(layers):
                tower.slots[layer].qkv_delta = None if self._in_weights else module

    # ----- merging ------------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold every update into its frozen qkv weight and empty the ``qkv_delta`` slots (idempotent)."""
        self._set_in_weights(True)

    def unmerge(self) -> None:
        """Subtract the updates from the weights again and refill the slots (idempotent)."""
        self._set_in_weights(False)

    def _write_into_weights(self, undo: bool) -> None:
        sign = -1.0 if undo else 1.0
        for tower_name, layers in self._updates():
            for view, module in zip(self._towers[tower_name]._views, layers, strict=True):
                weight = view.qkv_weight()
                weight.add_(sign * module.delta_weight().to(weight.dtype))

    def describe(self) -> dict[str, Any]:
        return {
            "targets": list(parse_targets(self.config.targets)),
            "scaling": self.scaling,
            "merged": self._in_weights,
        }
