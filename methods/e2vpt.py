"""E²VPT: effective and efficient visual prompt tuning (Han et al., ICCV 2023), with the behaviour of
the reference code (ChengHan111/E2VPT, ``MODEL.TRANSFER_TYPE "P_VK"``) unless an option says otherwise.

Mechanics:

* **Visual prompts** (paper section 3.2, VPT-deep placement): ``P`` tokens of the tower's width per
  layer, inserted after CLS with no position embedding; every deeper layer's prompts *replace* the
  previous layer's outputs at those positions (the backbone's ``input_tokens`` slot). Init is
  uniform in +-sqrt(6 / (3*16*16 + d)) (0.0625 on ViT-B/16), prompt dropout 0.1 (every reference
  command) with a mask per example (the reference expands the prompts over the batch, then drops
  out: ``vit_prompt_VK.py`` L134, L183-184; on Swin its deep prompts share one mask per batch,
  ``swin_transformer_prompt_VK.py`` L334).
* **Key-value prompts** (Eq. 4-5): ``K`` extra keys/values per layer in head space, shape
  (heads, K, d_head), concatenated in front of the projected keys and values (``LAYER_BEHIND``);
  queries are unchanged, so the residual stream keeps its length (the ``kv_heads`` slot). By
  default one tensor serves as both keys and values (``SHARE_PARAM_KV``); ``share_kv=false`` gives
  separate K and V. Init ``kaiming`` is ``kaiming_uniform_(a=0, mode='fan_in')`` on (heads, K, d_head),
  i.e. uniform in +-sqrt(6 / (K * d_head)) (the reference's ``ORIGIN_INIT=2``); ``uniform`` is
  +-sqrt(6 / (3*256 + 16)) (``ORIGIN_INIT=0``) and ``trunc_normal`` is std 0.02 (``ORIGIN_INIT=1``).
  KV prompts are never pruned (the reference's ``MASK_CLS_TOKEN_ON_VK`` is unfinished).
  ``text_kv_tokens`` optionally adds KV prompts to a CLIP text tower too (not in the paper).
* **Pruning** (section 3.3) acts on the visual prompts only, through mask variables shared by every
  layer: a token gate ``rho`` (P,) and a segment gate (P, R) with R = ``segments``. Segments are laid
  out as the reference does: *strided*, channel ``c`` belongs to segment ``c mod R``
  (``segment_layout=contiguous`` gives equal contiguous chunks instead). The reference uses R = 16;
  the paper says 8 (``segments=8``). In the first stage the gates start at 1 and are trainable, as in
  the reference (``learn_masks``: their names contain "prompt", so its freezing leaves them on).
* **Importance** (Eq. 6) of each gate is the mean over the training batches of ``|dL/d gate|``
  (``importance=abs``, the paper's expected sensitivity; the default) or of the signed gradient
  (``importance=signed``, what the reference code accumulates). It is computed in one pass over the
  training set in eval mode (no dropout, so the pass is deterministic) with the first stage's
  weights, per batch (not per example: the batch-mean loss's gradient). Tokens with the lowest
  importance are pruned first (``int(P * token_prune_percent / 100)`` of them, keeping at least
  ``min_tokens``); then, within every token, the ``int(R * segment_prune_percent / 100)`` segments
  with the lowest importance (keeping at least ``min_segments``). Ties go to the lower index.
  The reference computes both importances in the same pass, and so does this.
* **Rewinding**: the pruned structure is fixed (the gates are frozen at 1 for kept and 0 for pruned
  entries) and the model is retrained with the same schedule. ``rewind_init=fresh`` (default) starts
  from a new random init of every prompt and of the task head, as the reference builds a fresh model
  for the rewind run; ``keep`` continues from the trained values. Pruned entries of the prompt
  parameters are set to zero and stay zero (no gradient reaches them).
* A pruned token **leaves the computation** (``drop_pruned``, default): it is indexed out of the
  residual stream, so every attention and MLP really shrinks; ``drop_pruned=false`` keeps it in the
  sequence multiplied by a zero gate, as the reference code does (a zero token still takes part in
  attention).

Stages (:meth:`E2VPT.stages`): ``train`` (gates learnable) -> ``prune`` (importance pass and mask
fixing; no training) -> ``rewind`` (retrain). ``prune=false`` gives plain E²VPT without gates: one
stage.

What the reference does and this does not: it sweeps ``token_prune_percent`` x ``segment_prune_percent``
over 10..90 (about 72 rewind runs) and picks the pair by validation accuracy; here one run uses one
pair (a sweep over the two options reproduces the search).

Trainable parameters are counted as the *active* ones: visual entries of unpruned tokens and
segments, plus KV prompts, plus the gate scalars while they train (stage 1). On ViT-B/16 with
shared K=V that is ``9,216 * (P + K)`` (+ ``17 * P`` gates in stage 1 with R = 16).

On Swin (stages of different widths) every layer's visual prompts have that layer's width and its KV
prompts that layer's (heads, K, d_head); the same (P, R) gates serve every layer, a segment covering
``d_l / R`` channels of layer ``l`` (so each width must be divisible by R). Visual prompts follow the
VPT paper's Swin variant (backbones/swin.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import InputTokens, MaskedKV
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from .base import MAX_TOKENS, MAX_WIDTH, Method, Stage, StageContext

KV_INITS = ("kaiming", "uniform", "trunc_normal")
IMPORTANCE = ("abs", "signed")
LAYOUTS = ("strided", "contiguous")
REWIND_INITS = ("fresh", "keep")


@dataclass
class E2VPTConfig:
    visual_tokens: int = 5  # P (reference NUM_TOKENS_P; command.txt uses 10 for most VTAB tasks)
    kv_tokens: int = 5  # K (reference NUM_TOKENS)
    deep: bool = True  # visual prompts in every layer (DEEP_P); false: before the first layer only
    kv_deep: bool = True  # KV prompts in every layer (DEEP); false: the first layer only
    share_kv: bool = True  # one tensor as both keys and values (SHARE_PARAM_KV)
    kv_init: str = "kaiming"  # kaiming (ORIGIN_INIT 2) | uniform (0) | trunc_normal (1)
    dropout: float = 0.1  # visual prompt dropout (DROPOUT_P)
    text_kv_tokens: int = 0  # KV prompts per layer in a CLIP text tower (0: image tower only)
    prune: bool = True  # run the prune and rewind stages
    token_prune_percent: float = 50.0  # share of the P tokens pruned (the reference sweeps 10..90)
    segment_prune_percent: float = 50.0  # share of each token's segments pruned (sweep 10..90)
    segments: int = 16  # R: segments per token (reference code 16, paper 8)
    segment_layout: str = "strided"  # strided (channel c -> segment c mod R, reference) | contiguous
    min_tokens: int = 1  # MIN_NUMBER_CLS_TOKEN
    min_segments: int = 4  # MIN_NUMBER_CLS_TOKEN_PIECE
    importance: str = "abs"  # abs: E|dL/d mask| (paper Eq. 6) | signed: E[dL/d mask] (reference code)
    learn_masks: bool = True  # gates train in stage 1 (reference)
    drop_pruned: bool = True  # pruned tokens leave the sequence; false: zero-gated in place (reference)
    rewind_init: str = "fresh"  # fresh: new random prompts and head (reference) | keep: trained values


@dataclass
class GatedInputTokens(InputTokens):
    """Visual prompts whose active tokens are multiplied by a gate (E²VPT's token and segment masks).

    ``mask`` (bool) and ``gate`` are read at call time from their owner, so masks changed in place
    (pruning) or moved with the method (``.to``) are seen at once.
    """

    gate: Callable[[], torch.Tensor] | None = None  # () -> (n, d) multiplier
    keep: Callable[[], torch.Tensor | None] | None = None  # () -> (n,) bool, True = in the sequence

    def select(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kept tokens and their gate, applied after dropout (the reference drops out the expanded
        prompts, then multiplies by the masks: vit_prompt_VK.py:L134-143, L183-193; the two commute)."""
        tokens = self.tokens
        gate = self.gate() if self.gate is not None else None
        keep = self.keep() if self.keep is not None else self.mask
        if keep is not None and not bool(keep.all()):
            index = keep.nonzero(as_tuple=True)[0]
            tokens = tokens.index_select(0, index)
            gate = gate.index_select(0, index) if gate is not None else None
        return tokens, gate


def _visual_bound(width: int) -> float:
    """VPT's Xavier-uniform bound with the reference's ViT-B/16 patch fan-in (3 * 16 * 16)."""
    return math.sqrt(6.0 / (3 * 16 * 16 + width))


def _init_kv_(t: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Initialise a (heads, K, d_head) KV prompt in place as the reference's ``ORIGIN_INIT`` does."""
    if kind == "kaiming":  # fan_in of (heads, K, d_head) is K * d_head: bound sqrt(6 / (K * d_head))
        return nn.init.kaiming_uniform_(t, a=0, mode="fan_in", generator=generator)
    if kind == "uniform":  # the reference's hard-coded 3 * 256 + 16
        bound = math.sqrt(6.0 / (3 * 256 + 16))
        return nn.init.uniform_(t, -bound, bound, generator=generator)
    return nn.init.trunc_normal_(t, std=0.02, generator=generator)


class E2VPT(Method):
    """E²VPT (see the module docstring). Reference protocol (VTAB-1k, ViT-B/16): SGD momentum 0.9,
    cosine, 10 warmup epochs, 100 epochs, batch 64 (128 on FGVC), lr and wd grid-searched."""

    name = "e2vpt"
    family = "prompt"
    paper = "Han et al., E²VPT: An Effective and Efficient Approach for Visual Prompt Tuning, ICCV 2023"
    Config = E2VPTConfig
    limits = {
        "visual_tokens": (1, MAX_TOKENS),
        "kv_tokens": (0, MAX_TOKENS),
        "text_kv_tokens": (0, MAX_TOKENS),
        "segments": (1, MAX_WIDTH),
        "token_prune_percent": (0.0, 100.0),
        "segment_prune_percent": (0.0, 100.0),
    }
    towers = ("image", "text")
    suggested_protocol: ClassVar[dict[str, Any]] = {  # lr and weight decay: grid-searched per task
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 64,
        "epochs": 100,
        "warmup_epochs": 10,
    }
    # the pruning gates and buffers, created by attach when ``prune`` is on
    token_gate: nn.Parameter
    segment_gate: nn.Parameter
    token_keep: torch.Tensor
    segment_keep: torch.Tensor
    token_importance: torch.Tensor
    segment_importance: torch.Tensor
    pruned: torch.Tensor

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.visual = nn.ParameterList()  # one (P, d) per prompted layer of the image tower
        self.kv = nn.ModuleDict()  # tower -> ParameterList of (heads, K, d_head) (keys, or shared K=V)
        self.kv_values = nn.ModuleDict()  # tower -> values when share_kv is false
        self._towers: dict[str, Tower] = {}  # plain dict: the method must not own backbone weights
        self.dropout = nn.Dropout(self.config.dropout) if self.config.dropout > 0 else None
        self._width = 0
        self._kind = ""

    # ----- configuration ------------------------------------------------------------------------
    def validate_config(self) -> None:
        c = self.config
        if c.visual_tokens < 1:
            raise UserError(f"e2vpt: visual_tokens must be at least 1, got {c.visual_tokens}")
        if c.kv_tokens < 0 or c.text_kv_tokens < 0:
            raise UserError("e2vpt: kv_tokens and text_kv_tokens must be >= 0")
        if c.kv_init not in KV_INITS:
            raise UserError(f"e2vpt: kv_init must be one of {', '.join(KV_INITS)}, not {c.kv_init!r}")
        if c.importance not in IMPORTANCE:
            raise UserError(f"e2vpt: importance must be abs or signed, not {c.importance!r}")
        if c.segment_layout not in LAYOUTS:
            raise UserError(f"e2vpt: segment_layout must be strided or contiguous, not {c.segment_layout!r}")
        if c.rewind_init not in REWIND_INITS:
            raise UserError(f"e2vpt: rewind_init must be fresh or keep, not {c.rewind_init!r}")
        if not 0.0 <= c.dropout < 1.0:
            raise UserError(f"e2vpt: dropout must be in [0, 1), got {c.dropout}")
        for key in ("token_prune_percent", "segment_prune_percent"):
            if not 0.0 <= getattr(c, key) < 100.0:
                raise UserError(f"e2vpt: {key} must be in [0, 100), got {getattr(c, key)}")
        if c.segments < 1:
            raise UserError(f"e2vpt: segments must be at least 1, got {c.segments}")
        if not 1 <= c.min_tokens <= c.visual_tokens:
            raise UserError(f"e2vpt: min_tokens must be in [1, visual_tokens={c.visual_tokens}]")
        if not 1 <= c.min_segments <= c.segments:
            raise UserError(f"e2vpt: min_segments must be in [1, segments={c.segments}]")

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ("image",)  # the text tower gets KV prompts only when asked (text_kv_tokens)

    # ----- attach -------------------------------------------------------------------------------
    def attach(self, backbone: Backbone) -> None:
        c = self.config
        image = backbone.tower("image")
        layers = image.depth if c.deep else 1
        widths = [image.layer_width(layer) for layer in range(layers)]
        if c.prune and any(w % c.segments for w in widths):
            raise UserError(
                f"e2vpt: the image tower's width {sorted(set(widths))} is not divisible into "
                f"{c.segments} segments"
            )
        if c.text_kv_tokens and "text" not in backbone.towers:
            raise UserError(f"e2vpt: text_kv_tokens needs a text tower; {backbone.name!r} has none")
        self._towers["image"] = image
        self._width = image.width
        self._kind = backbone.kind
        bound = _visual_bound(image.width)
        for width in widths:
            self.visual.append(nn.Parameter(torch.empty(c.visual_tokens, width).uniform_(-bound, bound)))
        if c.prune:
            p, r = c.visual_tokens, c.segments
            self.token_gate = nn.Parameter(torch.ones(p), requires_grad=c.learn_masks)
            self.segment_gate = nn.Parameter(torch.ones(p, r), requires_grad=c.learn_masks)
            self.register_buffer("token_keep", torch.ones(p, dtype=torch.bool))
            self.register_buffer("segment_keep", torch.ones(p, r, dtype=torch.bool))
            self.register_buffer("token_importance", torch.zeros(p))
            self.register_buffer("segment_importance", torch.zeros(p, r))
            self.register_buffer("pruned", torch.zeros((), dtype=torch.bool))
        for name, tokens in (("image", c.kv_tokens), ("text", c.text_kv_tokens)):
            if not tokens:
                continue
            tower = backbone.tower(name)
            self._towers[name] = tower
            n_layers = tower.depth if c.kv_deep else 1
            shapes = [(tower.layer_heads(li), tokens, tower.layer_head_dim(li)) for li in range(n_layers)]
            self.kv[name] = nn.ParameterList(
                nn.Parameter(_init_kv_(torch.empty(shape), c.kv_init)) for shape in shapes
            )
            if not c.share_kv:
                self.kv_values[name] = nn.ParameterList(
                    nn.Parameter(_init_kv_(torch.empty(shape), c.kv_init)) for shape in shapes
                )
        self._bind_slots()

    def _bind_slots(self) -> None:
        c = self.config
        image = self._towers["image"]
        for layer, p in enumerate(self.visual):
            image.slots[layer].input_tokens = GatedInputTokens(
                p,
                mode="replace",
                position="after_first",
                dropout=self.dropout,
                # per example (ChengHan111/E2VPT src/models/vit_prompt/vit_prompt_VK.py:L134, L183-184:
                # expand, then dropout); on Swin one mask per batch for the deep prompts, as its Swin
                # code drops out the unexpanded parameter (swin_transformer_prompt_VK.py:L233-234, L334)
                per_example_dropout=not (self._kind == "swin" and layer > 0),
                gate=functools.partial(self.gate, p.shape[1]) if c.prune else None,
                keep=self._sequence_keep if c.prune else None,
            )
        for name, keys in self.kv.items():
            values = keys if self.config.share_kv else self.kv_values[name]
            pairs = zip(cast(nn.ParameterList, keys), cast(nn.ParameterList, values), strict=True)
            for layer, (k, v) in enumerate(pairs):
                self._towers[name].slots[layer].kv_heads = MaskedKV(k, v)

    # ----- masks --------------------------------------------------------------------------------
    def _expand_segments(self, per_segment: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """(P, R) per segment -> (P, d) per channel, in the configured layout (d: ``width``, default
        the first layer's; Swin's wider stages repeat the same R segments over more channels)."""
        reps = (width or self._width) // self.config.segments
        if self.config.segment_layout == "strided":
            return per_segment.repeat(1, reps)  # channel c -> segment c mod R (the reference's .repeat)
        return per_segment.repeat_interleave(reps, dim=1)

    def gate(self, width: int | None = None) -> torch.Tensor:
        """The visual prompts' multiplier (P, d): token gate x segment gate (shared by all layers)."""
        return self.token_gate.unsqueeze(1) * self._expand_segments(self.segment_gate, width)

    def _sequence_keep(self) -> torch.Tensor | None:
        return self.token_keep if self.config.drop_pruned else None

    def channel_keep(self, width: int | None = None) -> torch.Tensor:
        """Bool (P, d): which entries of each layer's visual prompt (of width ``d``) are unpruned."""
        if not self.config.prune:
            return torch.ones(self.config.visual_tokens, width or self._width, dtype=torch.bool)
        return self.token_keep.unsqueeze(1) & self._expand_segments(self.segment_keep, width)

    def _kv_lists(self) -> list[nn.ParameterList]:
        """Every KV prompt list (keys, then separate values): the ModuleDicts hold ParameterLists."""
        return [cast(nn.ParameterList, lst) for lst in (*self.kv.values(), *self.kv_values.values())]

    # ----- counting -----------------------------------------------------------------------------
    def num_trainable_parameters(self) -> int:
        visual = sum(int(self.channel_keep(p.shape[1]).sum()) for p in self.visual)
        kv = sum(p.numel() for lst in self._kv_lists() for p in lst)
        gates = 0
        if self.config.prune:
            gates = sum(g.numel() for g in (self.token_gate, self.segment_gate) if g.requires_grad)
        return visual + kv + gates

    # ----- stages -------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        if not self.config.prune:
            return [Stage("train", "visual and key-value prompts")]
        return [
            Stage("train", "visual and key-value prompts with learnable token/segment masks"),
            Stage(
                "prune",
                "importance of every mask on the training set; prune tokens, then segments",
                train=False,
                prepare=self._prepare_prune,
            ),
            Stage("rewind", "retrain with the pruned structure fixed", prepare=self._prepare_rewind),
        ]

    def _prepare_prune(self, ctx: StageContext) -> None:
        token, segment = self.importance_scores(ctx.model, ctx.batches())
        self.prune_by_importance(token, segment)

    def importance_scores(self, model: nn.Module, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over batches of dL/d gate (abs or signed, per ``importance``): (P,), (P, R).

        Runs ``model`` (pixels -> logits) in eval mode; changes no parameter and no ``.grad``."""
        gates = (self.token_gate, self.segment_gate)
        flags = [g.requires_grad for g in gates]
        was_training = model.training
        model.eval()
        token = torch.zeros_like(self.token_gate, dtype=torch.float32)
        segment = torch.zeros_like(self.segment_gate, dtype=torch.float32)
        count = 0
        try:
            for g in gates:
                g.requires_grad_(True)
            for pixels, labels in batches:
                loss = F.cross_entropy(model(pixels).float(), labels)
                g_token, g_segment = torch.autograd.grad(loss, gates)
                if self.config.importance == "abs":
                    g_token, g_segment = g_token.abs(), g_segment.abs()
                token += g_token.float()
                segment += g_segment.float()
                count += 1
        finally:
            for g, flag in zip(gates, flags, strict=True):
                g.requires_grad_(flag)
            model.train(was_training)
        if count == 0:
            raise ValueError("e2vpt: the importance pass saw no training batch")
        return token / count, segment / count

    def prune_counts(self) -> tuple[int, int]:
        """(tokens pruned, segments pruned per token): the reference's int(total * percent / 100),
        capped so that ``min_tokens`` and ``min_segments`` remain."""
        c = self.config
        tokens = min(int(c.visual_tokens * c.token_prune_percent / 100), c.visual_tokens - c.min_tokens)
        segments = min(int(c.segments * c.segment_prune_percent / 100), c.segments - c.min_segments)
        return tokens, segments

    @torch.no_grad()
    def prune_by_importance(self, token: torch.Tensor, segment: torch.Tensor) -> None:
        """Fix the masks from importance scores: lowest first, ties to the lower index; then freeze
        the gates at 1 (kept) / 0 (pruned) and zero the pruned prompt entries."""
        c = self.config
        if token.shape != self.token_keep.shape or segment.shape != self.segment_keep.shape:
            raise ValueError(
                f"importance shapes {tuple(token.shape)}, {tuple(segment.shape)} do not match the masks "
                f"{tuple(self.token_keep.shape)}, {tuple(self.segment_keep.shape)}"
            )
        n_tokens, n_segments = self.prune_counts()
        self.token_importance.copy_(token)
        self.segment_importance.copy_(segment)
        token_keep = torch.ones(c.visual_tokens, dtype=torch.bool)
        order = torch.sort(token.detach().cpu().double(), stable=True).indices
        token_keep[order[:n_tokens]] = False
        segment_keep = torch.ones(c.visual_tokens, c.segments, dtype=torch.bool)
        seg_order = torch.sort(segment.detach().cpu().double(), dim=1, stable=True).indices
        for t in range(c.visual_tokens):
            segment_keep[t, seg_order[t, :n_segments]] = False
        self.token_keep.copy_(token_keep)
        self.segment_keep.copy_(segment_keep)
        self.pruned.fill_(True)
        self._fix_masks()

    @torch.no_grad()
    def _fix_masks(self) -> None:
        self.token_gate.copy_(self.token_keep.to(self.token_gate.dtype))
        self.segment_gate.copy_(self.segment_keep.to(self.segment_gate.dtype))
        self.token_gate.requires_grad_(False)
        self.segment_gate.requires_grad_(False)
        for p in self.visual:
            p.mul_(self.channel_keep(p.shape[1]).to(device=p.device, dtype=p.dtype))

    def _prepare_rewind(self, ctx: StageContext) -> None:
        if not bool(self.pruned):
            raise RuntimeError("e2vpt: rewind needs the prune stage first")
        if self.config.rewind_init == "fresh":
            self.reinitialize(ctx.seed)
            head = getattr(ctx.model, "head", None)
            if head is not None:
                devices = [ctx.device] if ctx.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(ctx.seed + 104_729)
                    for module in head.modules():
                        if module is not head and hasattr(module, "reset_parameters"):
                            module.reset_parameters()
        self._fix_masks()

    @torch.no_grad()
    def reinitialize(self, seed: int) -> None:
        """A fresh random init of every prompt (deterministic in ``seed``), as the reference's rewind
        run builds a new model."""
        gen = torch.Generator().manual_seed(seed + 15_485_863)
        bound = _visual_bound(self._width)
        for p in self.visual:
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=gen))
        for lst in self._kv_lists():
            for p in lst:
                value = _init_kv_(torch.empty(p.shape, dtype=p.dtype), self.config.kv_init, gen)
                p.copy_(value)

    # ----- state --------------------------------------------------------------------------------
    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_method_state(state)
        if self.config.prune and bool(self.pruned):
            self.token_gate.requires_grad_(False)
            self.segment_gate.requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {
            "visual_tokens_per_layer": [int(p.shape[0]) for p in self.visual],
            "kv_tokens_per_layer": {
                name: [int(p.shape[1]) for p in cast(nn.ParameterList, lst)] for name, lst in self.kv.items()
            },
            "share_kv": c.share_kv,
            "trainable_parameters": self.num_trainable_parameters(),
        }
        if c.prune:
            n_tokens, n_segments = self.prune_counts()
            out.update(
                {
                    "pruned": bool(self.pruned),
                    "token_keep": self.token_keep.int().tolist(),
                    "segment_keep": self.segment_keep.int().tolist(),
                    "active_tokens": int(self.token_keep.sum()),
                    "segments": c.segments,
                    "segment_layout": c.segment_layout,
                    "prune_counts": {"tokens": n_tokens, "segments_per_token": n_segments},
                    "importance": c.importance,
                    "token_importance": [float(v) for v in self.token_importance],
                    "segment_importance": [[float(v) for v in row] for row in self.segment_importance],
                }
            )
        return out
