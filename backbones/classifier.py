"""The model a run trains and evaluates: normalisation inside, frozen backbone, method, head.

Inputs are pixels in [0, 1] at the backbone's resolution, so attacks (FGSM) and measurements act in
pixel space with normalisation part of the model.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


class ImageClassifier(nn.Module):
    mean: torch.Tensor  # (1, 3, 1, 1) buffers
    std: torch.Tensor

    def __init__(self, backbone: Backbone, head: nn.Module, method: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.head = head
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image((pixels - self.mean) / self.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))
