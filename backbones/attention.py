"""The one attention implementation every method goes through.

It projects queries/keys/values with the backbone's frozen weights (read in place, never copied),
appends extra keys/values (residual-space tokens projected by the same frozen ``W_k``/``W_v``, and
head-space keys/values), extends the causal mask with always-visible columns for them, and calls
``torch.nn.functional.scaled_dot_product_attention``. Queries are never added: the sequence length
of the residual stream is unchanged by key/value prompts.

Backbones whose attention has more than a mask (Swin's relative position bias and shifted-window
mask, OFA's relative position buckets and padding) pass an additive ``attn_bias`` and/or a
``key_padding_mask`` for the sequence keys; prompt keys get zero bias and are never padded, so every
query sees them. ``scale`` overrides the softmax temperature (OFA scales by ``(d_head * f) ** -0.5``)
and ``head_transform`` runs on the per-head outputs before the output projection (NormFormer's head
scaling and attention LayerNorm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .slots import LayerSlots


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def prompt_aware_causal_mask(length: int, n_extra: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (True = may attend) for a causal sequence with ``n_extra`` prompt keys in front.

    Prompt keys are visible to every query; the sequence part stays lower-triangular.
    """
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if n_extra == 0:
        return causal
    visible = torch.ones(length, n_extra, dtype=torch.bool, device=device)
    return torch.cat([visible, causal], dim=1)


