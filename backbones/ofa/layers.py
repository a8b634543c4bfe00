"""OFA's building blocks: the ResNet stem, NormFormer attention modules and the layers.

Parameter names follow the transformers-branch checkpoints (``self_attn_layer_norm``, ``fc1``,
``ffn_layer_norm``...), with one deliberate difference: a self-attention keeps q/k/v as one fused
``in_proj_weight`` (3d, d) / ``in_proj_bias`` so :func:`~petlbench.backbones.attention.slot_attention`
(and through it prefix tuning, LoRA, Adapt-style tokens) reads it in place. The checkpoint loader
concatenates the released ``q_proj``/``k_proj``/``v_proj`` into it.

A layer's forward reads its :class:`~petlbench.backbones.slots.LayerSlots`; every self-attention goes
through ``slot_attention`` with the layer's position bias, the padding mask, OFA's temperature
``(d_head * 2) ** -0.5`` and NormFormer's per-head scale as ``head_transform``. Cross-attention (decoder
only) gets no slot: OFA prompt tuning leaves it untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import cross_attention, project_memory, slot_attention
from ..slots import LayerSlots
from .config import OFAConfig


class ResNetStem(nn.Module):
    """A torchvision-style ResNet truncated after ``layer3`` (stride 16, ``16 * width`` channels).

    Submodule names match the released ``embed_images`` weights. BatchNorm runs in eval mode with the
    backbone (running statistics never update), so the frozen stem is really frozen."""

    def __init__(self, layers: tuple[int, int, int], width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(width * 2, layers[1], 2)
        self.layer3 = self._stage(width * 4, layers[2], 2)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        # Imported here: torchvision's import (it loads torch._dynamo) costs seconds, and planning reads
        # this module through the backbone catalog without building a stem.
        from torchvision.models.resnet import Bottleneck

        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        mods = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        mods += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixels))))
        return self.layer3(self.layer2(self.layer1(x)))


class SelfAttention(nn.Module):
    """Fused q/k/v projection, output projection and NormFormer's learned per-head scale ``c_attn``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.c_attn = nn.Parameter(torch.ones(heads))

    def scale_heads(self, out: torch.Tensor) -> torch.Tensor:
        """NormFormer head scaling of the per-head outputs (B, heads, L, d_head)."""
        return out * self.c_attn.to(out.dtype).view(1, -1, 1, 1)


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention with separate projections (as released) and a head scale."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.c_attn = nn.Parameter(torch.ones(heads))

    def memory(self, encoder_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, S, d_head) of the encoder output; computed once per input."""
        return project_memory(encoder_out, self.k_proj, self.v_proj, self.heads)

    def scale_heads(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.c_attn.to(out.dtype).view(1, -1, 1, 1)


class FeedForward(nn.Module):
    """``fc2(ffn_layer_norm(gelu(fc1(x))))``: a view over a layer's FFN modules (not registered)."""

    def __init__(self, fc1: nn.Linear, ffn_layer_norm: nn.LayerNorm, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.ffn_layer_norm, self.fc2 = fc1, ffn_layer_norm, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_layer_norm(F.gelu(self.fc1(x))))


class _Layer(nn.Module):
    """What encoder and decoder layers share: self-attention with NormFormer extras and the FFN."""

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.scale = cfg.attn_scale
        self.self_attn = SelfAttention(d, cfg.attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(cfg.ffn_dim, eps=eps)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_layer_norm(F.gelu(self.fc1(x))))

    def attend(
        self,
        x: torch.Tensor,
        slots: LayerSlots,
        causal: bool,
        attn_bias: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Pre-LN self-attention sublayer (with the after-attention adapter slot), residual added."""
        attn = self.self_attn
        a = slot_attention(
            self.self_attn_layer_norm(x),
            attn.in_proj_weight,
            attn.in_proj_bias,
            attn.out_proj.weight,
            attn.out_proj.bias,
            attn.heads,
            slots=slots,
            causal=causal,
            norm=self.self_attn_layer_norm,
            attn_bias=attn_bias,
            key_padding_mask=key_padding_mask,
            scale=self.scale,
            head_transform=attn.scale_heads,
        )
        a = self.self_attn_mid_layer_norm(a)
        if slots.after_attn is not None:
            a = slots.after_attn(a)
        return x + a

    def feed_forward(self, x: torch.Tensor, slots: LayerSlots) -> torch.Tensor:
        m = self.ffn(self.final_layer_norm(x))
        if slots.after_mlp is not None:
            m = slots.after_mlp(m)
        return x + m


class EncoderLayer(_Layer):
    def forward(
        self,
        x: torch.Tensor,
        slots: LayerSlots,
        attn_bias: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.feed_forward(self.attend(x, slots, False, attn_bias, key_padding_mask), slots)


class DecoderLayer(_Layer):
    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__(cfg)
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.cross_attn = CrossAttention(d, cfg.attention_heads)
        self.cross_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        slots: LayerSlots,
        self_bias: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        cross_bias: torch.Tensor,
        memory_padding: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.attend(x, slots, True, self_bias, None)
        ca = self.cross_attn
        c = cross_attention(
            self.cross_attn_layer_norm(x),
            memory_kv,
            ca.q_proj,
            ca.out_proj,
            ca.heads,
            attn_bias=cross_bias,
            key_padding_mask=memory_padding,
            scale=self.scale,
            head_transform=ca.scale_heads,
        )
        x = x + self.cross_attn_mid_layer_norm(c)
        return self.feed_forward(x, slots)
