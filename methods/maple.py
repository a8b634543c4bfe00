"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023) and IVLP, independent vision-language
prompting (the same repository's baseline), as muzairkhattak/multimodal-prompt-learning implements
them (``trainers/maple.py``, ``trainers/independentVL.py``, ``clip/model.py``), through the towers'
``input_tokens`` slots (no CLIP fork).

Text: the class prompt is ``ctx_init + " " + name + "."`` ("a photo of a red."); its first ``n``
tokens after SOS are replaced by the learned context (maple.py L84-97, L119-131: ``[SOS] ctx
suffix[1+n:]``), with the position embeddings of the places they take. Here the context enters as
layer 0's input tokens after SOS (their position embeddings added), on the prompt embedded without
those ``n`` tokens; the stream is then the reference's. Layers ``1 .. J-1`` get their own text
prompts (``compound_prompts_text``, N(0, 0.02), L111-114), which replace positions ``1 .. n``
(clip/model.py L287-306).

Vision (MaPLe): layer 0's prompts are ``proj(ctx)`` (Linear(512, 768), maple.py L103), appended at
the end after the position embedding and before ``ln_pre`` (clip/model.py L445-463); layer ``l``'s
are ``proj_l(P_l)`` of that layer's text prompts (``compound_prompt_projections``, clones of one
Linear, L116-117), replacing the last ``n`` tokens (clip/model.py L310-331). After layer ``J-1`` the
prompt tokens stay in both streams. Counts on CLIP ViT-B/16 with n = 2, J = 9: 1,024 + 393,984 +
8 x (1,024 + 393,984) = 3,555,072, 2.860% of the 124,323,841 frozen parameters CustomCLIP holds
(CLIP without the token embedding).

IVLP (``coupling=false``): the vision prompts are parameters of their own, N(0, 0.02), at every
layer up to ``vision_depth`` (clip/model.py L191-256, L362-422), the text ones likewise; 2 + 2
tokens at depth 12: 12 x 2 x 512 + 12 x 2 x 768 = 30,720.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import prompt_class_name
from petlbench.backbones.slots import InputTokens
from petlbench.errors import UserError

from ._heads import clip_of, cosine_logits, text_tower
from .base import MAX_LAYERS, MAX_TOKENS, Method, dassl_protocol

if TYPE_CHECKING:
    from petlbench.backbones.clip import ClipBackbone

INIT_STD = 0.02  # nn.init.normal_(std=0.02): maple.py L96, L114; clip/model.py L220


