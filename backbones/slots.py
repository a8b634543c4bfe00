"""Insertion points: the per-layer records that methods fill and a tower's forward reads.

Methods never patch a backbone's code. They put tensors and modules into these slots; the tower's
block loop (``backbones/tower.py``) and the one attention implementation (``backbones/attention.py``)
read them. Slots hold *references* to parameters a method owns, so moving or saving the method moves
or saves the prompts, and the backbone's own state is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Position = Literal["after_first", "end"]
Mode = Literal["replace", "keep"]
# The ops of a block whose outputs ``LayerSlots.after_op`` may transform (SSF's scale and shift):
# the two pre-norms, the fused qkv projection, the attention's output projection and the MLP's linears.
OPS = ("ln_1", "qkv", "proj", "ln_2", "fc1", "fc2")


def _active(tokens: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Select the unmasked tokens along ``dim``; a masked token leaves the computation entirely."""
    if mask is None:
        return tokens
    if mask.dtype != torch.bool:
        raise TypeError("token masks must be boolean (True = active)")
    if bool(mask.all()):
        return tokens
    index = mask.nonzero(as_tuple=True)[0]
    return tokens.index_select(dim, index)


@dataclass
class InputTokens:
    """Tokens placed in the residual stream before a layer (VPT, E²VPT visual prompts).

    ``tokens`` is (n, d), one set shared by every example of a batch, or (B, n, d), one set per
    example (the tower checks B against its batch). ``mode='replace'`` drops the tokens an earlier
    layer inserted at the same position (deep VPT); ``'keep'`` adds to them. ``position='after_first'``
    is after CLS (image) or SOS (text); ``'end'`` appends (not allowed on causal towers, where nothing
    after EOT is ever read).

    ``dropout`` (prompt dropout) draws its mask per example when ``per_example_dropout`` (the
    references expand the prompts over the batch, then drop out: KMnP/vpt
    src/models/vit_prompt/vit.py:L82 and L114-115); ``False`` draws one mask shared by the batch
    (KMnP/vpt's Swin deep prompts, src/models/vit_prompt/swin_transformer.py:L255). With no dropout,
    or in eval mode, shared tokens are only expanded (a view): no per-example cost.

    ``before_norm`` (layer 0 only, towers that set ``Tower.accepts_before_norm``): the tokens enter
    before the tower's input LayerNorm and pass through it (CLIP's ``ln_pre``: MaPLe's VPT appends
    its vision prompts after the position embedding and before ``ln_pre``,
    muzairkhattak/multimodal-prompt-learning clip/model.py:L400-411).
    """

    tokens: torch.Tensor  # (n, d) shared, or (B, n, d) per example
    mode: Mode = "replace"
    position: Position = "after_first"
    mask: torch.Tensor | None = None  # (n,) bool, True = active
    dropout: nn.Module | None = None
    per_example_dropout: bool = True
    before_norm: bool = False

    def select(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The active tokens before dropout, and a multiplier (broadcast over them) applied after
        dropout, or None. Subclasses with gates (E²VPT) override this."""
        return _active(self.tokens, self.mask, self.tokens.dim() - 2), None

    def active(self) -> torch.Tensor:
        """The active tokens in the slot's own shape ((n, d) or (B, n, d)) with dropout applied to
        that tensor: for shared tokens one mask for the whole batch. Towers use :meth:`for_batch`."""
        tokens, scale = self.select()
        if self.dropout is not None:
            tokens = self.dropout(tokens)
        return tokens * scale.to(tokens.dtype) if scale is not None else tokens

    def drops(self) -> bool:
        """True when dropout would change the tokens now (a module in train mode with p > 0)."""
        d = self.dropout
        return d is not None and d.training and float(getattr(d, "p", 1.0)) > 0

    def for_batch(self, batch: int) -> torch.Tensor:
        """The tokens for a batch of ``batch`` examples, (B, n, d); per-example dropout masks when
        ``per_example_dropout`` and dropout is active, else one mask (or none) for the batch."""
        tokens, scale = self.select()
        if tokens.dim() == 3:
            if tokens.shape[0] != batch:
                raise ValueError(f"per-example input tokens for {tokens.shape[0]} examples, batch of {batch}")
        elif tokens.dim() != 2:
            raise ValueError(f"input tokens must be (n, d) or (B, n, d), got {tuple(tokens.shape)}")
        elif self.per_example_dropout and self.drops():
            tokens = tokens.unsqueeze(0).expand(batch, -1, -1)  # expand, then drop out (KMnP vit.py:L82)
        if self.dropout is not None:
            tokens = self.dropout(tokens)
        if scale is not None:
            tokens = tokens * scale.to(tokens.dtype)
        return tokens if tokens.dim() == 3 else tokens.unsqueeze(0).expand(batch, -1, -1)


@dataclass
class MaskedTokens:
    """Residual-space key/value tokens (Adapt): pass through the frozen ``ln_1``, ``W_k``, ``W_v``."""

    tokens: torch.Tensor  # (n, d)
    mask: torch.Tensor | None = None  # (n,) bool

    def active(self) -> torch.Tensor:
        return _active(self.tokens, self.mask, 0)


@dataclass
class MaskedKV:
    """Head-space keys and values concatenated after the projections (E²VPT, prefix tuning)."""

    keys: torch.Tensor  # (heads, n, d_head)
    values: torch.Tensor  # (heads, n, d_head); may be the same tensor as keys (shared K=V)
    mask: torch.Tensor | None = None  # (n,) bool

    def active(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _active(self.keys, self.mask, 1), _active(self.values, self.mask, 1)


@dataclass
class ParallelBranch:
    """A module beside a block's attention or MLP whose output is added to that branch's output
    before the residual add (AdaptFormer, Convpass). ``normed``: it reads the branch's normalised
    input (``ln_1(x)`` / ``ln_2(x)``: Convpass, JieShibo/PETL-ViT convpass/vtab/convpass.py:L8-9);
    otherwise the residual stream ``x`` itself (AdaptFormer, ShoufaChen/AdaptFormer
    models/custom_modules.py:L78-79)."""

    module: nn.Module
    normed: bool = True


@dataclass
class LayerSlots:
    """What methods may attach to one transformer layer. Empty slots cost nothing: a layer whose
    slots are all empty runs exactly the ops of the plain block.

    Each slot (each ``after_op`` entry) holds one method's contribution: a method attaching into a
    slot another method filled is refused (``methods/base.py``), so two methods compose only
    through different slots (VPT's input tokens and LoRA's qkv delta), never by stacking two sets
    of kv tokens or two qkv deltas in one layer."""

    input_tokens: InputTokens | None = None
    kv_residual: MaskedTokens | None = None
    kv_heads: MaskedKV | None = None
    qkv_delta: nn.Module | None = None  # x (B, L, d) -> delta of the fused qkv projection (B, L, 3d): LoRA
    # Deltas of the other linears of a block, each a function of that linear's input (FacT):
    proj_delta: nn.Module | None = None  # heads merged (B, L, d) -> delta of the output projection (B, L, d)
    fc1_delta: nn.Module | None = None  # ln_2(x) (B, L, d) -> delta of the MLP's first linear (B, L, h)
    fc2_delta: nn.Module | None = None  # activation (B, L, h) -> delta of the MLP's second linear (B, L, d)
    # op name (OPS) -> a module applied to that op's output (SSF's per-channel scale and shift)
    after_op: dict[str, nn.Module] = field(default_factory=dict)
    after_attn: nn.Module | None = None  # applied to the attention branch before the residual add
    after_mlp: nn.Module | None = None  # applied to the MLP branch before the residual add
    parallel_attn: ParallelBranch | None = None  # added to the attention branch (Convpass)
    parallel_mlp: ParallelBranch | None = None  # added to the MLP branch (AdaptFormer, Convpass)

    def modules(self) -> list[nn.Module]:
        """Every module this layer's slots hold (what may carry trainable parameters)."""
        mods = [
            self.qkv_delta,
            self.proj_delta,
            self.fc1_delta,
            self.fc2_delta,
            self.after_attn,
            self.after_mlp,
            *self.after_op.values(),
            *(b.module for b in (self.parallel_attn, self.parallel_mlp) if b is not None),
        ]
        return [m for m in mods if m is not None]


@dataclass
class TowerSlots:
    """Tower-level insertion points outside the blocks (SSF's scale and shift after the patch
    embedding and after the final norm, dongzelian/SSF models/vision_transformer.py:L366-367, L532-533)."""

    after_patch_embed: nn.Module | None = None  # patch tokens (B, N, d) or map (B, H, W, d), before CLS/pos
    after_final_norm: nn.Module | None = None  # the tower's final norm output

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.after_patch_embed, self.after_final_norm) if m is not None]
