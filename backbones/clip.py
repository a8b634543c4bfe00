"""CLIP through open_clip: towers ``image`` (VisionTransformer) and ``text`` (causal transformer)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from petlbench.errors import UserError

from .base import Backbone
from .random_features import random_feature_init
from .seeding import seeded
from .tower import BlockView, Inserted, Tower, insert_tokens

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip_views(resblocks: nn.ModuleList, where: str) -> list[BlockView]:
    from open_clip.transformer import ResidualAttentionBlock

    views = []
    for blk in resblocks:
        if not isinstance(blk, ResidualAttentionBlock) or hasattr(blk, "ln_1_kv"):
            raise UserError(
                f"{where}: unsupported open_clip block {type(blk).__name__}; "
                "only the standard ResidualAttentionBlock (self-attention) is supported"
            )
        attn = blk.attn
        if not attn._qkv_same_embed_dim:
            raise UserError(f"{where}: attention with separate q/k/v projections is not supported")
        views.append(
            BlockView(
                ln_1=blk.ln_1,
                ln_2=blk.ln_2,
                mlp=blk.mlp,
                qkv_weight=partial(getattr, attn, "in_proj_weight"),
                qkv_bias=partial(getattr, attn, "in_proj_bias"),
                out_proj=attn.out_proj,
                ls_1=blk.ls_1,
                ls_2=blk.ls_2,
            )
        )
    return views


class ClipImageTower(Tower):
    """open_clip ``VisionTransformer``: conv patches, CLS, position embedding, ``ln_pre``, blocks,
    ``ln_post`` on CLS, projection. Input tokens get no position embedding; they go after CLS or at
    the end, after ``ln_pre``, or, for layer 0's ``before_norm`` slot, after the position embedding
    and before ``ln_pre`` (the layout of MaPLe's VPT and IVLP vision prompts:
    muzairkhattak/multimodal-prompt-learning clip/model.py:L400-411)."""

    name = "image"
    accepts_before_norm = True

    def __init__(self, visual: Any) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise UserError("only CLS-pooled open_clip vision towers are supported")
        self.visual = visual
        self.width = visual.transformer.width
        self.heads = visual.transformer.resblocks[0].attn.num_heads
        self._init_slots(_open_clip_views(visual.transformer.resblocks, "CLIP image tower"))

    def embed(self, pixels: torch.Tensor, inserted: Inserted | None = None) -> torch.Tensor:
        """Patch, CLS and position embeddings, patch dropout, ``ln_pre``. With ``inserted``, layer 0's
        ``before_norm`` input tokens are placed before ``ln_pre`` (and counted in ``inserted``);
        without it none are."""
        v = self.visual
        x = v.conv1(pixels)
        x = self.after_patch_embed(x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1))
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = v.patch_dropout(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype))
        first = self.slots[0].input_tokens if self.slots else None
        if inserted is not None and first is not None and first.before_norm:
            x = insert_tokens(x, first, inserted)  # prompts pass through ln_pre (clip/model.py:L404-411)
        return v.ln_pre(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        inserted = Inserted()
        x, _ = self.run_blocks(self.embed(pixels, inserted), inserted)
        pooled = self.after_final_norm(self.visual.ln_post(x[:, 0]))
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def layer_grid(self, layer: int) -> tuple[int, int] | None:  # noqa: ARG002 - one grid for every layer
        rows, cols = self.visual.grid_size
        return int(rows), int(cols)

    @torch.no_grad()
    def fold_patch_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        """conv1 has no bias: the scale goes into its weight, the shift into the position embedding of
        the patch rows (added right after; the CLS row is untouched)."""
        conv, pos = self.visual.conv1, self.visual.positional_embedding
        scale_w, shift_p = scale.to(conv.weight.dtype).view(-1, 1, 1, 1), shift.to(pos.dtype)
        if undo:
            conv.weight.div_(scale_w)
            pos[1:].sub_(shift_p)
        else:
            conv.weight.mul_(scale_w)
            pos[1:].add_(shift_p)

    def fold_final_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        from .vit import fold_affine

        fold_affine(self.visual.ln_post, scale, shift, undo=undo)


class ClipTextTower(Tower):
    """The CLIP text transformer (causal). Pools the EOT token (the highest token id).

    Token sequences are cut to the longest real prompt in the batch: under the causal mask the
    tokens after EOT cannot change the pooled feature, so this is exact and much cheaper than 77.
    """

    name = "text"

    def __init__(self, src: Any) -> None:
        super().__init__()
        if getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax")) != "argmax":
            raise UserError("only argmax (EOT) pooled CLIP text towers are supported")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.causal = getattr(src, "attn_mask", None) is not None
        self.context_length = int(src.positional_embedding.shape[0])
        # CoOp-style slot: (token_ids, embeddings) -> embeddings with placeholder tokens replaced.
        self.token_embeddings: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.width = src.transformer.width
        self.heads = src.transformer.resblocks[0].attn.num_heads
        self._init_slots(_open_clip_views(src.transformer.resblocks, "CLIP text tower"))

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(token_ids)
        return x + self.positional_embedding[: token_ids.shape[1]].to(x.dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        eot = token_ids.argmax(dim=-1)
        token_ids = token_ids[:, : int(eot.max()) + 1]
        x = self.embed(token_ids)
        if self.token_embeddings is not None:
            x = self.token_embeddings(token_ids, x)
        return self.encode_embeddings(x, eot)

    def encode_embeddings(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Features of already-embedded prompts (B, L, d) pooled at ``eot`` (B,): CoOp's entry point."""
        x, inserted = self.run_blocks(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot + inserted.after_first]
        proj = self.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


class ClipBackbone(Backbone):
    kind = "clip"

    def __init__(
        self, name: str, model: Any, *, image_size: int, config: dict, tokenizer: Any = None
    ) -> None:
        import open_clip

        text_src = model.text if hasattr(model, "text") else model
        towers = {"image": ClipImageTower(model.visual), "text": ClipTextTower(text_src)}
        super().__init__(
            name,
            towers,
            image_size=image_size,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            feature_dim=int(model.visual.output_dim),
            interpolation="bicubic",
            config=config,
        )
        self.logit_scale = model.logit_scale
        self.tokenizer = tokenizer or open_clip.get_tokenizer(config.get("tokenizer", "ViT-B-16"))
        self.freeze()

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.towers["text"](token_ids)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        assert self.tokenizer is not None
        return self.tokenizer(texts)


def build_open_clip(name: str, arch: str, pretrained: str | None) -> ClipBackbone:
    """A real open_clip architecture; ``pretrained=None`` gives random weights (offline)."""
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
        raise UserError(
            f"could not load open_clip {arch!r} with pretrained={pretrained!r}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Weights come from the Hugging Face hub and "
            "are cached on first use; run once with network access, or pass --random-init for random "
            "weights"
        ) from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    return ClipBackbone(
        name,
        model,
        image_size=int(size),
        config={"source": "open_clip", "arch": arch, "pretrained": pretrained, "tokenizer": arch},
    )


def build_tiny_clip(name: str, seed: int = 0) -> ClipBackbone:
    """A CLIP of the real architecture family, tiny (width 64, 2 layers, 32x32 images), seeded init."""
    from open_clip.model import CLIP

    with seeded(seed):
        model = CLIP(
            embed_dim=64,
            vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        )
        random_feature_init(model, seed)
    return ClipBackbone(
        name,
        model,
        image_size=32,
        config={
            "source": "open_clip",
            "arch": "tiny",
            "pretrained": None,
            "init_seed": seed,
            "tokenizer": "ViT-B-16",
        },
    )
