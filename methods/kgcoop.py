"""KgCoOp: knowledge-guided context optimisation (Yao, Zhang, Xu, CVPR 2023), as htyao89/KgCoOp
implements it (``KgCoOp/trainers/kgcoop.py``).

CoOp's learned context (here: :class:`petlbench.methods.coop.CoOp`, unchanged) plus a penalty that
keeps the learned class text features near the hand-crafted ones:

    loss = CE(logits, y) + w * (1 - mean_c cos(t_c, t_c^clip))

with ``t_c`` the class features from the learned prompts and ``t_c^clip`` the frozen CLIP's features
of the hand-crafted prompt of class ``c`` (kgcoop.py L136-146 builds them once, L238-241 the score,
L310 the loss). The hand-crafted features are computed once when the head is built
(:func:`petlbench.methods.base.frozen_class_features`) and the penalty enters through the method
interface's :meth:`Method.extra_loss`.

Reference defaults: ``w = 8.0`` (``KgCoOp/scripts/run.sh`` L2-11 pass 8.0 as ``TRAINER.COOP.W``,
``scripts/base2new_train.sh`` L8, L33), 4 context tokens initialised from "a photo of a"
(``CTX_INIT: True`` in ``configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml`` L33, which kgcoop.py
L94-98 turns into the phrase "a photo of a", so M = 4), class token at the end, unified context.
Only ``ctx`` trains (kgcoop.py L268-271 freezes every parameter without "ctx" in its name, so the
prompt learner's unused ``bias_vectors`` and ``meta_net`` stay frozen): 4 x 512 = 2,048 on ViT-B/16.

The hand-crafted prompt is the task's templates (the suites carry CoOp's per-dataset templates,
which are kgcoop.py's ``CUSTOM_TEMPLATES`` L37-54 except DTD, where KgCoOp says "a photo of a {},
a type of texture." and CoOp "{} texture."), or ``hand_template`` when given. Several templates
are averaged as zero-shot CLIP averages them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.errors import UserError

from ._heads import KeepsTeacherText
from .base import MAX_TOKENS, LossContext, dassl_protocol, frozen_class_features
from .coop import CoOp, CoOpHead, OneContextAtTheEnd, build_layout


@dataclass
class KgCoOpConfig(OneContextAtTheEnd):  # KgCoOp's runs fix them (base2new_train.sh L12, L15)
    n_ctx: int = 4  # M (ignored when ctx_init is given: M = its token count)
    ctx_init: str = "a photo of a"  # kgcoop.py L96: the phrase CTX_INIT True selects
    weight: float = 8.0  # w, TRAINER.COOP.W (KgCoOp/scripts/run.sh L2-11: 8.0)
    hand_template: str = ""  # hand-crafted prompt "{}" template; empty: the task's templates
    template: str = "{}."  # text around the class slot of the learned prompt (kgcoop.py L129)
    init_std: float = 0.02  # random context init when ctx_init is empty (kgcoop.py L114)


class KgCoOpHead(KeepsTeacherText, CoOpHead):
    """CoOp's head that also holds the frozen hand-crafted class features (C, D) and keeps the
    learned class features of the last training forward, so the penalty reuses that text pass."""

    def __init__(self, method: CoOp, backbone: Backbone, layout: Any, teacher: torch.Tensor) -> None:
        super().__init__(method, backbone, layout)
        self.keep_teacher(teacher)


class KgCoOp(CoOp):
    """KgCoOp (see the module docstring)."""

    name = "kgcoop"
    paper = "Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context Optimization, CVPR 2023"
    Config = KgCoOpConfig
    limits = {"n_ctx": (0, MAX_TOKENS), "weight": (0.0, 1e6)}
    # KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml: batch 128 (L3), SGD (L16), lr 0.002
    # (L17), 100 epochs (L18), Dassl's constant-warmup cosine (L19-22).
    suggested_protocol: ClassVar[dict[str, Any]] = dassl_protocol(lr=2e-3, batch_size=128, epochs=100)

    def validate_config(self) -> None:
        super().validate_config()
        t = self.config.hand_template
        if t and t.count("{}") != 1:
            raise UserError(f"kgcoop: hand_template {t!r} must contain exactly one '{{}}'")
        if self.config.n_ctx < 1 and not self.config.ctx_init.strip():
            raise UserError("kgcoop: needs at least one context token (n_ctx >= 1 or a ctx_init phrase)")

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module:
        if self._backbone is None:
            raise RuntimeError("kgcoop: attach() before make_head()")
        hand = [self.config.hand_template] if self.config.hand_template else list(templates)
        if not hand:
            raise UserError(
                "kgcoop: the task has no prompt template; set hand_template (e.g. 'a photo of a {}.')"
            )
        layout = build_layout(backbone, class_names, self.n_ctx, "end", self.config.template)
        teacher = frozen_class_features(backbone, class_names, hand)
        return KgCoOpHead(self, backbone, layout.to(self.ctx.device), teacher.to(self.ctx.device))

    def extra_loss(self, ctx: LossContext) -> torch.Tensor | None:
        """``w * (1 - mean cos(learned, hand-crafted))`` over the classes (kgcoop.py L238-241, L310)."""
        head = ctx.head
        if not isinstance(head, KgCoOpHead) or head.last_text is None:
            return None
        score = F.cosine_similarity(head.last_text.float(), head.teacher_text.float(), dim=1, eps=1e-7)
        return self.config.weight * (1.0 - score.mean())

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["weight"] = self.config.weight
        out["hand_template"] = self.config.hand_template or None
        return out
