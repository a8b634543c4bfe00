"""Towers: a frozen stack of transformer blocks that reads its layers' slots.

A tower runs the real model's blocks by reading their submodules (norms, attention weights, MLP,
layer scale) in place; attention always goes through :func:`slot_attention`. Backbone adapters
subclass :class:`Tower` and add the embedding and pooling of their model around :meth:`run_blocks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .attention import slot_attention
from .slots import InputTokens, LayerSlots, TowerSlots


@dataclass
class BlockView:
    """Accessors into one real transformer block (no weights are copied)."""

    ln_1: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    qkv_weight: Callable[[], torch.Tensor]
    qkv_bias: Callable[[], torch.Tensor | None]
    out_proj: nn.Linear
    ls_1: nn.Module
    ls_2: nn.Module
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None

    def forward(self, x: torch.Tensor, slots: LayerSlots, heads: int, causal: bool) -> torch.Tensor:
        h = self.norm_1(x, slots)
        a = slot_attention(
            h,
            self.qkv_weight(),
            self.qkv_bias(),
            self.out_proj.weight,
            self.out_proj.bias,
            heads,
            slots=slots,
            causal=causal,
            norm=self.ln_1,
            q_norm=self.q_norm if self.q_norm is not None else _identity,
            k_norm=self.k_norm if self.k_norm is not None else _identity,
        )
        x = x + self.finish_attention(a, x, h, slots)
        return x + self.mlp_branch(x, slots)

    # The pieces of a pre-norm block every tower's loop shares (Swin calls them around its windows).
    def norm_1(self, x: torch.Tensor, slots: LayerSlots) -> torch.Tensor:
        """``ln_1(x)``, then ``after_op["ln_1"]`` when filled."""
        h = self.ln_1(x)
        after = slots.after_op.get("ln_1") if slots.after_op else None
        return after(h) if after is not None else h

    def finish_attention(
        self, a: torch.Tensor, x: torch.Tensor, h: torch.Tensor, slots: LayerSlots
    ) -> torch.Tensor:
        """The attention branch before the residual add: layer scale, ``after_attn``, then the
        ``parallel_attn`` branch of ``h`` (normalised) or ``x`` added."""
        a = self.ls_1(a)
        if slots.after_attn is not None:
            a = slots.after_attn(a)
        if slots.parallel_attn is not None:
            a = a + slots.parallel_attn.module(h if slots.parallel_attn.normed else x)
        return a

    def mlp_branch(self, x: torch.Tensor, slots: LayerSlots) -> torch.Tensor:
        """``ls_2(mlp(ln_2(x)))`` with the MLP slots: ``after_op`` on ln_2/fc1/fc2, the fc1/fc2 deltas,
        ``after_mlp``, then the ``parallel_mlp`` branch added."""
        h = self.ln_2(x)
        ops = slots.after_op
        if ops and "ln_2" in ops:
            h = ops["ln_2"](h)
        inside = slots.fc1_delta is not None or slots.fc2_delta is not None or "fc1" in ops or "fc2" in ops
        m = self.ls_2(self._mlp_with_slots(h, slots) if inside else self.mlp(h))
        if slots.after_mlp is not None:
            m = slots.after_mlp(m)
        if slots.parallel_mlp is not None:
            m = m + slots.parallel_mlp.module(h if slots.parallel_mlp.normed else x)
        return m

    def mlp_parts(self) -> MlpParts:
        """The block's MLP as its two linears and what runs between them (read in place)."""
        return mlp_parts(self.mlp)

    def _mlp_with_slots(self, h: torch.Tensor, slots: LayerSlots) -> torch.Tensor:
        parts = self.mlp_parts()
        ops = slots.after_op
        u = parts.fc1(h)
        if slots.fc1_delta is not None:
            u = u + slots.fc1_delta(h)
        if "fc1" in ops:
            u = ops["fc1"](u)
        u = parts.between(u)
        y = parts.fc2(u)
        if slots.fc2_delta is not None:
            y = y + slots.fc2_delta(u)
        if "fc2" in ops:
            y = ops["fc2"](y)
        return parts.after(y)


@dataclass
class MlpParts:
    """A block MLP taken apart: ``after(fc2(between(fc1(h))))`` equals ``mlp(h)``."""

    fc1: nn.Linear
    between: Callable[[torch.Tensor], torch.Tensor]  # activation (+ timm's dropout and hidden norm)
    fc2: nn.Linear
    after: Callable[[torch.Tensor], torch.Tensor]  # timm's output dropout (identity in eval mode)


