"""VeRA: vector-based random matrix adaptation (Kopiczko et al., ICLR 2024), as peft implements it.

One pair of frozen random matrices ``A`` (r, in) and ``B`` (out, r) is shared by every adapted
projection (sized for the largest and sliced, ``A[:, :in]``, ``B[:out]``); each projection trains two
vectors only, ``d`` (r) and ``b`` (out), and adds ``b * B (d * A x)`` (peft ``tuners/vera/layer.py``
``Linear.forward``). ``A`` and ``B`` are Kaiming-uniform (bound ``sqrt(6 / fan_in)``) drawn, A first,
from a CPU generator seeded with ``projection_prng_key`` (peft ``tuners/vera/model.py``
``_kaiming_init`` and ``_init_vera_A_vera_B``); ``d`` starts at ``d_initial`` = 0.1 and ``b`` at zero, so
the model starts equal to the backbone. peft's defaults: r = 256, no dropout, key 0
(``tuners/vera/config.py``). The matrices are buffers saved with the method (peft's
``save_projection=True``).

Targets as our LoRA's (the ``qkv_delta`` slot; default q and v of the fused projection). Counts: per
adapted projection ``r + out``: on ViT-B/16, r = 256 on q and v, 12 * 2 * (256 + 768) = 24,576; on the
fused qkv 12 * (256 + 2,304) = 30,720.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone

from ._towers import TowerChoice, tower_defaults
from .base import MAX_WIDTH
from .lora import PROJECTIONS, parse_targets


@dataclass
class VeRAConfig:
    rank: int = 256  # r (peft VeraConfig r=256)
    d_initial: float = 0.1  # initial value of every d (peft VeraConfig d_initial=0.1)
    dropout: float = 0.0  # on the adapted input (peft VeraConfig vera_dropout=0.0)
    projection_prng_key: int = 0  # seed of the shared random A and B (peft VeraConfig projection_prng_key=0)
    targets: str = "q,v"  # as our LoRA: comma-separated subset of q, k, v; or qkv (the fused projection)
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """peft's ``_kaiming_init``: uniform in +- sqrt(6 / fan_in), fan_in = shape[1], from ``generator``."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRAQKV(nn.Module):
    """One layer's VeRA vectors; ``x`` (B, L, d) -> the delta of the fused qkv projection (B, L, 3d)."""

    def __init__(
        self, owner: VeRA, width: int, targets: tuple[str, ...], rank: int, d_initial: float, dropout: float
    ) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner  # holds the shared A and B
        self.width, self.targets = width, targets
        out = 3 * width if targets == ("qkv",) else width
        self.lambda_d = nn.ParameterDict(
            {t: nn.Parameter(torch.full((rank,), float(d_initial))) for t in targets}
        )
        self.lambda_b = nn.ParameterDict({t: nn.Parameter(torch.zeros(out)) for t in targets})
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self.__dict__["_owner"]
        x = self.dropout(x)
        a = owner.vera_A[:, : x.shape[-1]].to(x.dtype)
        updates = {}
        for t in self.targets:
            b = owner.vera_B[: self.lambda_b[t].shape[0]].to(x.dtype)
            updates[t] = self.lambda_b[t] * F.linear(self.lambda_d[t] * F.linear(x, a), b)
        if self.targets == ("qkv",):
            return updates["qkv"]
        zeros = next(iter(updates.values())).new_zeros(*x.shape[:-1], self.width)
        return torch.cat([updates.get(t, zeros) for t in PROJECTIONS], dim=-1)


class VeRA(TowerChoice):
    name = "vera"
    family = "reparameterization"
    paper = "Kopiczko et al., VeRA: Vector-based Random Matrix Adaptation, ICLR 2024 (peft's implementation)"
    Config = VeRAConfig
    limits = {"rank": (1, MAX_WIDTH)}

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        parse_targets(c.targets)

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        return tower_defaults(kind)

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        targets = parse_targets(c.targets)
        towers = self.chosen_towers(backbone)
        widths = [w for tower in towers.values() for w in tower.layer_widths]
        max_in, max_out = max(widths), max(widths) * (3 if targets == ("qkv",) else 1)
        generator = torch.Generator(device="cpu").manual_seed(c.projection_prng_key)
        self.register_buffer("vera_A", kaiming_uniform((c.rank, max_in), generator))
        self.register_buffer("vera_B", kaiming_uniform((max_out, c.rank), generator))
        self.vera = nn.ModuleDict()
        for tower_name, tower in towers.items():
            layers = nn.ModuleList(
                VeRAQKV(self, w, targets, c.rank, c.d_initial, c.dropout) for w in tower.layer_widths
            )
            self.vera[tower_name] = layers
            for layer, module in enumerate(layers):
                tower.slots[layer].qkv_delta = module

    def describe(self) -> dict[str, Any]:
        return {"targets": list(parse_targets(self.config.targets)), "rank": self.config.rank}
