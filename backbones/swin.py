"""Swin Transformer through timm: tower ``image``; features are the average-pooled final stage.

The tower's layers are the blocks of every stage in order (Swin-B: 2 + 2 + 18 + 2 = 24), and their
widths and heads differ per stage (Swin-B: 128/256/512/1024 wide, 4/8/16/32 heads), so methods size
each layer's slots with :meth:`Tower.layer_width` / :meth:`Tower.layer_heads`. Each block runs
timm's own computation on the real modules in place: cyclic shift, padding to whole windows, window
partition (timm's ``window_partition``), attention through :func:`slot_attention` over a batch of
``B * num_windows`` windows with ``attn_bias`` = the block's relative position bias (+ timm's
shifted-window mask, its ``-100`` entries included), window reverse, reverse shift; patch merging
between stages, the final LayerNorm and average pooling. With no method attached the outputs equal
``SwinTransformer.forward`` (tests/backbones/test_swin.py). Drop-path is never applied: backbones
stay in eval mode.

Slots on Swin:

* ``kv_heads`` (prefix, E²VPT key-value prompts) and ``kv_residual`` (Adapt): the same prompt keys and
  values are visible to every query of every window (expanded over the ``B * num_windows`` batch),
  with zero position bias and never masked by the shift mask.
* ``qkv_delta`` (LoRA) acts on every window token; ``after_attn`` / ``after_mlp`` (adapters) on every
  token of the stream; BitFit selects parameters by name (see methods/bitfit.py).
* ``input_tokens`` (VPT, E²VPT visual prompts) follow the VPT paper's Swin variant (KMnP/vpt
  ``PromptedSwinTransformer``, ``prepend``): a layer's prompt tokens are shared by all windows; in
  each window they are attended as extra tokens (queries, keys and values, zero position bias, no
  shift mask); a prompt's attention output is the mean of its outputs over the image's windows; the
  MLP and adapters see prompts like any token. At patch merging the prompts go through the merging
  LayerNorm and reduction as four copies of themselves (the reference's ``upsample_prompt``), so
  shallow prompts reach every stage; deep prompts replace them at the next layer as on ViT. The
  pooled feature averages the prompts with the patches after the final norm, as the reference does.
  ``position`` only orders prompts among themselves (Swin has no CLS token).
  Deviation: the reference pairs prompt copies with windows window-major while timm partitions
  batch-major, which mixes the prompts of different images of a batch when B > 1; here each image's
  prompts see (and are averaged over) that image's windows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.errors import UserError

from .attention import slot_attention
from .base import Backbone
from .random_features import random_feature_init
from .seeding import seeded
from .slots import InputTokens, LayerSlots
from .tower import BlockView, Inserted, Tower
from .vit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    create_timm_model,
    fold_affine,
    timm_block_view,
    timm_image_facts,
)

TINY_SWIN: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 32,
    "depths": (2, 2),
    "num_heads": (2, 4),
    "window_size": 2,
}


@dataclass
class SwinBlockView(BlockView):
    """One timm ``SwinTransformerBlock`` read in place; it runs on (B, H, W, C) maps, not on a
    flat sequence, so the tower calls :meth:`forward_map` instead of :meth:`BlockView.forward`."""

    block: Any = None
    heads: int = 0

    def forward(self, x: torch.Tensor, slots: LayerSlots, heads: int, causal: bool) -> torch.Tensor:
        raise TypeError("Swin blocks attend within windows; they run through SwinImageTower.forward")

    def forward_map(
        self, x: torch.Tensor, prompts: torch.Tensor, slots: LayerSlots
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on the feature map ``x`` (B, H, W, C) and the prompt tokens ``prompts`` (B, n, C)."""
        batch, height, width, dim = x.shape
        n = prompts.shape[1]
        seq = x.reshape(batch, height * width, dim)
        if n:
            seq = torch.cat([prompts, seq], dim=1)
        h = self.norm_1(seq, slots)
        seq = seq + self.finish_attention(self._window_attention(h, n, height, width, slots), seq, h, slots)
        seq = seq + self.mlp_branch(seq, slots)  # ls_1 / ls_2 are identities on Swin
        return seq[:, n:].reshape(batch, height, width, dim), seq[:, :n]

    def _window_attention(
        self, h: torch.Tensor, n: int, height: int, width: int, slots: LayerSlots
    ) -> torch.Tensor:
        """(Shifted-)window attention of the normalised stream ``h`` (B, n + H*W, C) -> same shape."""
        blk = self.block
        attn = blk.attn
        batch, _, dim = h.shape
        win_h, win_w = blk.window_size
        shift_h, shift_w = blk.shift_size
        fmap = h[:, n:].reshape(batch, height, width, dim)
        if shift_h or shift_w:
            fmap = torch.roll(fmap, shifts=(-shift_h, -shift_w), dims=(1, 2))
        pad_h, pad_w = (win_h - height % win_h) % win_h, (win_w - width % win_w) % win_w
        fmap = F.pad(fmap, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = fmap.shape[1], fmap.shape[2]
        windows = _window_partition(fmap, (win_h, win_w)).reshape(-1, win_h * win_w, dim)
        n_windows = windows.shape[0] // batch

        area = win_h * win_w
        bias = attn._get_rel_pos_bias()  # (1, heads, area, area), from the real table
        mask = blk.get_attn_mask(fmap) if blk.dynamic_mask else blk.attn_mask
        if mask is not None:  # (nW, area, area): 0 / -100 for the shifted windows, per window
            bias = (bias + mask.unsqueeze(1).to(bias.dtype)).unsqueeze(0)
            bias = bias.expand(batch, -1, -1, -1, -1).reshape(batch * n_windows, self.heads, area, area)
        if n:
            shared = h[:, :n].unsqueeze(1).expand(-1, n_windows, -1, -1).reshape(batch * n_windows, n, dim)
            windows = torch.cat([shared, windows], dim=1)
            bias = F.pad(bias, (n, 0, n, 0))  # prompts: zero bias, never shift-masked
        out = slot_attention(
            windows,
            self.qkv_weight(),
            self.qkv_bias(),
            self.out_proj.weight,
            self.out_proj.bias,
            self.heads,
            slots=slots,
            norm=self.ln_1,
            attn_bias=bias,
        )
        prompt_out = out[:, :n].reshape(batch, n_windows, n, dim).mean(1)
        fmap = _window_reverse(out[:, n:].reshape(-1, win_h, win_w, dim), (win_h, win_w), padded_h, padded_w)
        fmap = fmap[:, :height, :width]
        if shift_h or shift_w:
            fmap = torch.roll(fmap, shifts=(shift_h, shift_w), dims=(1, 2))
        return torch.cat([prompt_out, fmap.reshape(batch, height * width, dim)], dim=1)


def _window_partition(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from timm.models.swin_transformer import window_partition

    return window_partition(x, size)


def _window_reverse(windows: torch.Tensor, size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    from timm.models.swin_transformer import window_reverse

    return window_reverse(windows, size, height, width)


def _swin_views(swin: Any) -> list[SwinBlockView]:
    """Views of every block of every stage, in order; anything but timm's plain Swin is refused."""
    from timm.models.swin_transformer import (
        PatchMerging,
        SwinTransformerBlock,
        SwinTransformerStage,
        WindowAttention,
    )

    views: list[SwinBlockView] = []
    for stage in swin.layers:
        if not isinstance(stage, SwinTransformerStage) or not isinstance(
            stage.downsample, PatchMerging | nn.Identity
        ):
            raise UserError(f"unsupported timm Swin stage {type(stage).__name__}; only SwinTransformer is")
        for blk in stage.blocks:
            attn = getattr(blk, "attn", None)
            if not isinstance(blk, SwinTransformerBlock) or not isinstance(attn, WindowAttention):
                raise UserError(f"unsupported timm Swin block {type(blk).__name__}")
            if attn.qkv.out_features != 3 * blk.dim or attn.proj.in_features != blk.dim:
                raise UserError("timm Swin with head_dim * heads != width is not supported")
            views.append(
                timm_block_view(
                    SwinBlockView,
                    blk,
                    attn,
                    ls_1=nn.Identity(),
                    ls_2=nn.Identity(),
                    block=blk,
                    heads=int(attn.num_heads),
                )
            )
    return views


def _place_prompts(prompts: torch.Tensor, slot: InputTokens, inserted: Inserted, batch: int) -> torch.Tensor:
    """Put ``slot``'s tokens into the prompt stream (B, n, C): after-first prompts lead, end ones trail;
    ``replace`` drops those an earlier layer put at the same place (deep prompts)."""
    tokens = slot.for_batch(batch).to(prompts.dtype)
    if tokens.shape[-1] != prompts.shape[-1]:
        raise ValueError(
            f"prompt tokens of width {tokens.shape[-1]} do not fit a Swin layer of width {prompts.shape[-1]}"
        )
    n = tokens.shape[1]
    if slot.position == "after_first":
        drop = inserted.after_first if slot.mode == "replace" else 0
        inserted.after_first += n - drop
        return torch.cat([tokens, prompts[:, drop:]], dim=1)
    drop = inserted.end if slot.mode == "replace" else 0
    inserted.end += n - drop
    return torch.cat([prompts[:, : prompts.shape[1] - drop], tokens], dim=1)


class SwinImageTower(Tower):
    """timm ``SwinTransformer`` behind the slots; ``width``/``heads`` are the first stage's."""

    name = "image"

    def __init__(self, swin: Any) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        if not isinstance(swin, SwinTransformer):
            raise UserError(f"expected a timm SwinTransformer, got {type(swin).__name__}")
        if getattr(swin, "global_pool", "avg") != "avg":
            raise UserError(f"timm Swin with global_pool={swin.global_pool!r} is not supported (only avg)")
        self.swin: Any = swin  # timm SwinTransformer (its submodules typed as Module | Tensor)
        views = _swin_views(swin)
        self._init_slots(
            list[BlockView](views),
            widths=[int(v.block.dim) for v in views],
            heads=[v.heads for v in views],
        )
        self.width, self.heads = self.layer_width(0), self.layer_heads(0)
        self.stage_depths = tuple(len(cast(Any, stage).blocks) for stage in self.swin.layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.swin
        x = self.after_patch_embed(s.patch_embed(pixels))  # (B, H, W, C): patch conv + LayerNorm
        batch = x.shape[0]
        prompts = x.new_zeros(batch, 0, x.shape[-1])
        inserted = Inserted()
        layer = 0
        for stage in s.layers:
            x = stage.downsample(x)
            if prompts.shape[1] and not isinstance(stage.downsample, nn.Identity):
                merge = stage.downsample  # four copies of each prompt, as if it were a 2x2 patch group
                prompts = merge.reduction(merge.norm(prompts.repeat(1, 1, 4)))
            for _ in stage.blocks:
                view, slots = self._views[layer], self.slots[layer]
                if slots.input_tokens is not None:
                    prompts = _place_prompts(prompts, slots.input_tokens, inserted, batch)
                x, prompts = cast(SwinBlockView, view).forward_map(x, prompts, slots)
                layer += 1
        x = self.after_final_norm(s.norm(x))
        if prompts.shape[1]:
            tokens = torch.cat([self.after_final_norm(s.norm(prompts)), x.flatten(1, 2)], dim=1)
            return tokens.mean(1)
        return s.forward_head(x, pre_logits=True)

    def layer_grid(self, layer: int) -> tuple[int, int] | None:
        """The block's feature map (its patch grid; prompts, if any, lead the stream)."""
        rows, cols = cast(SwinBlockView, self._views[layer]).block.input_resolution
        return int(rows), int(cols)

    def fold_patch_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        norm = self.swin.patch_embed.norm
        target = self.swin.patch_embed.proj if isinstance(norm, nn.Identity) else norm
        fold_affine(target, scale, shift, undo=undo)

    def fold_final_affine(self, scale: torch.Tensor, shift: torch.Tensor, *, undo: bool = False) -> None:
        fold_affine(self.swin.norm, scale, shift, undo=undo)


class TimmSwinBackbone(Backbone):
    kind = "swin"

    def __init__(self, name: str, swin: Any, config: dict) -> None:
        facts = timm_image_facts(swin, IMAGENET_MEAN, IMAGENET_STD)
        super().__init__(name, {"image": SwinImageTower(swin)}, config=config, **facts)
        self.freeze()


def build_timm_swin(name: str, arch: str, pretrained: bool) -> TimmSwinBackbone:
    """A timm Swin by name (e.g. ``swin_base_patch4_window7_224.ms_in22k``), without its classifier."""
    swin = create_timm_model(arch, pretrained)
    return TimmSwinBackbone(name, swin, {"source": "timm", "arch": arch, "pretrained": pretrained})


def tiny_swin_model(seed: int = 0) -> nn.Module:
    """The raw timm model of ``tiny-swin`` (32px, patch 4, width 32/64, 2+2 blocks, window 2)."""
    from timm.models.swin_transformer import SwinTransformer

    with seeded(seed):
        swin = SwinTransformer(**TINY_SWIN, num_classes=0, drop_path_rate=0.0)
        random_feature_init(swin, seed)
    return swin.eval()


def build_tiny_swin(name: str, seed: int = 0) -> TimmSwinBackbone:
    """timm Swin, tiny, seeded random-feature init: an 8x8 patch grid and 2x2 windows, so both stages
    have several windows and shift them (what the equivalence and slot tests need to exercise)."""
    config = {"source": "timm", "arch": "tiny-swin", "pretrained": None, "init_seed": seed, **TINY_SWIN}
    return TimmSwinBackbone(name, tiny_swin_model(seed), config)
