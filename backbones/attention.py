"""The one attention implementation every method goes through.

It projects queries/keys/values with the backbone's frozen weights (read in place, never copied),
appends extra keys/values (residual-space tokens projected by the same frozen ``W_k``/``W_v``, and
head-space keys/values), extends the causal mask with always-visible columns for them, and calls
``torch.nn.functional.scaled_dot_product_attention``. Queries are never added: the sequence length
of the residual stream is unchanged by key/value prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

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
) -> torch.Tensor:
    """Multi-head self-attention of ``x`` (B, L, d), already normalised by the block's ``ln_1``.

    ``norm`` is that ``ln_1``: residual-space key/value tokens pass through it before ``W_k``/``W_v``.
    """
    batch, length, width = x.shape
    head_dim = width // heads
    qkv = F.linear(x, qkv_weight, qkv_bias)
    if slots is not None and slots.qkv_delta is not None:
        qkv = qkv + slots.qkv_delta(x)
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
        mask = prompt_aware_causal_mask(length, n_extra, x.device) if causal else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = out.transpose(1, 2).reshape(batch, length, width)
    return F.linear(out, out_weight, out_bias)
