"""Task heads: turn tower outputs into class logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone

if TYPE_CHECKING:
    from .clip import ClipBackbone


class LinearHead(nn.Module):
    """A trainable linear classifier on image features (ViT-style transfer)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def prompt_class_name(name: str) -> str:
    """A class name as it goes into a CLIP prompt: ``"_"`` becomes ``" "`` (``american_bulldog`` ->
    ``american bulldog``). The one place every CLIP prompt builder uses: the text head (zero-shot and
    every image-only method on CLIP) and CoOp's/CoCoOp's prompt layout. As the references do:
    KaiyangZhou/CoOp ``trainers/zsclip.py`` L43 (and L90, the ensemble) ``temp.format(c.replace("_", " "))``,
    ``trainers/coop.py`` L98 and ``trainers/cocoop.py`` L104
    ``classnames = [name.replace("_", " ") for name in classnames]``."""
    return name.replace("_", " ")


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompt texts, class-major (all templates of class 0, then class 1, ...)."""
    return [t.format(prompt_class_name(c)) for c in class_names for t in templates]


class TextClassifierHead(nn.Module):
    """CLIP classifier: class prompts from templates x class names through the text tower; cosine
    logits scaled by the model's logit scale. Text features are computed once and cached whenever
    the text tower carries no trainable parameter (DESIGN section 8). Class names enter the prompts
    with ``_`` read as a space (:func:`prompt_class_name`); ``prompt_texts`` holds the texts built."""

    backbone: ClipBackbone  # kind "clip": the interface read here is ClipBackbone's
    token_ids: torch.Tensor

    def __init__(self, backbone: Backbone, class_names: Sequence[str], templates: Sequence[str]) -> None:
        super().__init__()
        if backbone.kind != "clip":
            raise ValueError("TextClassifierHead needs a CLIP backbone")
        self.__dict__["backbone"] = backbone  # a reference, not a submodule: the classifier owns it
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.prompt_texts = class_prompts(self.class_names, self.templates)  # class-major
        self.register_buffer("token_ids", self.backbone.tokenize(self.prompt_texts), persistent=False)
        self._cache: torch.Tensor | None = None

    def _compute(self) -> torch.Tensor:
        feats = F.normalize(self.backbone.encode_text(self.token_ids), dim=-1)
        feats = feats.view(len(self.class_names), len(self.templates), -1).mean(dim=1)
        return F.normalize(feats, dim=-1)

    def class_features(self) -> torch.Tensor:
        if self.backbone.tower("text").has_trainable_parameters():
            self._cache = None
            return self._compute()
        if self._cache is None or self._cache.device != self.token_ids.device:
            with torch.no_grad():
                self._cache = self._compute()
        return self._cache

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text = self.class_features()
        scale = cast(torch.Tensor, self.backbone.logit_scale).exp()
        return scale * F.normalize(features, dim=-1) @ text.t().to(features.dtype)
