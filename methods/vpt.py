"""VPT: visual prompt tuning, shallow and deep (Jia et al., ECCV 2022), as KMnP/vpt implements it.

Prompts enter after CLS (image) or after SOS (CLIP text) with no position embedding. Deep mode
gives every layer its own prompts, which replace the previous layer's outputs at those positions.
Init is uniform in +-sqrt(6 / (3*16*16 + d)): Xavier with the reference's ViT-B/16 patch fan-in
(the 16 is the reference's constant, kept for every backbone; KMnP/vpt
src/models/vit_prompt/vit.py:L57-70). Prompt dropout draws its mask per example: the reference
expands the prompts over the batch and then drops out (vit.py:L82, L114-115).

On CLIP backbones (kind ``clip``) VPT follows the CLIP-VPT baseline of the MaPLe repository
(muzairkhattak/multimodal-prompt-learning, ``trainers/vpt.py`` with
``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``) unless ``layout``/``init`` say otherwise:

* vision only by default (``tower=image``; trainers/vpt.py:L33-37 builds CLIP with
  ``language_depth 0``, and L139-145 trains only parameters named ``VPT``);
* 8 tokens (``N_CTX_VISION: 8``, yaml L34) in all 12 layers (``PROMPT_DEPTH_VISION: 12``, yaml L37):
  the harness's defaults on CLIP (:meth:`VPT.kind_defaults`) are ``num_tokens=8, deep=true``, which
  gives 8 * 12 * 768 = 73,728 trainable parameters on CLIP ViT-B/16;
* init N(0, 0.02) (clip/model.py:L375-378 for the layer-0 prompts, L215-221 for the deeper ones),
  on the text tower too when it is prompted (as IVLP's deeper text prompts, L220; IVLP's layer-0
  text context is word-initialised from ``CTX_INIT``, trainers/independentVL.py:L82-90, which VPT
  here does not do: N(0, 0.02) as that file's random branch, L91-94);
* ``layout=maple``: the layer-0 prompts are appended at the END of the image sequence, after the
  position embedding and BEFORE ``ln_pre`` (clip/model.py:L400-411), and each deeper layer's prompts
  REPLACE the last n tokens (``ResidualAttentionBlock_IVLP``, clip/model.py:L232-241). Text-tower
  prompts (``tower=text|both``) go after SOS and replace positions 1..n, as IVLP's do (L242-252);
* no prompt dropout (the MaPLe VPT has none; ``dropout`` stays 0 by default).

The Adapt paper (Huang et al.) reports a VPT baseline on CLIP ViT-B/16 with 73,728 trainable
parameters but does not name its VPT code; matching MaPLe's VPT configuration is an inference from
that count (8 tokens x 12 layers x 768), not something the paper states. ``layout=kmnp`` and
``init=xavier`` give KMnP's placement (after CLS, after ``ln_pre``) and init on CLIP instead. On timm
ViT and Swin, VPT is exactly KMnP's (``auto`` resolves to ``kmnp``/``xavier`` there).

On Swin (backbones/swin.py) layer ``l``'s prompts have that layer's stage width and are shared by
all windows, as in the reference's Swin variant; the init bound uses the tower's first width
(the reference's ``embed_dim``), with the same 3*16*16 fan-in constant (the reference's Swin code
uses its 4x4 patch there: bound 0.185 instead of 0.0818 on Swin-B). Dropout there follows the
reference's Swin code: per example for the first layer's prompts (expand, then dropout:
src/models/vit_prompt/swin_transformer.py:L169-170), one mask per batch for the deep prompts
(dropout on the (blocks, n, C) parameter before it is expanded: L255).

On the OFA encoder-decoder (towers ``encoder`` and ``decoder``) ``tower`` defaults to ``encoder``
(the ``[image ; text]`` stream, where visual prompts belong); ``decoder``, a comma-separated list or
``both`` (every tower of the backbone) prompt the decoder too. Encoder prompts go after the first
image patch, decoder prompts after BOS (causal: every later position sees them, BOS does not), both
with zero position bias and no padding, and are stripped before the tower's final LayerNorm, so the
memory and the logits keep the backbone's positions. ``text_tokens`` applies to the decoder (the text
side) as to CLIP's text tower. Deep VPT on OFA-Base's encoder with 10 tokens: 10 * 6 * 768 = 46,080.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import InputTokens
from petlbench.errors import UserError

from ._towers import ENCODER_DECODER_KINDS, parse_towers, resolve_towers
from .base import MAX_LAYERS, MAX_TOKENS, Method

LAYOUTS = ("auto", "kmnp", "maple")
INITS = ("auto", "xavier", "normal")
MAPLE_INIT_STD = 0.02  # nn.init.normal_(ctx_vectors, std=0.02): multimodal-prompt-learning clip/model.py:L377


@dataclass
class VPTConfig:
    num_tokens: int = 5  # p (KMnP/vpt NUM_TOKENS default; 8 on CLIP, see kind_defaults)
    deep: bool = False  # (true on CLIP, see kind_defaults)
    depth: int | None = None  # layers that get their own prompts in deep mode (None: all)
    dropout: float = 0.0  # prompt dropout, per example (0.1 in the reference's deep runs)
    tower: str = "image"  # image | text | both (text and both need CLIP) | encoder | decoder (OFA)
    text_tokens: int | None = None  # tokens per layer on the text tower / OFA decoder (None: num_tokens)
    layout: str = "auto"  # image tower: auto (maple on CLIP, else kmnp) | kmnp (after CLS) | maple (end)
    init: str = "auto"  # auto (normal on CLIP, else xavier) | xavier (KMnP) | normal (N(0, 0.02), MaPLe)


class VPT(Method):
    name = "vpt"
    family = "prompt"
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022"
    Config = VPTConfig
    limits = {
        "num_tokens": (1, MAX_TOKENS),
        "text_tokens": (1, MAX_TOKENS),
        "depth": (1, MAX_LAYERS),
        "dropout": (0.0, 0.999),
    }
    towers = ("image", "text", "encoder", "decoder")

    def validate_config(self) -> None:
        c = self.config
        parse_towers(self.name, c.tower)  # image, text, encoder, decoder, a list of them, or both
        if c.num_tokens < 1 or (c.text_tokens is not None and c.text_tokens < 1):
            raise UserError("vpt: num_tokens must be at least 1")
        if not 0.0 <= c.dropout < 1.0:
            raise UserError("vpt: dropout must be in [0, 1)")
        if c.layout not in LAYOUTS:
            raise UserError(f"vpt: layout must be one of {', '.join(LAYOUTS)}, not {c.layout!r}")
        if c.init not in INITS:
            raise UserError(f"vpt: init must be one of {', '.join(INITS)}, not {c.init!r}")

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ()  # any of ``towers``: image (ViT, Swin, CLIP) or encoder/decoder (OFA)

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        if kind in ENCODER_DECODER_KINDS:
            return {"tower": "encoder"}
        if kind == "clip":
            # MaPLe's CLIP-VPT: N_CTX_VISION 8, PROMPT_DEPTH_VISION 12 (all layers of ViT-B/16):
            # multimodal-prompt-learning configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml:L34, L37
            return {"num_tokens": 8, "deep": True}
        return {}

    def _tower_names(self, backbone: Backbone) -> list[str]:
        spec = self.config.tower.strip().lower()
        if spec == "both" and "image" in backbone.towers:
            return ["image", "text"]  # CLIP's two towers (refused below where there is no text tower)
        return list(resolve_towers(self.name, spec, backbone))

    def resolved(self, kind: str) -> tuple[str, str]:
        """(layout, init) on a backbone of ``kind``: ``auto`` is MaPLe's on CLIP, KMnP's elsewhere."""
        c = self.config
        layout = c.layout if c.layout != "auto" else ("maple" if kind == "clip" else "kmnp")
        init = c.init if c.init != "auto" else ("normal" if kind == "clip" else "xavier")
        return layout, init

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        layout, init = self.resolved(backbone.kind)
        if layout == "maple" and backbone.kind != "clip":
            raise UserError(f"vpt: layout=maple is CLIP's; {backbone.name!r} is a {backbone.kind} backbone")
        self._layout, self._init = layout, init
        self.prompts = nn.ModuleDict()
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else None
        for tower_name in self._tower_names(backbone):
            if tower_name not in backbone.towers:
                raise UserError(f"vpt: backbone {backbone.name!r} has no {tower_name} tower")
            tower = backbone.tower(tower_name)
            text_side = tower_name in ("text", "decoder")
            n = c.text_tokens if text_side and c.text_tokens else c.num_tokens
            layers = (c.depth or tower.depth) if c.deep else 1
            if layers > tower.depth:
                raise UserError(f"vpt: depth {layers} exceeds the {tower_name} tower's {tower.depth} layers")
            params = nn.ParameterList(
                nn.Parameter(self._init_prompt(n, tower.layer_width(layer), tower.width, init))
                for layer in range(layers)
            )
            self.prompts[tower_name] = params
            # MaPLe's vision layout: layer 0 appended at the end before ln_pre, deeper layers replace
            # the last n tokens (clip/model.py:L404-411, L232-241); text prompts after SOS (L242-252).
            at_end = layout == "maple" and tower_name == "image"
            for layer, p in enumerate(params):
                tower.slots[layer].input_tokens = InputTokens(
                    p,
                    mode="replace",
                    position="end" if at_end else "after_first",
                    dropout=self.dropout,
                    # KMnP's Swin: per example at the first layer (swin_transformer.py:L169-170), one
                    # mask per batch for the deep prompts (L255); per example everywhere else.
                    per_example_dropout=not (backbone.kind == "swin" and layer > 0),
                    before_norm=at_end and layer == 0,
                )

    @staticmethod
    def _init_prompt(n: int, width: int, first_width: int, init: str) -> torch.Tensor:
        if init == "normal":  # MaPLe: nn.init.normal_(std=0.02), clip/model.py:L220, L377
            return torch.empty(n, width).normal_(0.0, MAPLE_INIT_STD)
        bound = math.sqrt(6.0 / (3 * 16 * 16 + first_width))  # KMnP vit.py:L57: Xavier, patch fan-in
        return torch.empty(n, width).uniform_(-bound, bound)

    def describe(self) -> dict:
        return {
            "tokens_per_layer": {
                name: [int(p.shape[0]) for p in cast(nn.ParameterList, params)]
                for name, params in self.prompts.items()
            },
            "layout": getattr(self, "_layout", None),
            "init": getattr(self, "_init", None),
        }
