"""Supervised ViT through timm: tower ``image``; features are the pre-logits (CLS after the final norm)."""

from __future__ import annotations

from functools import partial
from typing import Any, TypedDict, TypeVar, Unpack

import torch
from torch import nn

from petlbench.errors import UserError

from .base import Backbone
from .random_features import random_feature_init
from .seeding import seeded
from .tower import BlockView, Tower, strip_inserted

# ImageNet mean/std, as VPT and E2VPT normalise every image for every backbone
# (KMnP/vpt src/data/datasets/tf_dataset.py:75-76 (VTAB), src/data/transforms.py:8-10 (FGVC);
# ChengHan111/E2VPT src/data/datasets/tf_dataset.py:76-77, src/data/transforms.py:8-10).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's default for its ViTs (timm.data.constants IMAGENET_INCEPTION_MEAN/STD): inputs in [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


View = TypeVar("View", bound=BlockView)


def timm_block_view(view: type[View], blk: Any, attn: Any, **fields: Any) -> View:
    """A view of a timm block (ViT's ``Block``, Swin's ``SwinTransformerBlock``): ``norm1``/``norm2``,
    ``mlp`` and the attention's ``qkv``/``proj`` read in place (the q/k/v getters read the parameters
    at call time), plus the ``fields`` in which the block types differ."""
    return view(
        ln_1=blk.norm1,
        ln_2=blk.norm2,
        mlp=blk.mlp,
        qkv_weight=partial(getattr, attn.qkv, "weight"),
        qkv_bias=partial(getattr, attn.qkv, "bias"),
        out_proj=attn.proj,
        **fields,
    )


def _timm_views(blocks: nn.Sequential) -> list[BlockView]:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    views = []
    for blk in blocks:
        attn = getattr(blk, "attn", None)
        if not isinstance(blk, Block) or not isinstance(attn, Attention):
            raise UserError(
                f"unsupported timm block {type(blk).__name__}; only the ViT pre-norm Block is supported"
            )
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            raise UserError("timm attention with scale-norm or gating is not supported")
        views.append(
            timm_block_view(
                BlockView, blk, attn, ls_1=blk.ls1, ls_2=blk.ls2, q_norm=attn.q_norm, k_norm=attn.k_norm
            )
        )
    return views


class TimmViTImageTower(Tower):
    """timm ``VisionTransformer``. Input tokens go after CLS, with no position embedding (VPT)."""

    name = "image"

    def __init__(self, vit: Any) -> None:
        super().__init__()
        if getattr(vit, "attn_pool", None) is not None:
            raise UserError("timm ViTs with attention pooling are not supported")
        self.vit = vit
        self.width = vit.embed_dim
        self.heads = vit.blocks[0].attn.num_heads
        self._init_slots(_timm_views(vit.blocks))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(self.after_patch_embed(v.patch_embed(pixels)))))
        x, inserted = self.run_blocks(x)
        x = strip_inserted(self.after_final_norm(v.norm(x)), inserted)
        return v.forward_head(x, pre_logits=True)

    def layer_grid(self, layer: int) -> tuple[int, int] | None:  # noqa: ARG002 - one grid for every layer
        rows, cols = self.vit.patch_embed.grid_size
        return int(rows), int(cols)

    def fold_patch_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        pe = self.vit.patch_embed
        fold_affine(pe.proj if isinstance(pe.norm, nn.Identity) else pe.norm, scale, shift, undo=undo)

    def fold_final_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        fold_affine(self.vit.norm, scale, shift, undo=undo)


@torch.no_grad()
def fold_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
    """Make ``module``'s output ``scale * y + shift`` (per output channel) by changing its weight and
    bias in place: a Linear, a Conv or an affine LayerNorm, whose bias must exist. ``undo`` applies
    the exact inverse (what a fold with the same scale and shift did is taken out again)."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no weight and bias to fold a scale and shift into")
    view = (-1,) + (1,) * (weight.dim() - 1)
    scale_w, scale_b, shift_b = scale.to(weight.dtype).view(view), scale.to(bias.dtype), shift.to(bias.dtype)
    if undo:
        weight.div_(scale_w)
        bias.sub_(shift_b).div_(scale_b)
    else:
        weight.mul_(scale_w)
        bias.mul_(scale_b).add_(shift_b)


class Normalization(TypedDict, total=False):
    """``mean``/``std`` that override a timm model's pretrained config (None: keep timm's)."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def timm_image_facts(
    model: Any, default_mean: tuple[float, ...], default_std: tuple[float, ...], **norm: Unpack[Normalization]
) -> dict[str, Any]:
    """What a :class:`Backbone` needs to know of a timm image model: input size, normalisation
    (``mean``/``std`` when given, which override timm's; else its pretrained config's; else the
    defaults given), feature size, interpolation."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = model.patch_embed.img_size
    mean, std = norm.get("mean"), norm.get("std")
    return {
        "image_size": int(size[0] if isinstance(size, tuple | list) else size),
        "mean": mean if mean is not None else cfg.get("mean", default_mean),
        "std": std if std is not None else cfg.get("std", default_std),
        "feature_dim": int(model.num_features),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }


def create_timm_model(arch: str, pretrained: bool) -> nn.Module:
    """``timm.create_model`` without a classifier, with one clear error when weights are unavailable."""
    import timm

    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # noqa: BLE001
        raise UserError(
            f"could not build timm {arch!r} (pretrained={pretrained}): {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Weights come from the Hugging Face hub and "
            "are cached on first use; run once with network access, or pass --random-init"
        ) from None


class TimmViTBackbone(Backbone):
    kind = "vit"

    def __init__(self, name: str, vit: Any, config: dict, **norm: Unpack[Normalization]) -> None:
        facts = timm_image_facts(vit, INCEPTION_MEAN, INCEPTION_STD, **norm)
        super().__init__(name, {"image": TimmViTImageTower(vit)}, config=config, **facts)
        self.freeze()


def build_timm_vit(name: str, arch: str, pretrained: bool, **norm: Unpack[Normalization]) -> TimmViTBackbone:
    """A timm ViT by name, without its classifier. ``mean``/``std`` override the normalisation of
    timm's pretrained config (``vit-b16``: timm says 0.5 for ``orig_in21k``, VPT uses ImageNet's)."""
    vit = create_timm_model(arch, pretrained)
    config = {"source": "timm", "arch": arch, "pretrained": pretrained}
    return TimmViTBackbone(name, vit, config, **norm)


def build_tiny_vit(name: str, seed: int = 0) -> TimmViTBackbone:
    """timm ViT, tiny: 32x32 images, patch 8, width 64, 2 layers, 2 heads; seeded random init."""
    from timm.models.vision_transformer import VisionTransformer

    with seeded(seed):
        vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
        random_feature_init(vit, seed)
    return TimmViTBackbone(
        name, vit, {"source": "timm", "arch": "tiny", "pretrained": None, "init_seed": seed}
    )
