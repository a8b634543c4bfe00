"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV 2023), as
muzairkhattak/PromptSRC implements it (``trainers/promptsrc.py``).

The prompts are IVLP's (:class:`petlbench.methods.maple.IVLP`: independent deep prompts on both
towers, the text context initialised from "a photo of a"), 4 + 4 tokens at depth 9 on both towers
(``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`` L34-39): 9 x 4 x (512 + 768) =
46,080 parameters on CLIP ViT-B/16. Training adds the self-regulating terms to the cross-entropy
(promptsrc.py L297-313), through :meth:`Method.extra_loss`:

* ``L_SCL_text = 25 * L1(t, t_zs)``: the prompted class features against the frozen CLIP's, each
  class's frozen feature the mean over the 60 templates of ``IMAGENET_TEMPLATES`` of the raw text
  features, then normalised (textual diversity, promptsrc.py L120-128, L199-200);
* ``L_SCL_image = 10 * L1(f, f_zs)``: the prompted normalised image features against the frozen
  image tower's on the same (augmented) images (L201-203, L303-304);
* ``L_SCL_logits = KL(p_zs || p) summed / logits.numel()`` with ``p_zs`` the zero-shot logits
  ``logit_scale * f_zs t_zs^T`` (L205, L306-311).

The frozen class features are computed once when the head is built; the frozen image features come
from :class:`LossContext` (cached per example when the images do not change). Gaussian prompt
aggregation (GPA, L264-270, L318-335): after epoch ``e`` (1-based) the prompts are added to a
running sum with weight ``g(e) / sum_k g(k)``, ``g`` the N(15, 1) density over ``1 .. N``; after the
last epoch the prompts are replaced by the sum (a :class:`Callback`, checkpointed with the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import prompt_class_name

from ._heads import KeepsTeacherText, clip_of
from .base import Callback, LossContext, dassl_protocol, frozen_backbone
from .maple import IVLP, MaPLeHead

# The 60 prompt templates (from CLIP's ImageNet prompt-engineering notebook) of the teacher in
# muzairkhattak/PromptSRC trainers/imagenet_templates.py (L3-64), used for every dataset (promptsrc.py L122).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)


@dataclass
class PromptSRCConfig:
    n_ctx: int = 4  # N_CTX_TEXT (configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml L35)
    vision_tokens: int = 4  # N_CTX_VISION (L34)
    ctx_init: str = "a photo of a"  # CTX_INIT (L36)
    depth: int = 9  # PROMPT_DEPTH_TEXT (L39)
    vision_depth: int = 9  # PROMPT_DEPTH_VISION (L38)
    text_loss_weight: float = 25.0  # TEXT_LOSS_WEIGHT (L40)
    image_loss_weight: float = 10.0  # IMAGE_LOSS_WEIGHT (L41)
    gpa_mean: float = 15.0  # GPA_MEAN (L42)
    gpa_std: float = 1.0  # GPA_STD (L43)
    gpa: bool = True  # Gaussian prompt aggregation over epochs


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """promptsrc.py L265-270, L358-360: the N(mean, std) density at epochs 1..N, normalised to sum 1."""
    density = lambda x: math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))  # noqa: E731
    g = [density(e) for e in range(1, epochs + 1)]
    total = sum(g)
    return [w / total for w in g]


class PromptSRCHead(KeepsTeacherText, MaPLeHead):
    """IVLP's head, holding the frozen template-averaged class features and keeping the prompted
    class features of the last training forward for the self-regulating terms."""

    def __init__(
        self, method: Any, backbone: Backbone, embeds: torch.Tensor, eot: torch.Tensor, teacher: torch.Tensor
    ) -> None:
        super().__init__(method, backbone, embeds, eot)
        self.keep_teacher(teacher)