def mlp_parts(mlp: nn.Module) -> MlpParts:
    """timm's ``Mlp`` (fc1, act, drop1, norm, fc2, drop2) or open_clip's (c_fc, gelu, c_proj); any other
    MLP (gated, SwiGLU) has no single fc1/fc2 pair and is refused."""
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        if getattr(mlp, "chunk", None) is not None or hasattr(mlp, "gate"):
            raise ValueError(f"{type(mlp).__name__}: gated MLPs have no single fc1/fc2 pair")
        m: Any = mlp  # timm's Mlp; ``between`` reads its submodules at call time

        def between(u: torch.Tensor) -> torch.Tensor:
            return m.norm(m.drop1(m.act(u)))

        return MlpParts(fc1, between, fc2, m.drop2)
    c_fc, c_proj = getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None)
    if isinstance(c_fc, nn.Linear) and isinstance(c_proj, nn.Linear):
        return MlpParts(c_fc, cast(nn.Module, mlp.gelu), c_proj, _identity)
    raise ValueError(f"unsupported MLP {type(mlp).__name__}: expected timm Mlp or open_clip's c_fc/c_proj")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class Inserted:
    """How many method tokens currently sit in the stream at each position."""

    after_first: int = 0
    end: int = 0


def insert_tokens(x: torch.Tensor, slot: InputTokens, inserted: Inserted) -> torch.Tensor:
    """Place ``slot``'s active tokens into ``x`` (B, L, d), replacing or keeping earlier ones. Shared
    (n, d) tokens are expanded over the batch; prompt dropout draws its masks per example (see
    :meth:`InputTokens.for_batch`)."""
    tokens = slot.for_batch(x.shape[0]).to(x.dtype)
    n = tokens.shape[1]
    if slot.position == "after_first":
        drop = inserted.after_first if slot.mode == "replace" else 0
        x = torch.cat([x[:, :1], tokens, x[:, 1 + drop :]], dim=1)
        inserted.after_first += n - drop
    else:
        drop = inserted.end if slot.mode == "replace" else 0
        x = torch.cat([x[:, : x.shape[1] - drop], tokens], dim=1)
        inserted.end += n - drop
    return x


def strip_inserted(x: torch.Tensor, inserted: Inserted) -> torch.Tensor:
    """Remove method tokens so pooling sees the backbone's own tokens only."""
    end = x.shape[1] - inserted.end
    return torch.cat([x[:, :1], x[:, 1 + inserted.after_first : end]], dim=1)


