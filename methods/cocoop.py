"""CoCoOp: conditional context optimisation (Zhou et al., CVPR 2022), as KaiyangZhou/CoOp
implements it (``trainers/cocoop.py``).

CoOp's prompts with an image-conditioned shift: a meta-net ``Linear(D, D // 16) -> ReLU ->
Linear(D // 16, d)`` maps the L2-normalised image feature to ``pi(x)``, which is added to every
context vector, so each image gets its own class prompts. Defaults follow the reference config
(``vit_b16_c4_ep10_batch1_ctxv1``): ``M = 4`` initialised from "a photo of a", class token at the end,
unified context, PyTorch's default Linear init for the meta-net.

Where the reference loops over the images of a batch and runs the text tower once per image, the
head here builds all ``B x C`` prompts at once and runs the tower in one call (same numbers, far
fewer kernel launches); text features cannot be cached because they depend on the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.errors import UserError

from .base import MAX_TOKENS, MAX_WIDTH, dassl_protocol
from .coop import CoOp, OneContextAtTheEnd, PromptHead, build_layout

if TYPE_CHECKING:
    from petlbench.backbones.clip import ClipBackbone


@dataclass
class CoCoOpConfig(OneContextAtTheEnd):  # CoOp options its reference does not offer
    n_ctx: int = 4  # M (ignored when ctx_init is given: M = its token count)
    ctx_init: str = "a photo of a"
    template: str = "{}."  # text around the class slot (the reference: "{}.")
    meta_net_ratio: int = 16  # meta-net hidden width = image feature dim // ratio (vis_dim // 16)
    init_std: float = 0.02  # random context init when ctx_init is empty


class CoCoOpHead(PromptHead):
    """Image features (B, D) -> logits (B, C) against image-conditioned class prompts."""

    method: CoCoOp  # plain references (PromptHead)
    backbone: ClipBackbone

    def prompts(self, image: torch.Tensor) -> torch.Tensor:
        """Class prompts (B, C, L, d) for L2-normalised image features ``image`` (B, D)."""
        shift = self.method.meta_net(image)  # (B, d)
        ctx = self.method.ctx.unsqueeze(0) + shift.unsqueeze(1)  # (B, M, d)
        return self.splice(ctx.unsqueeze(1))

    max_prompts_per_call: int = 4096  # B*C prompts per text-tower call (evaluation batches are chunked)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(features, dim=-1)
        step = max(1, self.max_prompts_per_call // self.num_classes)
        if image.shape[0] <= step:
            return self._logits(image)
        # e.g. 256 images x 1000 classes would be 256k prompts in one call: chunk by images instead
        return torch.cat([self._logits(image[i : i + step]) for i in range(0, image.shape[0], step)])

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        prompts = self.prompts(image)
        batch, classes = prompts.shape[:2]
        text = self.encode(prompts.flatten(0, 1)).view(batch, classes, -1)  # one tower call, B*C prompts
        scale = cast(torch.Tensor, self.backbone.logit_scale).exp()
        return scale * torch.einsum("bd,bcd->bc", image, text.to(image.dtype))


class CoCoOp(CoOp):
    """CoCoOp (see the module docstring).

    Reference protocol (ViT-B/16, base-to-new, 16 shots; ``suggested_protocol``): SGD lr 2e-3,
    batch 1, 10 epochs (KaiyangZhou/CoOp ``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``
    L3, L16-18), momentum 0.9 and weight decay 5e-4 (Dassl ``dassl/config/defaults.py`` L153-154).

    As for CoOp, the learning-rate schedule is the protocol's ``schedule`` field, value
    ``"dassl_constant_warmup_cosine"`` (the config's L19-22: epoch 0 at the constant lr 1e-5, then a
    cosine stepped once per epoch; Dassl ``dassl/optim/lr_scheduler.py`` L35-54, L128-141); the
    method does not implement it."""

    name = "cocoop"
    paper = "Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022"
    Config = CoCoOpConfig
    limits = {"n_ctx": (0, MAX_TOKENS), "meta_net_ratio": (1, MAX_WIDTH)}
    needs_text_encoder_per_image = True
    suggested_protocol: ClassVar[dict[str, Any]] = dassl_protocol(lr=2e-3, batch_size=1, epochs=10)

    def validate_config(self) -> None:
        super().validate_config()
        if self.config.meta_net_ratio < 1:
            raise UserError(f"cocoop: meta_net_ratio must be >= 1, got {self.config.meta_net_ratio}")
        if self.config.n_ctx < 1 and not self.config.ctx_init.strip():
            raise UserError("cocoop: needs at least one context token (n_ctx >= 1 or a ctx_init phrase)")

    def attach(self, backbone: Backbone) -> None:
        super().attach(backbone)
        vis_dim = backbone.feature_dim
        hidden = max(1, vis_dim // self.config.meta_net_ratio)
        self.meta_net = nn.Sequential(
            nn.Linear(vis_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.text_width)
        )

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module:
        if self._backbone is None:
            raise RuntimeError("cocoop: attach() before make_head()")
        layout = build_layout(backbone, class_names, self.n_ctx, "end", self.config.template)
        return CoCoOpHead(self, backbone, layout.to(self.ctx.device))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        first = cast(nn.Linear, self.meta_net[0])
        out["meta_net"] = [int(first.in_features), int(first.out_features)]
        return out
