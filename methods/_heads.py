"""Head pieces shared by the CLIP methods whose head wraps or extends another head.

``OverTextHead``: a head on top of CLIP's text head (CLIP-Adapter's residual adapters, Tip-Adapter's
cache), which the harness still sees as a text head (its prompts and token ids, for the cost count).
``cosine_logits``: CLIP's logits from image and class text features, as every such head ends.
``KeepsTeacherText``: a prompt head that also holds the frozen hand-crafted class features and keeps
the class features of its last forward, so a regulariser (KgCoOp, PromptSRC) reuses that text pass.
``clip_of`` / ``text_tower``: a backbone and its text tower typed as CLIP's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import TextClassifierHead

if TYPE_CHECKING:
    from petlbench.backbones.clip import ClipBackbone, ClipTextTower


def clip_of(backbone: Backbone) -> ClipBackbone:
    """``backbone`` as the CLIP backbone a CLIP-only method's pairing guarantees (its
    ``backbone_kinds`` is ``("clip",)``): the tokenizer, text encoder and logit scale."""
    return cast("ClipBackbone", backbone)


def text_tower(backbone: Backbone) -> ClipTextTower:
    """The CLIP text tower, whose prompt embeddings the prompt learners splice and encode."""
    return cast("ClipTextTower", backbone.tower("text"))


def cosine_logits(backbone: Any, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``logit_scale.exp() * cos(image, text)``: (B, D) image features against (C, D) normalised
    class text features -> (B, C) logits. ``backbone``: a CLIP backbone (it holds ``logit_scale``)."""
    scale = backbone.logit_scale.exp()  # CLIP's learned temperature
    return scale * F.normalize(features, dim=-1) @ text.t().to(features.dtype)


class OverTextHead(nn.Module):
    """Holds the method without registering it (its parameters are the method's, counted and saved
    there) and the text head it builds on."""

    def __init__(self, method: nn.Module, text_head: TextClassifierHead) -> None:
        super().__init__()
        self.__dict__["method"] = method
        self.text_head = text_head
        self.prompt_texts = text_head.prompt_texts

    @property
    def token_ids(self) -> torch.Tensor:
        """The class prompts' token ids (what the cost measurement counts)."""
        return self.text_head.token_ids


class KeepsTeacherText:
    """Mixin before a prompt head class: ``keep_teacher(features)`` stores the frozen class features
    (a non-persistent buffer: recomputed from the frozen model, never saved), and every
    ``class_features()`` result is kept as ``last_text``."""

    teacher_text: torch.Tensor
    last_text: torch.Tensor | None

    def keep_teacher(self, teacher: torch.Tensor) -> None:
        self.register_buffer("teacher_text", teacher, persistent=False)  # type: ignore[attr-defined]
        self.last_text = None

    def class_features(self) -> torch.Tensor:
        feats: Any = super().class_features()  # type: ignore[misc]
        self.last_text = feats
        return feats