class ComputedTokens(InputTokens):
    """Input tokens computed at every forward from the method's parameters (MaPLe's ``proj_l(P_l)``,
    the context plus its position embeddings). ``tokens`` holds the parameter they derive from, so
    the tower sees that it carries trainable parameters."""

    def __init__(self, source: torch.Tensor, compute: Callable[[], torch.Tensor], **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.compute = compute

    def select(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.compute(), None


@dataclass
class MaPLeConfig:
    n_ctx: int = 2  # N_CTX (configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml L33)
    ctx_init: str = "a photo of a"  # CTX_INIT (same file L34)
    depth: int = 9  # PROMPT_DEPTH J (same file L36)


@dataclass
class IVLPConfig:
    n_ctx: int = 2  # N_CTX_TEXT (configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml L35)
    vision_tokens: int = 2  # N_CTX_VISION (same file L34)
    ctx_init: str = "a photo of a"  # CTX_INIT (same file L36)
    depth: int = 12  # PROMPT_DEPTH_TEXT (same file L39)
    vision_depth: int = 12  # PROMPT_DEPTH_VISION (same file L38)


class MaPLeHead(nn.Module):
    """Image features (B, D) -> logits against the prompted class text features. The prompt
    embeddings without the context (C, L - n, d) are buffers; the text tower's slots add the
    context and the deep prompts. Without autograd the class features are cached per version of
    the method's parameters."""

    method: MaPLe
    backbone: ClipBackbone
    embeds: torch.Tensor
    eot: torch.Tensor

    def __init__(self, method: MaPLe, backbone: Backbone, embeds: torch.Tensor, eot: torch.Tensor) -> None:
        super().__init__()
        self.__dict__["method"] = method
        self.__dict__["backbone"] = backbone
        self.register_buffer("embeds", embeds, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self._cache: tuple[Any, torch.Tensor] | None = None

    def _encode(self) -> torch.Tensor:
        return F.normalize(text_tower(self.backbone).encode_embeddings(self.embeds, self.eot), dim=-1)

    def class_features(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            self._cache = None
            return self._encode()
        device = self.embeds.device
        key = (
            tuple((p._version, p.data_ptr()) for p in self.method.parameters()),
            str(device),
            torch.is_autocast_enabled(device.type),
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._encode())
        return self._cache[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.backbone, features, self.class_features())


class MaPLe(Method):
    """MaPLe (see the module docstring).

    Reference protocol (``suggested_protocol``, ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``):
    SGD lr 0.0035 (L17), batch 4 (L3), 5 epochs (L18), Dassl's constant warm-up (1 epoch at 1e-5)
    then cosine (L19-22)."""

    name = "maple"
    family = "prompt"
    paper = "Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023"
    Config: ClassVar[type] = MaPLeConfig
    limits = {"n_ctx": (1, MAX_TOKENS), "depth": (1, MAX_LAYERS)}
    towers = ("image", "text")
    backbone_kinds = ("clip",)
    head = "text"
    coupling: ClassVar[bool] = True
    suggested_protocol: ClassVar[dict[str, Any]] = dassl_protocol(lr=3.5e-3, batch_size=4, epochs=5)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._backbone: Backbone | None = None

    # ----- attach -------------------------------------------------------------------------------
    def _context(self, backbone: Backbone) -> torch.Tensor:
        """The first ``n`` token embeddings of ``ctx_init`` (maple.py L84-92), or N(0, 0.02)."""
        n, phrase = self.config.n_ctx, self.config.ctx_init.replace("_", " ").strip()
        text = text_tower(backbone)
        if phrase:
            ids = clip_of(backbone).tokenize([phrase])
            if int(ids.argmax()) - 1 < n:
                raise UserError(f"{self.name}: ctx_init {phrase!r} has fewer than n_ctx={n} tokens")
            with torch.no_grad():
                return text.token_embedding(ids[0, 1 : 1 + n]).detach().clone()
        return torch.empty(n, text.width).normal_(0.0, INIT_STD)

    def _depth(self, backbone: Backbone, depth: int, tower: str) -> int:
        """``depth`` capped at the tower's layers: the reference's J = 9 (or 12) is for 12-layer CLIPs;
        on a shallower CLIP (micro-clip, tiny-clip) every layer is prompted, recorded in
        :meth:`describe`."""
        return min(depth, backbone.tower(tower).depth)

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        self.__dict__["_backbone"] = backbone
        text, image = text_tower(backbone), backbone.tower("image")
        self._text_depth = self._depth(backbone, c.depth, "text")
        self.ctx = nn.Parameter(self._context(backbone))
        self.text_prompts = nn.ParameterList(
            nn.Parameter(torch.empty(c.n_ctx, text.width).normal_(0.0, INIT_STD))
            for _ in range(self._text_depth - 1)
        )
        pos = lambda: text.positional_embedding[1 : 1 + c.n_ctx]  # noqa: E731 - the places ctx takes
        text.slots[0].input_tokens = ComputedTokens(self.ctx, lambda: self.ctx + pos().to(self.ctx.dtype))
        for layer, p in enumerate(self.text_prompts, start=1):
            text.slots[layer].input_tokens = InputTokens(p, mode="replace", position="after_first")
        self._attach_vision(image, text.width)

    def _attach_vision(self, image: Any, text_width: int) -> None:
        self.proj = nn.Linear(text_width, image.width)  # maple.py L103
        single = nn.Linear(text_width, image.width)  # _get_clones of one layer (maple.py L116-117)
        self.projections = nn.ModuleList(copy.deepcopy(single) for _ in range(self._text_depth - 1))
        image.slots[0].input_tokens = ComputedTokens(
            self.ctx, lambda: self.proj(self.ctx), position="end", before_norm=True
        )
        for layer, (p, proj) in enumerate(zip(self.text_prompts, self.projections, strict=True), start=1):
            image.slots[layer].input_tokens = ComputedTokens(
                p, functools.partial(proj, p), mode="replace", position="end"
            )

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> MaPLeHead:
        """Prompts ``ctx_init + " " + name + "."`` (maple.py L121) embedded once, the context's ``n``
        positions removed (the layer-0 slot puts the context there)."""
        if self._backbone is None:
            raise RuntimeError(f"{self.name}: attach() before make_head()")
        n, phrase = self.config.n_ctx, self.config.ctx_init.replace("_", " ").strip()
        prefix = phrase if phrase else " ".join(["X"] * n)  # maple.py L92, L97
        ids = clip_of(backbone).tokenize([f"{prefix} {prompt_class_name(name)}." for name in class_names])
        eot = ids.argmax(dim=-1)
        ids = ids[:, : int(eot.max()) + 1]
        with torch.no_grad():
            x = text_tower(backbone).embed(ids)
        embeds = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1).detach()
        device = self.ctx.device
        return MaPLeHead(self, backbone, embeds.to(device), (eot - n).to(device))

    def describe(self) -> dict[str, Any]:
        depth = getattr(self, "_text_depth", self.config.depth)
        return {
            "n_ctx": self.config.n_ctx,
            "depth": depth,
            "depth_capped": depth < self.config.depth,
            "coupling": self.coupling,
        }


class IVLP(MaPLe):
    """IVLP (see the module docstring); the protocol is MaPLe's family's
    (``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``: lr 0.0035 L18, batch 4 L4, 5 epochs
    L19)."""

    name = "ivlp"
    paper = "Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023 (IVLP baseline)"
    Config: ClassVar[type] = IVLPConfig
    limits = {
        "n_ctx": (1, MAX_TOKENS),
        "vision_tokens": (1, MAX_TOKENS),
        "depth": (1, MAX_LAYERS),
        "vision_depth": (1, MAX_LAYERS),
    }
    coupling = False

    def _attach_vision(self, image: Any, text_width: int) -> None:  # noqa: ARG002
        c = self.config
        self._vision_depth = min(c.vision_depth, image.depth)  # capped as ``depth`` is (MaPLe._depth)
        self.vision_prompts = nn.ParameterList(
            nn.Parameter(torch.empty(c.vision_tokens, image.width).normal_(0.0, INIT_STD))
            for _ in range(self._vision_depth)
        )
        for layer, p in enumerate(self.vision_prompts):
            image.slots[layer].input_tokens = InputTokens(
                p, mode="replace", position="end", before_norm=layer == 0
            )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            vision_tokens=self.config.vision_tokens,
            vision_depth=getattr(self, "_vision_depth", self.config.vision_depth),
        )
        return out
