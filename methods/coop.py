"""CoOp: context optimisation, learned prompt context for CLIP's text tower (Zhou et al., IJCV 2022),
as KaiyangZhou/CoOp implements it (``trainers/coop.py``).

Each class prompt is ``[SOS] [V]_1 ... [V]_M [CLASS] . [EOT]``: ``M`` learned context vectors of the
text width (unified, or one set per class with ``csc``) take the place of placeholder tokens. The
prompts are tokenised once with ``M`` placeholders (``"X X ... X {classname}."``, ``_`` in class
names read as a space, as the reference's ``trainers/coop.py`` L98 does); their token
embeddings with position embeddings (the tower's ``embed`` path) are kept as buffers (the SOS
prefix and the suffix of the reference, in one tensor), and the learned vectors, plus the position
embeddings of the places they take, are spliced in at the placeholder positions. The result runs
through the frozen tower (:meth:`ClipTextTower.encode_embeddings`), pooled at EOT. Sequences are
cut to the longest real prompt: exact under the causal mask.

The classifier is a head (:meth:`CoOp.make_head`) mapping image features (B, D) to
``logit_scale.exp() * cos(image, text)``. In training the class text features are recomputed every
forward (the context is trainable); without autograd (evaluation) they are computed once per
version of the context and cached.

Options beyond the reference, all defaulting to its behaviour:

* ``class_token_position``: ``end`` (default), ``middle`` (``M // 2`` vectors before the class
  name, the rest after it) or ``front``: the context always sits next to the class name.
* ``template``: the text around the class slot, ``"{}."`` in the reference. With ``n_ctx = 0`` and
  ``template = "a photo of a {}."`` CoOp is exactly zero-shot CLIP with that template.
* ``ctx_init``: a phrase whose token embeddings initialise the context; ``M`` becomes its token
  count (the reference uses its word count and takes that many tokens; the two agree for phrases
  of single-token words like "a photo of a"). With ``csc`` every class starts from the phrase (the
  reference ignores ``csc`` when ``ctx_init`` is set).
* Random init is ``normal(0, 0.02)`` as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import prompt_class_name
from petlbench.errors import UserError

from ._heads import clip_of, cosine_logits, text_tower
from .base import MAX_TOKENS, Method, dassl_protocol

if TYPE_CHECKING:
    from petlbench.backbones.clip import ClipBackbone

PLACEHOLDER = "X"
POSITIONS = ("end", "middle", "front")


@dataclass
class CoOpConfig:
    n_ctx: int = 16  # M (ignored when ctx_init is given: M = its token count)
    ctx_init: str = ""  # e.g. "a photo of a"; empty: random normal(0, init_std)
    csc: bool = False  # class-specific context (C, M, d) instead of a unified (M, d)
    class_token_position: str = "end"  # end | middle | front
    template: str = "{}."  # text around the class slot "{}" (the reference: "{}.")
    init_std: float = 0.02  # std of the random context vectors (CoOp's normal init)


class OneContextAtTheEnd:
    """Two of :class:`CoOpConfig`'s options fixed, for the configs of the methods that reuse CoOp's
    code without offering them: one context shared by the classes, the class token at the end."""

    @property
    def csc(self) -> bool:
        return False

    @property
    def class_token_position(self) -> str:
        return "end"


def _token_count(backbone: Backbone, texts: Sequence[str]) -> list[int]:
    """Tokens of each text without SOS/EOT (0 for an empty text)."""
    ids = clip_of(backbone).tokenize(list(texts))
    return [int(n) for n in (ids.argmax(dim=-1) - 1)]


@dataclass
class PromptLayout:
    """Class prompts with placeholders, tokenised and embedded once.

    ``embeds`` (C, L, d): token + position embeddings (``tower.embed``) of the prompts cut to the
    longest one; ``ctx_pos`` (C, M): where the context vectors go; ``eot`` (C,): pooling index.
    """

    texts: list[str]
    token_ids: torch.Tensor
    embeds: torch.Tensor
    ctx_pos: torch.Tensor
    eot: torch.Tensor

    def to(self, device: torch.device) -> PromptLayout:
        return PromptLayout(
            self.texts,
            self.token_ids.to(device),
            self.embeds.to(device),
            self.ctx_pos.to(device),
            self.eot.to(device),
        )


@torch.no_grad()
def build_layout(
    backbone: Backbone, class_names: Sequence[str], n_ctx: int, position: str, template: str
) -> PromptLayout:
    """Tokenise ``template`` with the class slot filled by ``before * X, name, after * X`` and find
    the placeholder positions (checked against the token ids, so a tokenisation surprise is an
    error, not a silently misplaced context). Class names read ``_`` as a space
    (:func:`petlbench.backbones.heads.prompt_class_name`, shared with the text head)."""
    if template.count("{}") != 1:
        raise UserError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    before = {"end": n_ctx, "middle": n_ctx // 2, "front": 0}[position]
    after = n_ctx - before
    pre, post = template.split("{}")
    # "_" -> " " as the reference does (KaiyangZhou/CoOp trainers/coop.py L98, trainers/cocoop.py L104)
    class_names = [prompt_class_name(name) for name in class_names]
    texts = [
        pre + " ".join([PLACEHOLDER] * before + [name] + [PLACEHOLDER] * after) + post for name in class_names
    ]
    ids = clip_of(backbone).tokenize(texts)
    eot = ids.argmax(dim=-1)
    n_pre = _token_count(backbone, [pre])[0] if pre.strip() else 0
    name_lens = _token_count(backbone, class_names)
    placeholder = int(clip_of(backbone).tokenize([PLACEHOLDER])[0, 1])
    positions = []
    for c, n_name in enumerate(name_lens):
        start = 1 + n_pre
        pos = list(range(start, start + before))
        pos += list(range(start + before + n_name, start + before + n_name + after))
        if pos and (max(pos) >= int(eot[c]) or any(int(ids[c, p]) != placeholder for p in pos)):
            raise UserError(
                f"CoOp could not place {n_ctx} context tokens in the prompt {texts[c]!r} (too long for the "
                f"{ids.shape[1]}-token context, or the template/class name tokenise across the class slot); "
                "shorten the class name or template, or put spaces around '{}'"
            )
        positions.append(pos)
    length = int(eot.max()) + 1
    ids = ids[:, :length]
    embeds = text_tower(backbone).embed(ids).detach()
    ctx_pos = torch.tensor(positions, dtype=torch.long).view(len(class_names), n_ctx)
    return PromptLayout(texts, ids, embeds, ctx_pos, eot)


class PromptHead(nn.Module):
    """Shared machinery of CoOp/CoCoOp heads: the layout as (non-persistent) buffers and the splice.

    The method and backbone are held as plain references: the learned context belongs to the method
    (counted and checkpointed there), not to the head.
    """

    method: CoOp
    backbone: ClipBackbone
    token_ids: torch.Tensor
    embeds: torch.Tensor
    ctx_pos: torch.Tensor
    eot: torch.Tensor

    def __init__(self, method: Method, backbone: Backbone, layout: PromptLayout) -> None:
        super().__init__()
        self.__dict__["method"] = method
        self.__dict__["backbone"] = backbone
        self.texts = layout.texts  # the tokenised prompt texts, e.g. "X X X X american bulldog."
        self.register_buffer("token_ids", layout.token_ids, persistent=False)
        self.register_buffer("embeds", layout.embeds, persistent=False)
        self.register_buffer("ctx_pos", layout.ctx_pos, persistent=False)
        self.register_buffer("eot", layout.eot, persistent=False)

    @property
    def prompt_texts(self) -> list[str]:
        """The texts tokenised for the class prompts (the name :class:`TextClassifierHead` uses)."""
        return self.texts

    @property
    def num_classes(self) -> int:
        return int(self.embeds.shape[0])

    def splice(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompts with context ``ctx`` (..., C or 1, M, d) put in: (..., C, L, d).

        Context vectors get the position embeddings of the places they take, like every token.
        """
        pos = text_tower(self.backbone).positional_embedding[self.ctx_pos].to(ctx.dtype)  # (C, M, d)
        src = ctx + pos
        lead = src.shape[:-3]
        base = self.embeds.to(src.dtype).expand(*lead, *self.embeds.shape)
        index = self.ctx_pos.unsqueeze(-1).expand(*lead, *self.ctx_pos.shape, self.embeds.shape[-1])
        return base.scatter(-2, index, src.expand(*lead, *pos.shape))

    def encode(self, prompts: torch.Tensor) -> torch.Tensor:
        """Normalised text features of prompts (N*C, L, d) whose EOT indices repeat ``eot``."""
        eot = self.eot.repeat(prompts.shape[0] // self.num_classes)
        return F.normalize(text_tower(self.backbone).encode_embeddings(prompts, eot), dim=-1)


class CoOpHead(PromptHead):
    """Image features (B, D) -> logits (B, C) against the learned class prompts."""

    def __init__(self, method: CoOp, backbone: Backbone, layout: PromptLayout) -> None:
        super().__init__(method, backbone, layout)
        self._cache: tuple[Any, torch.Tensor] | None = None

    def class_features(self) -> torch.Tensor:
        ctx = self.method.ctx
        if torch.is_grad_enabled() and ctx.requires_grad:
            self._cache = None
            return self.encode(self.splice(ctx if ctx.dim() == 3 else ctx.unsqueeze(0)))
        device = self.embeds.device
        key = (ctx._version, ctx.data_ptr(), str(device), torch.is_autocast_enabled(device.type))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                feats = self.encode(self.splice(ctx if ctx.dim() == 3 else ctx.unsqueeze(0)))
            self._cache = (key, feats)
        return self._cache[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.backbone, features, self.class_features())


class CoOp(Method):
    """CoOp (see the module docstring).

    Reference protocol (ViT-B/16, 16 shots; ``suggested_protocol``): SGD lr 2e-3, batch 32, 200
    epochs, 50 on ImageNet (KaiyangZhou/CoOp ``configs/trainers/CoOp/vit_b16.yaml`` L3, L16-18;
    ImageNet uses the ``*_ep50.yaml`` configs, ``COOP.md`` L13), momentum 0.9 and weight decay 5e-4
    (Dassl's defaults, KaiyangZhou/Dassl.pytorch ``dassl/config/defaults.py`` L153-154).

    The method implements no learning-rate schedule: the schedule is the protocol's ``schedule``
    field (the trainer runs it), and the value for the CoOp family is
    ``"dassl_constant_warmup_cosine"``. That is the reference's ``LR_SCHEDULER cosine``,
    ``WARMUP_EPOCH 1``, ``WARMUP_TYPE constant``, ``WARMUP_CONS_LR 1e-5`` (``vit_b16.yaml`` L19-22):
    epoch 0 runs at the constant lr 1e-5, then a cosine over ``MAX_EPOCH`` restarted at epoch 1
    (``WARMUP_RECOUNT`` True, ``defaults.py`` L185), stepped once per epoch (Dassl
    ``dassl/optim/lr_scheduler.py`` L35-54 and L128-141; the trainer steps it at the last batch of an
    epoch, ``trainers/coop.py`` L281-282). A protocol that names another ``schedule`` trains with
    that one."""

    name = "coop"
    family = "prompt"
    paper = "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022"
    Config: ClassVar[type] = CoOpConfig
    limits = {"n_ctx": (0, MAX_TOKENS)}
    towers = ("text",)
    backbone_kinds = ("clip",)
    head = "text"
    suggested_protocol: ClassVar[dict[str, Any]] = dassl_protocol(lr=2e-3, batch_size=32, epochs=200)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._backbone: Backbone | None = None
        self.n_ctx = self.config.n_ctx
        self._init_vectors: torch.Tensor | None = None

    def validate_config(self) -> None:
        c = self.config
        if c.class_token_position not in POSITIONS:
            raise UserError(
                f"{self.name}: class_token_position must be one of {', '.join(POSITIONS)}, "
                f"not {c.class_token_position!r}"
            )
        if c.n_ctx < 0:
            raise UserError(f"{self.name}: n_ctx must be >= 0, got {c.n_ctx}")
        if c.template.count("{}") != 1:
            raise UserError(f"{self.name}: template {c.template!r} must contain exactly one '{{}}'")
        if c.init_std < 0:
            raise UserError(f"{self.name}: init_std must be >= 0")

    # ----- attach -------------------------------------------------------------------------------
    def _context_init(self, backbone: Backbone) -> None:
        """Resolve M and the init vectors (from ``ctx_init``'s token embeddings, if given)."""
        self.__dict__["_backbone"] = backbone
        phrase = self.config.ctx_init.strip().replace("_", " ")
        if phrase:
            ids = clip_of(backbone).tokenize([phrase])
            m = int(ids.argmax()) - 1
            with torch.no_grad():
                self._init_vectors = text_tower(backbone).token_embedding(ids[0, 1 : 1 + m]).detach().clone()
            self.n_ctx = m
        else:
            self.n_ctx = self.config.n_ctx

    def _new_context(self, leading: tuple[int, ...]) -> nn.Parameter:
        width = self.text_width
        if self._init_vectors is not None:
            value = self._init_vectors.expand(*leading, self.n_ctx, width).clone()
        else:
            value = torch.randn(*leading, self.n_ctx, width) * self.config.init_std
        return nn.Parameter(value)

    @property
    def text_width(self) -> int:
        if self._backbone is None:
            raise RuntimeError(f"{self.name}: attach() a backbone first")
        return self._backbone.tower("text").width

    def attach(self, backbone: Backbone) -> None:
        """Unified context is created here; class-specific context needs the class count and is
        created by :meth:`make_head`."""
        self._context_init(backbone)
        if not self.config.csc:
            self.ctx = self._new_context(())

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module:
        if self._backbone is None:
            raise RuntimeError(f"{self.name}: attach() before make_head()")
        if self.config.csc:
            existing = getattr(self, "ctx", None)
            if existing is None:
                self.ctx = self._new_context((len(class_names),))
            elif existing.shape[0] != len(class_names):
                raise UserError(
                    f"{self.name}: class-specific context was learned for {existing.shape[0]} classes; it "
                    f"cannot classify {len(class_names)} classes (use csc=false for unseen classes)"
                )
        layout = build_layout(
            backbone, class_names, self.n_ctx, self.config.class_token_position, self.config.template
        )
        return CoOpHead(self, backbone, layout.to(self.ctx.device))

    def describe(self) -> dict[str, Any]:
        ctx = getattr(self, "ctx", None)
        return {
            "n_ctx": self.n_ctx,
            "csc": self.config.csc,
            "class_token_position": self.config.class_token_position,
            "ctx_init": self.config.ctx_init,
            "template": self.config.template,
            "context_shape": list(ctx.shape) if ctx is not None else None,
        }
