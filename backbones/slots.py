"""Insertion points: the per-layer records that methods fill and a tower's forward reads.

Methods never patch a backbone's code. They put tensors and modules into these slots; the tower's
block loop (``backbones/tower.py``) and the one attention implementation (``backbones/attention.py``)
read them. Slots hold *references* to parameters a method owns, so moving or saving the method moves
or saves the prompts, and the backbone's own state is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Position = Literal["after_first", "end"]
Mode = Literal["replace", "keep"]


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

    ``mode='replace'`` drops the tokens an earlier layer inserted at the same position (deep VPT);
    ``'keep'`` adds to them. ``position='after_first'`` is after CLS (image) or SOS (text);
    ``'end'`` appends (not allowed on causal towers, where nothing after EOT is ever read).
    """

    tokens: torch.Tensor  # (n, d)
    mode: Mode = "replace"
    position: Position = "after_first"
    mask: torch.Tensor | None = None  # (n,) bool, True = active
    dropout: nn.Module | None = None

    def active(self) -> torch.Tensor:
        tokens = _active(self.tokens, self.mask, 0)
        return self.dropout(tokens) if self.dropout is not None else tokens


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
class LayerSlots:
    """What methods may attach to one transformer layer. Empty slots cost nothing."""

    input_tokens: InputTokens | None = None
    kv_residual: MaskedTokens | None = None
    kv_heads: MaskedKV | None = None
    qkv_delta: nn.Module | None = None  # x (B, L, d) -> delta of the fused qkv projection (B, L, 3d): LoRA
    after_attn: nn.Module | None = None  # applied to the attention branch before the residual add
    after_mlp: nn.Module | None = None  # applied to the MLP branch before the residual add

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.input_tokens,
                self.kv_residual,
                self.kv_heads,
                self.qkv_delta,
                self.after_attn,
                self.after_mlp,
            )
        )
