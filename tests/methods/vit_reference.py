"""Independent transcriptions of the reference ViT forwards (SSF, AdaptFormer, FacT, Convpass) on a
timm ``VisionTransformer``'s own modules, written from the reference code line by line (explicit
softmax attention, no slots), so the methods' slot-based forwards can be checked against them.

Each ``hooks`` object may define: ``patch(x)``, ``final(x)``, ``ln1(l, h)``, ``ln2(l, h)``,
``qkv(l, x, qkv)``, ``proj(l, a, out)``, ``fc1(l, h, u)``, ``fc2(l, a, y)``, ``attn_extra(l, x, h)``
and ``mlp_extra(l, x, h)``; a missing hook is the identity (or adds nothing).
"""

from __future__ import annotations

import torch


def _call(hooks, name, default, *args):
    fn = getattr(hooks, name, None)
    return fn(*args) if fn is not None else default


def attention(attn, x, layer, hooks):
    """timm 0.4-era ``Attention.forward`` as the references patch it (SSF vision_transformer.py:L196-213)."""
    batch, n, c = x.shape
    qkv = _call(hooks, "qkv", attn.qkv(x), layer, x, attn.qkv(x))
    qkv = qkv.reshape(batch, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    a = (weights @ v).transpose(1, 2).reshape(batch, n, c)
    return _call(hooks, "proj", attn.proj(a), layer, a, attn.proj(a))


def mlp(module, h, layer, hooks):
    u = _call(hooks, "fc1", module.fc1(h), layer, h, module.fc1(h))
    a = module.act(u)
    return _call(hooks, "fc2", module.fc2(a), layer, a, module.fc2(a))


def forward(vit, pixels, hooks):
    """Pre-logits features (CLS after the final norm) of ``vit`` with the reference's modifications."""
    x = _call(hooks, "patch", vit.patch_embed(pixels), vit.patch_embed(pixels))
    x = vit.norm_pre(vit._pos_embed(x))
    for layer, blk in enumerate(vit.blocks):
        h = _call(hooks, "ln1", blk.norm1(x), layer, blk.norm1(x))
        x = x + attention(blk.attn, h, layer, hooks) + _call(hooks, "attn_extra", 0, layer, x, h)
        h = _call(hooks, "ln2", blk.norm2(x), layer, blk.norm2(x))
        x = x + mlp(blk.mlp, h, layer, hooks) + _call(hooks, "mlp_extra", 0, layer, x, h)
    x = _call(hooks, "final", vit.norm(x), vit.norm(x))
    return x[:, 0]


def randomize(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Every parameter of ``module`` to N(0, std) (scales to 1 + N(0, std)), so zero-initialised
    branches contribute and the comparison is not trivially 0 == 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1.0 + noise if name.endswith(("scale", "magnitude")) else noise)