class GaussianPromptAggregation(Callback):
    """Sums the method's parameters after each epoch with the Gaussian weights; after the last epoch
    the parameters become the sum (promptsrc.py L320-335)."""

    def __init__(self, method: PromptSRC) -> None:
        self.method = method
        self.total: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, ctx: Any) -> None:
        c = self.method.config
        weight = gpa_weights(ctx.epochs, c.gpa_mean, c.gpa_std)[ctx.epoch]
        params = dict(self.method.named_parameters())
        with torch.no_grad():
            if self.total is None:
                self.total = {k: p.detach() * weight for k, p in params.items()}
            else:
                self.total = {k: self.total[k] + p.detach() * weight for k, p in params.items()}
            if ctx.epoch == ctx.epochs - 1:
                for k, p in params.items():
                    p.copy_(self.total[k])

    def state_dict(self) -> dict[str, Any]:
        return {"total": dict(self.total) if self.total is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        total = state.get("total")
        self.total = {k: v.clone() for k, v in total.items()} if total else None


class PromptSRC(IVLP):
    """PromptSRC (see the module docstring).

    Reference protocol (``suggested_protocol``, base-to-new config
    ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``): SGD lr 0.0025 (L18), batch 4
    (L4), 20 epochs (L19), Dassl's constant warm-up (1 epoch at 1e-5) then cosine (L20-23); the
    few-shot config (``vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml``) trains 50 epochs."""

    name = "promptsrc"
    paper = (
        "Khattak et al., Self-regulating Prompts: Foundational Model Adaptation without Forgetting, ICCV 2023"
    )
    Config: ClassVar[type] = PromptSRCConfig
    limits = {**IVLP.limits, "gpa_std": (1e-6, 1e6)}
    suggested_protocol: ClassVar[dict[str, Any]] = dassl_protocol(lr=2.5e-3, batch_size=4, epochs=20)

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> PromptSRCHead:
        head = super().make_head(backbone, class_names, templates)
        teacher = self.teacher_text(backbone, class_names)
        return PromptSRCHead(self, backbone, head.embeds, head.eot, teacher.to(head.embeds.device))

    @torch.no_grad()
    def teacher_text(self, backbone: Backbone, class_names: list[str]) -> torch.Tensor:
        """The frozen CLIP's class features: the mean over the templates of the raw features,
        normalised (promptsrc.py L120-128, L199-200)."""
        names = [prompt_class_name(n) for n in class_names]
        clip = clip_of(backbone)
        device = clip.logit_scale.device
        with frozen_backbone(backbone):
            feats = [
                clip.encode_text(clip.tokenize([t.replace("{}", n) for n in names]).to(device))
                for t in IMAGENET_TEMPLATES
            ]
        return F.normalize(torch.stack(feats, dim=1).mean(dim=1), dim=-1)

    def extra_loss(self, ctx: LossContext) -> torch.Tensor | None:
        """L_SCL = KL + 25 L1(text) + 10 L1(image) (promptsrc.py L297-312)."""
        head = ctx.head
        if not isinstance(head, PromptSRCHead) or head.last_text is None:
            return None
        c = self.config
        text, teacher = head.last_text.float(), head.teacher_text.float()
        image = F.normalize(ctx.features.float(), dim=-1)
        frozen = F.normalize(ctx.frozen_image_features().float(), dim=-1)
        zs_logits = head.backbone.logit_scale.exp() * frozen @ teacher.t()
        logits = ctx.logits.float()
        kl = (
            F.kl_div(
                F.log_softmax(logits, dim=1),
                F.log_softmax(zs_logits, dim=1),
                reduction="sum",
                log_target=True,
            )
            / logits.numel()
        )
        l_text = F.l1_loss(text, teacher) * c.text_loss_weight
        l_image = F.l1_loss(image, frozen) * c.image_loss_weight
        return kl + l_text + l_image

    def callbacks(self) -> list[Callback]:
        return [GaussianPromptAggregation(self)] if self.config.gpa else []

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(gpa=self.config.gpa, gpa_mean=self.config.gpa_mean, gpa_std=self.config.gpa_std)
        return out
