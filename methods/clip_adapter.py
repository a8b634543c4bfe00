"""CLIP-Adapter: a residual MLP on CLIP's features (Gao et al., IJCV 2023), as
gaopengcuhk/CLIP-Adapter implements it (``clip_adapter.py``).

The adapter is ``Linear(D, D/4, bias=False) -> ReLU -> Linear(D/4, D, bias=False) -> ReLU``
(clip_adapter.py L55-67, reduction 4) on the image feature, blended with the frozen feature by the
residual ratio 0.2: ``f' = 0.2 * A(f) + 0.8 * f`` (L100-105), then CLIP's cosine logits against the
hand-crafted class prompts with ``logit_scale.exp()`` (L107-113). Only the adapter trains (L134-136).
On ViT-B/16 (D = 512): 2 x 512 x 128 = 131,072 parameters. PyTorch's default Linear init.

``tower=text`` or ``both`` puts the same kind of adapter on the class text features (the paper's
text variant; the reference code has only the image adapter), applied to the frozen, normalised
class features before they are normalised again. The image tower stays frozen, so the harness
caches image features and the head trains on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import TextClassifierHead
from petlbench.errors import UserError

from ._heads import OverTextHead, cosine_logits
from .base import MAX_WIDTH, Method

SIDES = ("image", "text", "both")


@dataclass
class CLIPAdapterConfig:
    reduction: int = 4  # hidden = D // reduction (Adapter(c_in, reduction=4), clip_adapter.py L56, L97)
    ratio: float = 0.2  # residual ratio (clip_adapter.py L104)
    tower: str = "image"  # image (the reference) | text | both


def feature_adapter(dim: int, reduction: int) -> nn.Sequential:
    """The reference's bias-free two-layer MLP with ReLU after both layers (clip_adapter.py L58-63)."""
    hidden = max(1, dim // reduction)
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim, bias=False),
        nn.ReLU(inplace=True),
    )


class CLIPAdapterHead(OverTextHead):
    """Image features (B, D) -> logits (B, C): adapters on the image and/or class features, then the
    text head's cosine logits. The adapters belong to the method (counted and saved there)."""

    method: CLIPAdapter

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m, ratio = self.method, self.method.config.ratio
        if m.image_adapter is not None:
            features = ratio * m.image_adapter(features) + (1 - ratio) * features
        text = self.text_head.class_features()
        if m.text_adapter is not None:
            text = F.normalize(ratio * m.text_adapter(text) + (1 - ratio) * text, dim=-1)
        return cosine_logits(self.text_head.backbone, features, text)


class CLIPAdapter(Method):
    """CLIP-Adapter (see the module docstring).

    The reference repository ships no config or script (only ``clip_adapter.py``); runs take the
    suite's protocol."""

    name = "clip-adapter"
    family = "adapter"
    paper = "Gao et al., CLIP-Adapter: Better Vision-Language Models with Feature Adapters, IJCV 2023"
    Config = CLIPAdapterConfig
    limits = {"reduction": (1, MAX_WIDTH), "ratio": (0.0, 1.0)}
    towers = ()  # no tower is modified: the adapters act on the towers' outputs
    backbone_kinds = ("clip",)
    head = "text"

    def validate_config(self) -> None:
        if self.config.tower not in SIDES:
            raise UserError(
                f"clip-adapter: tower must be one of {', '.join(SIDES)}, not {self.config.tower!r}"
            )

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        dim = backbone.feature_dim
        self.image_adapter = feature_adapter(dim, c.reduction) if c.tower in ("image", "both") else None
        self.text_adapter = feature_adapter(dim, c.reduction) if c.tower in ("text", "both") else None

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module:
        return CLIPAdapterHead(self, TextClassifierHead(backbone, class_names, templates))

    def describe(self) -> dict:
        return {"tower": self.config.tower, "reduction": self.config.reduction, "ratio": self.config.ratio}