class Tower(nn.Module):
    """A stack of frozen blocks with one :class:`LayerSlots` per layer.

    Subclasses register the real model's modules (so parameters are counted and moved) and set
    ``width``, ``heads``, ``depth``, ``causal`` and ``_views``.

    Hierarchical towers (Swin: stages of widths 128..1024) differ per layer; they pass ``widths`` and
    ``heads`` to :meth:`_init_slots`, and methods size what they put into layer ``l``'s slots with
    :meth:`layer_width`, :meth:`layer_heads` and :meth:`layer_head_dim`, which fall back to
    ``width``/``heads`` on the plain towers. ``width``/``heads`` are then those of the first layer.
    """

    name: str
    width: int
    heads: int
    depth: int
    causal: bool = False
    # True where the tower's embedding places layer 0's ``before_norm`` input tokens before its input
    # LayerNorm (the CLIP image tower's ``ln_pre``); elsewhere such a slot is refused.
    accepts_before_norm: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._views: list[BlockView] = []
        self.slots: list[LayerSlots] = []
        self.tower_slots = TowerSlots()
        self._layer_widths: tuple[int, ...] | None = None
        self._layer_heads: tuple[int, ...] | None = None

    def _init_slots(
        self,
        views: list[BlockView],
        *,
        widths: list[int] | None = None,
        heads: list[int] | None = None,
    ) -> None:
        self._views = views
        self.depth = len(views)
        self.slots = [LayerSlots() for _ in views]
        for given in (widths, heads):
            if given is not None and len(given) != len(views):
                raise ValueError(f"per-layer sizes {list(given)} do not match the {len(views)} layers")
        self._layer_widths = tuple(int(w) for w in widths) if widths is not None else None
        self._layer_heads = tuple(int(h) for h in heads) if heads is not None else None

    def clear_slots(self) -> None:
        self.slots = [LayerSlots() for _ in self._views]
        self.tower_slots = TowerSlots()

    def filled_slots(self) -> dict[tuple[int | None, str], object]:
        """Every filled slot by (layer, slot name): layer None for the tower-level slots (and the
        text tower's ``token_embeddings``), an ``after_op`` entry named ``after_op.<op>``. A method's
        ``attach`` is recorded by comparing these before and after it (``methods/base.py``)."""
        out: dict[tuple[int | None, str], object] = {}
        for layer, s in enumerate(self.slots):
            for f in dataclasses.fields(s):
                value = getattr(s, f.name)
                if f.name == "after_op":
                    out.update(((layer, f"after_op.{op}"), module) for op, module in value.items())
                elif value is not None:
                    out[(layer, f.name)] = value
        for f in dataclasses.fields(self.tower_slots):
            if (value := getattr(self.tower_slots, f.name)) is not None:
                out[(None, f.name)] = value
        if getattr(self, "token_embeddings", None) is not None:
            out[(None, "token_embeddings")] = self.token_embeddings
        return out

    def set_slot(self, layer: int | None, slot: str, value: object) -> None:
        """Fill one slot named as :meth:`filled_slots` names it with ``value``, or empty it (None)."""
        if layer is None:
            setattr(self if slot == "token_embeddings" else self.tower_slots, slot, value)
        elif slot.startswith("after_op."):
            ops = self.slots[layer].after_op
            op = slot.removeprefix("after_op.")
            if value is None:
                ops.pop(op, None)
            else:
                ops[op] = cast(nn.Module, value)
        else:
            setattr(self.slots[layer], slot, value)

    def layer_grid(self, layer: int) -> tuple[int, int] | None:  # noqa: ARG002 - per-layer on Swin
        """The (rows, cols) patch grid whose tokens are the last ``rows * cols`` of layer ``layer``'s
        stream (after CLS and any prompts placed after it); None for towers without one (text).
        Convolutional branches (Convpass) need it."""
        return None

    def fold_patch_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        """Fold ``y -> scale * y + shift`` on the patch embedding's output into the frozen weights
        (SSF's ``fold``; ``undo``: take it out again); towers with a patch embedding implement it."""
        raise NotImplementedError(f"tower {self.name!r} has no patch embedding to fold a scale/shift into")

    def fold_final_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        """Fold ``y -> scale * y + shift`` on the final norm's output into that norm's affine."""
        raise NotImplementedError(f"tower {self.name!r} has no final norm to fold a scale and shift into")

    def after_patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        slot = self.tower_slots.after_patch_embed
        return slot(x) if slot is not None else x

    def after_final_norm(self, x: torch.Tensor) -> torch.Tensor:
        slot = self.tower_slots.after_final_norm
        return slot(x) if slot is not None else x

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def layer_width(self, layer: int) -> int:
        """Residual width of layer ``layer`` (``width`` unless the tower's stages differ)."""
        return self._layer_widths[layer] if self._layer_widths is not None else self.width

    def layer_heads(self, layer: int) -> int:
        """Attention heads of layer ``layer`` (``heads`` unless the tower's stages differ)."""
        return self._layer_heads[layer] if self._layer_heads is not None else self.heads

    def layer_head_dim(self, layer: int) -> int:
        return self.layer_width(layer) // self.layer_heads(layer)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """Every layer's width, in order."""
        return tuple(self.layer_width(layer) for layer in range(self.depth))

    def has_trainable_parameters(self) -> bool:
        """True when anything this tower computes depends on a parameter that requires grad."""
        if any(p.requires_grad for p in self.parameters()):
            return True
        for s in self.slots:
            for item in (s.input_tokens, s.kv_residual, s.kv_heads):
                if item is not None:
                    tensors = [getattr(item, f) for f in ("tokens", "keys", "values") if hasattr(item, f)]
                    if any(t.requires_grad for t in tensors):
                        return True
            for mod in s.modules():
                if any(p.requires_grad for p in mod.parameters()):
                    return True
        if any(p.requires_grad for mod in self.tower_slots.modules() for p in mod.parameters()):
            return True
        return bool(getattr(self, "token_embeddings", None))

    def check_input_tokens(self) -> None:
        """Refuse input-token slots this tower cannot honour (``end`` on a causal tower, ``before_norm``
        other than at layer 0 of a tower that accepts it)."""
        for layer, s in enumerate(self.slots):
            slot = s.input_tokens
            if slot is None:
                continue
            if self.causal and slot.position == "end":
                raise ValueError(
                    f"tower {self.name!r} is causal: tokens appended at the end are never read; "
                    "use position='after_first'"
                )
            if slot.before_norm and (layer != 0 or not self.accepts_before_norm):
                raise ValueError(
                    f"tower {self.name!r}: input tokens before the input norm (before_norm) are only "
                    "possible at layer 0 of a tower with an input LayerNorm (CLIP's image tower); "
                    f"got layer {layer}"
                )

    def run_blocks(self, x: torch.Tensor, inserted: Inserted | None = None) -> tuple[torch.Tensor, Inserted]:
        """Run every layer, inserting input tokens where slots ask. Returns the stream and counts.

        ``inserted``: the tokens the tower's embedding already placed in ``x`` (layer 0's
        ``before_norm`` slot, which is then not inserted again); a ``before_norm`` slot without it is
        an error (the tokens would be lost)."""
        self.check_input_tokens()
        first = self.slots[0].input_tokens if self.slots else None
        if first is not None and first.before_norm and inserted is None:
            raise ValueError(
                f"tower {self.name!r}: layer 0's before_norm tokens are placed by the tower's embedding; "
                "pass the Inserted counts it returned (or call the tower's forward)"
            )
        inserted = inserted if inserted is not None else Inserted()
        for layer, (view, slots) in enumerate(zip(self._views, self.slots, strict=True)):
            slot = slots.input_tokens
            if slot is not None and not slot.before_norm:
                x = insert_tokens(x, slot, inserted)
            x = view.forward(x, slots, self.layer_heads(layer), self.causal)
        return x, inserted