def slot_attention(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
    heads: int,
    *,
    slots: LayerSlots | None = None,
    causal: bool = False,
    norm: Callable[[torch.Tensor], torch.Tensor] = _identity,
    q_norm: Callable[[torch.Tensor], torch.Tensor] = _identity,
    k_norm: Callable[[torch.Tensor], torch.Tensor] = _identity,
    attn_bias: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    head_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-head self-attention of ``x`` (B, L, d), already normalised by the block's ``ln_1``.

    ``norm`` is that ``ln_1``: residual-space key/value tokens pass through it before ``W_k``/``W_v``.
    ``attn_bias``: additive float bias broadcastable to (B, heads, L, L) over the sequence keys.
    ``key_padding_mask``: bool (B, L), True where a key is padding. ``head_transform``: a function of
    the attention output (B, heads, L, d_head) applied before heads are merged and projected.
    Slots read here: ``qkv_delta`` (added to the fused projection), ``after_op["qkv"]`` (on the fused
    projection's output, before the split into heads), ``proj_delta`` (a function of the merged heads,
    added to the output projection) and ``after_op["proj"]`` (on the output projection's output).
    Residual-space key/value tokens are projected by the frozen weights only (not by those slots).
    """
    batch, length, width = x.shape
    head_dim = width // heads
    qkv = F.linear(x, qkv_weight, qkv_bias)
    if slots is not None and slots.qkv_delta is not None:
        qkv = qkv + slots.qkv_delta(x)
    after_qkv = slots.after_op.get("qkv") if slots is not None and slots.after_op else None
    if after_qkv is not None:
        qkv = after_qkv(qkv)
    q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = q_norm(q), k_norm(k)

    extra_k: list[torch.Tensor] = []
    extra_v: list[torch.Tensor] = []
    if slots is not None and slots.kv_heads is not None:
        pk, pv = slots.kv_heads.active()
        if pk.shape[1]:
            extra_k.append(pk.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1))
            extra_v.append(pv.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1))
    if slots is not None and slots.kv_residual is not None:
        tokens = slots.kv_residual.active()
        if tokens.shape[0]:
            kv_bias = qkv_bias[width:] if qkv_bias is not None else None
            pkv = F.linear(norm(tokens.to(x.dtype)), qkv_weight[width:], kv_bias)
            pk, pv = pkv.view(-1, 2, heads, head_dim).permute(1, 2, 0, 3).unbind(0)
            extra_k.append(k_norm(pk).unsqueeze(0).expand(batch, -1, -1, -1))
            extra_v.append(pv.unsqueeze(0).expand(batch, -1, -1, -1))

    n_extra = sum(t.shape[2] for t in extra_k)
    if n_extra:
        k = torch.cat([*extra_k, k], dim=2)
        v = torch.cat([*extra_v, v], dim=2)
    if attn_bias is None and key_padding_mask is None:
        if n_extra:
            mask = prompt_aware_causal_mask(length, n_extra, x.device) if causal else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    else:
        mask = sequence_bias(length, q.dtype, x.device, causal, attn_bias, key_padding_mask)
        if n_extra:
            mask = F.pad(mask, (n_extra, 0))  # prompt keys: zero bias, visible to every query
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if head_transform is not None:
        out = head_transform(out)
    out = out.transpose(1, 2).reshape(batch, length, width)
    projected = F.linear(out, out_weight, out_bias)
    if slots is None:
        return projected
    if slots.proj_delta is not None:
        projected = projected + slots.proj_delta(out)
    after_proj = slots.after_op.get("proj") if slots.after_op else None
    return after_proj(projected) if after_proj is not None else projected


def sequence_bias(
    length: int,
    dtype: torch.dtype,
    device: torch.device,
    causal: bool,
    attn_bias: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
) -> torch.Tensor:
    """One additive float mask over the sequence keys: bias, padding and causality combined.

    Shape broadcastable to (B, heads, L, L); ``-inf`` where a key may not be seen.
    """
    mask = _key_mask(length, length, dtype, device, attn_bias, key_padding_mask)
    if causal:
        upper = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        mask = mask.masked_fill(upper, float("-inf"))  # -inf fills commute with the padding's
    return mask


def _key_mask(
    rows: int,
    keys: int,
    dtype: torch.dtype,
    device: torch.device,
    attn_bias: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Zeros (1, 1, rows, keys) plus ``attn_bias``, ``-inf`` at the padded keys."""
    mask = torch.zeros(1, 1, rows, keys, dtype=dtype, device=device)
    if attn_bias is not None:
        mask = mask + attn_bias.to(dtype)
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be boolean (True = padding)")
        mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return mask


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, heads, L, d_head)."""
    batch, length, width = t.shape
    return t.view(batch, length, heads, width // heads).transpose(1, 2)


# Cross-attention reads its projections as modules: an encoder-decoder's q/k/v/out projections are
# separate ``nn.Linear`` layers (no fused weight that a method might replace, as in self-attention).
def project_memory(
    memory: torch.Tensor, k_proj: nn.Linear, v_proj: nn.Linear, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, heads, S, d_head) of an encoder output (B, S, d) for :func:`cross_attention`.

    Split from the attention itself so a decoder computes them once per input, not once per step.
    """
    k = F.linear(memory, k_proj.weight, k_proj.bias)
    v = F.linear(memory, v_proj.weight, v_proj.bias)
    return _split_heads(k, heads), _split_heads(v, heads)


def cross_attention(
    x: torch.Tensor,
    memory_kv: tuple[torch.Tensor, torch.Tensor],
    q_proj: nn.Linear,
    out_proj: nn.Linear,
    heads: int,
    *,
    attn_bias: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    head_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-head attention of queries ``x`` (B, T, d) over the keys and values (B, heads, S, d_head)
    of another sequence, from :func:`project_memory` (an encoder-decoder's cross-attention).

    No slots: methods that prompt self-attention (prefix tuning) leave cross-attention as it is, as
    OFA prompt tuning does. ``attn_bias`` broadcasts to (B, heads, T, S); ``key_padding_mask`` is bool
    (B, S), True where a key is padding.
    """
    batch, length, width = x.shape
    keys, values = memory_kv
    q = _split_heads(F.linear(x, q_proj.weight, q_proj.bias), heads)
    mask = None
    if attn_bias is not None or key_padding_mask is not None:
        mask = _key_mask(1, keys.shape[2], q.dtype, x.device, attn_bias, key_padding_mask)
    out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, scale=scale)
    if head_transform is not None:
        out = head_transform(out)
    out = out.transpose(1, 2).reshape(batch, length, width)
    return F.linear(out, out_proj.weight, out_proj.bias)
