"""OFA's two towers: ``encoder`` ([image patches ; text] -> memory) and ``decoder`` (causal, with
cross-attention to the memory, -> next-token logits through the shared embedding).

Each tower *is* the released module (same parameter names, see :mod:`.checkpoint`), plus one
:class:`~petlbench.backbones.slots.LayerSlots` per layer. Positions in OFA are attention biases, not
additions to the stream: an absolute term (learned position embeddings through LayerNorm and two
projections, scaled like the queries) plus per-layer relative buckets (1-D log buckets for text,
2-D offsets for the image grid; the image-text blocks get the absolute term only). Every
self-attention reads the bias through ``slot_attention``'s ``attn_bias``, so prefixes (kv_heads) are
unbiased and visible to every query, as in OFA's prompt tuning. Tokens a method inserts into the
stream (VPT-style ``input_tokens``) get zero bias and no padding, and are stripped before the final
LayerNorm so the memory and the logits keep the backbone's positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..slots import InputTokens
from ..tower import BlockView, Inserted, Tower, insert_tokens, strip_inserted
from .config import OFAConfig
from .layers import DecoderLayer, EncoderLayer, FeedForward, ResNetStem, _Layer
from .positions import image_buckets, image_position_ids, num_image_buckets, text_buckets


def _views(layers: nn.ModuleList) -> list[BlockView]:
    """Accessors for the methods that read blocks directly (LoRA merging, BitFit's MLP biases)."""
    views = []
    for layer in layers:
        assert isinstance(layer, _Layer)
        views.append(_view(layer))
    return views


def _view(layer: _Layer) -> BlockView:
    """One layer's accessors; the q/k/v getters read the attention's parameters at call time."""
    attn = layer.self_attn
    return BlockView(
        ln_1=layer.self_attn_layer_norm,
        ln_2=layer.final_layer_norm,
        mlp=FeedForward(layer.fc1, layer.ffn_layer_norm, layer.fc2),
        qkv_weight=lambda: attn.in_proj_weight,
        qkv_bias=lambda: attn.in_proj_bias,
        out_proj=attn.out_proj,
        ls_1=nn.Identity(),
        ls_2=nn.Identity(),
    )


def _widen(t: torch.Tensor, inserted: Inserted, dim: int) -> torch.Tensor:
    """Insert neutral entries (zero bias / not padding) along ``dim`` where method tokens sit: after
    position 0 (``after_first``) and at the end."""
    if not (inserted.after_first or inserted.end):
        return t
    dim = dim % t.ndim

    def blank(n: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = n
        return torch.zeros(shape, dtype=t.dtype, device=t.device)

    parts = [t.narrow(dim, 0, 1), blank(inserted.after_first), t.narrow(dim, 1, t.shape[dim] - 1)]
    parts.append(blank(inserted.end))
    return torch.cat(parts, dim=dim)


def _abs_bias(
    q_lin: nn.Linear, k_lin: nn.Linear, q_pos: torch.Tensor, k_pos: torch.Tensor, heads: int, scale: float
) -> torch.Tensor:
    """OFA's absolute position bias (1, heads, Lq, Lk) from normalised position embeddings."""
    lq, lk, d = q_pos.shape[1], k_pos.shape[1], q_pos.shape[2]
    q = q_lin(q_pos).view(1, lq, heads, d // heads).transpose(1, 2) * scale
    k = k_lin(k_pos).view(1, lk, heads, d // heads).transpose(1, 2)
    return q @ k.transpose(-1, -2)


def _rel_bias(table: nn.Embedding, buckets: torch.Tensor) -> torch.Tensor:
    """(heads, L, L) relative bias of one layer's table for a bucket index (L, L)."""
    return F.embedding(buckets, table.weight).permute(2, 0, 1)


class _OFATower(Tower):
    """What both towers share: sizes, slots, the refusal of the generic block loop, BitFit's OFA set."""

    layers: nn.ModuleList  # each tower's own layers and final LayerNorm
    layer_norm: nn.LayerNorm

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.width, self.heads = cfg.d_model, cfg.attention_heads
        self.embed_tokens = embed_tokens  # shared by both towers and the output projection

    def run_blocks(  # noqa: ARG002
        self, x: torch.Tensor, inserted: Inserted | None = None
    ) -> tuple[torch.Tensor, Inserted]:
        raise NotImplementedError(f"the OFA {self.name} tower runs its own layers (position biases, memory)")

    def ofa_bitfit_parameters(self) -> dict[str, nn.Parameter]:
        """OFA's ``--bitfit`` set in this tower: biases named ``*layer_norm*`` or ``*fc*`` in the fairseq
        model, i.e. every layer's pre-attention / pre-cross-attention / pre-FFN LayerNorm, ``fc1``,
        ``fc2`` and the tower's final ``layer_norm``. NormFormer's extra norms (``attn_ln``,
        ``ffn_layernorm``), ``layernorm_embedding`` and the position LayerNorms are not matched there,
        so they are not trained here either."""
        wanted = (
            "self_attn_layer_norm.bias",
            "cross_attn_layer_norm.bias",
            "final_layer_norm.bias",
            "fc1.bias",
            "fc2.bias",
        )
        out = {n: p for n, p in self.layers.named_parameters(prefix="layers") if n.endswith(wanted)}
        out["layer_norm.bias"] = self.layer_norm.bias
        return out

    def _insert(self, x: torch.Tensor, slot: InputTokens | None, inserted: Inserted) -> torch.Tensor:
        return insert_tokens(x, slot, inserted) if slot is not None else x

    # The released modules both towers have, registered in the checkpoint's order (the random init
    # draws in registration order, so these keep where each tower registers them).
    def _add_positions(self) -> None:
        """Text and image position embeddings, each with its LayerNorm."""
        cfg = self.cfg
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.embed_positions = nn.Embedding(cfg.max_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d, eps=eps)
        self.image_pos_ln = nn.LayerNorm(d, eps=eps)

    def _add_layers(self, layer: type[_Layer], depth: int) -> None:
        """Per-layer relative position tables (text and image), the layers, the final LayerNorm,
        and the layers' slots."""
        cfg = self.cfg
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, self.heads) for _ in range(depth)
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_image_buckets(cfg.image_bucket_size), self.heads) for _ in range(depth)
        )
        self.layers = nn.ModuleList(layer(cfg) for _ in range(depth))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self._init_slots(_views(self.layers))


class EmbeddingOffsets(TypedDict, total=False):
    """What :meth:`OFAEncoderTower.forward` adds to the raw embeddings (adversarial perturbations),
    named as its keyword arguments: the backbone's and the generator's ``encode`` pass them on."""

    text_offset: torch.Tensor | None  # (B, L, d), onto the text token embeddings
    image_offset: torch.Tensor | None  # (B, N, d), onto the projected image patches


@dataclass
class EncoderOutput:
    """The encoder's memory for the decoder: states, padding, normalised positions, cached K/V."""

    hidden: torch.Tensor  # (B, S, d)
    padding: torch.Tensor | None  # (B, S) bool, True = padding; None: no padding
    positions: torch.Tensor  # (1, S, d): image and text position embeddings after their LayerNorms
    _kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # per decoder layer

    def select(self, index: torch.Tensor) -> EncoderOutput:
        """Rows ``index`` of the batch (beam expansion and reordering), cached keys/values included."""
        return EncoderOutput(
            self.hidden.index_select(0, index),
            self.padding.index_select(0, index) if self.padding is not None else None,
            self.positions,
            {i: (k.index_select(0, index), v.index_select(0, index)) for i, (k, v) in self._kv.items()},
        )


class OFAEncoderTower(_OFATower):
    """ResNet patches and text tokens, each with a type embedding and its own embedding LayerNorm,
    concatenated ``[image ; text]`` and run through pre-LN NormFormer layers."""

    name = "encoder"
    causal = False

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(cfg, embed_tokens)
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.embed_images = ResNetStem(cfg.resnet_layers, cfg.resnet_width)
        self.image_proj = nn.Linear(cfg.stem_channels, d)
        self.type_embedding = nn.Embedding(2, d)  # 0 text, 1 image
        self.layernorm_embedding = nn.LayerNorm(d, eps=eps)
        self.patch_layernorm_embedding = nn.LayerNorm(d, eps=eps)
        self._add_positions()
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self._add_layers(EncoderLayer, cfg.encoder_layers)

    def embed_inputs(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The raw text token embeddings (B, L, d), the projected image patches (B, N, d) (the two
        embeddings the OFA paper's FGSM perturbs) and the patch grid (height, width)."""
        feats = self.embed_images(pixels)
        image = self.image_proj(feats.flatten(2).transpose(1, 2))
        return self.embed_tokens(src_tokens), image, (int(feats.shape[-2]), int(feats.shape[-1]))

    def forward(
        self,
        src_tokens: torch.Tensor,
        pixels: torch.Tensor,
        *,
        text_offset: torch.Tensor | None = None,
        image_offset: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode normalised ``pixels`` (B, 3, S, S) and ``src_tokens`` (B, L) (right-padded with the
        pad id). Offsets are added to the raw embeddings (adversarial perturbations)."""
        cfg = self.cfg
        text, image, (height, width) = self.embed_inputs(src_tokens, pixels)
        if text_offset is not None:
            text = text + text_offset
        if image_offset is not None:
            image = image + image_offset
        text = self.layernorm_embedding(text + self.type_embedding.weight[0])
        image = self.patch_layernorm_embedding(image + self.type_embedding.weight[1])
        x = torch.cat([image, text], dim=1)
        n_img, n_txt = image.shape[1], text.shape[1]
        text_pad = src_tokens.eq(cfg.pad_id)
        padding = None
        if bool(text_pad.any()):
            padding = torch.cat([text_pad.new_zeros(text_pad.shape[0], n_img), text_pad], dim=1)
            x = x * (~padding).unsqueeze(-1).to(x.dtype)

        device = x.device
        img_ids = image_position_ids(height, width, cfg.image_bucket_size, device)
        img_pos = self.image_pos_ln(self.embed_image_positions(img_ids))
        txt_pos = self.pos_ln(self.embed_positions(torch.arange(n_txt, device=device)))
        positions = torch.cat([img_pos, txt_pos], dim=0).unsqueeze(0)
        abs_bias = _abs_bias(
            self.pos_q_linear, self.pos_k_linear, positions, positions, self.heads, cfg.attn_scale
        )
        txt_buckets = text_buckets(n_txt, cfg.token_bucket_size, cfg.max_positions, device)
        img_buckets = image_buckets(height, width, cfg.image_bucket_size, device)

        inserted = Inserted()
        for index, (layer, slots) in enumerate(zip(self.layers, self.slots, strict=True)):
            rel = abs_bias.new_zeros(abs_bias.shape[1:])
            image_table = cast(nn.Embedding, self.image_rel_pos_table_list[index])
            token_table = cast(nn.Embedding, self.token_rel_pos_table_list[index])
            rel[:, :n_img, :n_img] = _rel_bias(image_table, img_buckets)
            rel[:, n_img:, n_img:] = _rel_bias(token_table, txt_buckets)
            x = self._insert(x, slots.input_tokens, inserted)
            bias = _widen(_widen(abs_bias + rel, inserted, -1), inserted, -2)
            pad = _widen(padding, inserted, -1) if padding is not None else None
            x = layer(x, slots, bias, pad)
        x = self.layer_norm(strip_inserted(x, inserted))
        return EncoderOutput(x, padding, positions)


class OFADecoderTower(_OFATower):
    """Causal pre-LN NormFormer layers with cross-attention; logits through the shared embedding.

    The image-generation parts of the released decoder (image position embeddings and tables,
    ``code_layernorm_embedding``) are kept so checkpoints load strictly and counts match, but are
    unused: no task here generates image codes."""

    name = "decoder"
    causal = True
    # Image-code generation only: loaded and counted, never computed (BitFit does not train them).
    unused_modules = (
        "code_layernorm_embedding",
        "embed_image_positions",
        "image_pos_ln",
        "image_rel_pos_table_list",
    )

    def __init__(self, cfg: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(cfg, embed_tokens)
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.layernorm_embedding = nn.LayerNorm(d, eps=eps)
        self.code_layernorm_embedding = nn.LayerNorm(d, eps=eps)
        self._add_positions()
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self._add_layers(DecoderLayer, cfg.decoder_layers)

    def _memory_kv(self, memory: EncoderOutput, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in memory._kv:
            memory._kv[index] = cast(DecoderLayer, self.layers[index]).cross_attn.memory(memory.hidden)
        return memory._kv[index]

    def forward(self, prev_tokens: torch.Tensor, memory: EncoderOutput) -> torch.Tensor:
        """Next-token logits (B, T, V) for every position of ``prev_tokens`` (B, T), which start with
        the BOS id; padding at the end cannot affect earlier positions (causal)."""
        cfg = self.cfg
        for s in self.slots:
            if s.input_tokens is not None and s.input_tokens.position == "end":
                raise ValueError("the OFA decoder is causal: insert tokens with position='after_first'")
        device, length = prev_tokens.device, prev_tokens.shape[1]
        x = self.layernorm_embedding(self.embed_tokens(prev_tokens))
        tgt_pos = self.pos_ln(self.embed_positions(torch.arange(length, device=device))).unsqueeze(0)
        heads, scale = self.heads, cfg.attn_scale
        self_abs = _abs_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos, tgt_pos, heads, scale)
        cross_bias = _abs_bias(
            self.cross_pos_q_linear, self.cross_pos_k_linear, tgt_pos, memory.positions, heads, scale
        )
        buckets = text_buckets(length, cfg.token_bucket_size, cfg.max_positions, device)

        inserted = Inserted()
        for index, (layer, slots) in enumerate(zip(self.layers, self.slots, strict=True)):
            x = self._insert(x, slots.input_tokens, inserted)
            token_table = cast(nn.Embedding, self.token_rel_pos_table_list[index])
            self_bias = self_abs + _rel_bias(token_table, buckets)
            self_bias = _widen(_widen(self_bias, inserted, -1), inserted, -2)
            x = layer(
                x,
                slots,
                self_bias,
                self._memory_kv(memory, index),
                _widen(cross_bias, inserted, -2),
                memory.padding,
            )
        x = self.layer_norm(strip_inserted(x, inserted))
        return F.linear(x, self.embed_tokens.weight)
