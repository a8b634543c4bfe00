"""The frozen backbone: towers plus what a task head needs (feature size, tokenizer, logit scale)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .tower import Tower


class Backbone(nn.Module):
    """A pre-trained model behind the insertion-point API.

    All weights start frozen (``requires_grad=False``) and the modules stay in eval mode: tuning
    methods train their own parameters around a deterministic backbone (no dropout, no drop-path),
    as the reference implementations do. ``kind`` is ``"clip"`` (towers ``image`` and ``text``) or
    ``"vit"`` or ``"swin"`` (tower ``image``).
    """

    kind: str

    def __init__(
        self,
        name: str,
        towers: dict[str, Tower],
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        feature_dim: int,
        interpolation: str = "bicubic",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.towers = nn.ModuleDict(towers)
        self.image_size = image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.feature_dim = feature_dim
        self.interpolation = interpolation
        self.config = dict(config or {})
        self.tokenizer: Callable[[list[str]], torch.Tensor] | None = None

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:  # noqa: ARG002 - frozen backbones stay in eval mode
        return super().train(False)

    def tower(self, name: str) -> Tower:
        if name not in self.towers:
            raise KeyError(f"backbone {self.name!r} has no tower {name!r}; it has {sorted(self.towers)}")
        return self.towers[name]  # type: ignore[return-value]

    @property
    def tower_names(self) -> tuple[str, ...]:
        return tuple(self.towers.keys())

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features from normalised pixels (B, 3, H, W)."""
        return self.towers["image"](pixels)

    def num_parameters(self, exclude: Sequence[str] = ()) -> int:
        """Parameter count of the backbone, optionally without named parameters (e.g. token embeddings)."""
        return sum(p.numel() for n, p in self.named_parameters() if not any(n.startswith(e) for e in exclude))
