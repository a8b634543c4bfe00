"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022), as gaopengcuhk/Tip-Adapter implements
them (``main.py``, ``utils.py``).

A cache model built from the few-shot training set: keys are the frozen CLIP image features of the
N x K training images (each the mean over ``augment_epochs`` augmented views, then L2-normalised:
utils.py L38-61), values their one-hot labels (L62). For a normalised test feature ``f``:

    logits = 100 * f W^T + alpha * exp(-beta * (1 - f K^T)) V

with ``W`` the hand-crafted class text features (zero-shot CLIP, utils.py L18-35; the constant 100
of main.py L32, L53), ``K`` the keys and ``V`` the values (main.py L39-42, L58-61). ``alpha`` and
``beta`` are searched on the validation split (utils.py L99-129: beta over
``i * (scale_b - 0.1) / steps_b + 0.1`` for i < steps_b, alpha likewise, beta outer, the first best
kept), so Tip-Adapter trains nothing: its stages build the cache and search, no optimiser is built.

Tip-Adapter-F makes the keys a parameter (``adapter.weight = cache_keys.t()``, main.py L68-70) and
fine-tunes it with cross-entropy at the initial ``alpha``, ``beta`` (main.py L75-96); after training
``alpha``/``beta`` are searched again with the tuned keys (L129-139). Trainable: N*K x D (16 shots x
C classes x 512 on ViT-B/16, e.g. 1,000 classes: 8,192,000).

Reference defaults (``configs/imagenet.yaml``, ``configs/oxford_pets.yaml`` L17-31): search_scale
[7, 3], search_step [200, 20], init_beta 1, init_alpha 1.17, augment_epoch 10, lr 0.001,
train_epoch 20; the cache augmentation is RandomResizedCrop(scale 0.5-1, bicubic) + flip
(main.py L173-178). Other datasets' configs change the scales and init_alpha (per-task options).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.heads import TextClassifierHead
from petlbench.errors import UserError

from ._heads import OverTextHead
from .base import Method, Stage, StageContext, frozen_backbone

if TYPE_CHECKING:
    from petlbench.backbones.classifier import ImageClassifier

CACHE_BUFFERS = ("cache_keys", "cache_values", "alpha", "beta")


@dataclass
class TipAdapterConfig:
    init_alpha: float = 1.17  # configs/imagenet.yaml L21
    init_beta: float = 1.0  # configs/imagenet.yaml L20
    search: bool = True  # search_hp (configs/imagenet.yaml L14)
    search_scale_beta: float = 7.0  # search_scale[0] (configs/imagenet.yaml L17)
    search_scale_alpha: float = 3.0  # search_scale[1]
    search_steps_beta: int = 200  # search_step[0] (configs/imagenet.yaml L18)
    search_steps_alpha: int = 20  # search_step[1]
    augment_epochs: int = 10  # augment_epoch (configs/imagenet.yaml L30); 0: the plain images once
    crop_scale_min: float = 0.5  # RandomResizedCrop(scale=(0.5, 1)) for the cache (main.py L174)
    clip_scale: float = 100.0  # the zero-shot logits' constant (main.py L32, L53)


def search_grid(scale: float, steps: int) -> list[float]:
    """utils.py L103-104: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def _random_resized_crop(
    pixels: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]
) -> torch.Tensor:
    """RandomResizedCrop (ratio 3/4-4/3, bicubic) + horizontal flip on float pixels (B, 3, S, S),
    torchvision's sampling (10 attempts, then the whole image) drawn from ``generator``."""
    out = torch.empty_like(pixels)
    size = pixels.shape[-1]
    area = size * size
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for k in range(pixels.shape[0]):
        top, left, h, w = 0, 0, size, size
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*scale, generator=generator).item()
            ratio = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= size and 0 < ch <= size:
                top = int(torch.randint(0, size - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, size - cw + 1, (1,), generator=generator))
                h, w = ch, cw
                break
        crop = pixels[k : k + 1, :, top : top + h, left : left + w]
        crop = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        out[k] = crop[0].clamp(0, 1)
    return out


class TipAdapterHead(OverTextHead):
    """Image features (B, D) -> ``clip_scale * f W^T + alpha * exp(-beta (1 - f K^T)) V``; the cache
    (K, V, alpha, beta) belongs to the method. Before the cache is built the head is zero-shot CLIP."""

    method: TipAdapter

    def clip_logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.method.config.clip_scale * f @ self.text_head.class_features().t().to(f.dtype)

    def cache_logits(self, f: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        keys, values = self.method.keys(), self.method.cache_values
        affinity = f @ keys.t().to(f.dtype)
        return ((-1) * (beta - beta * affinity)).exp() @ values.to(f.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        logits = self.clip_logits(f)
        if self.method.cache_values.numel() == 0:
            return logits
        return logits + self.method.alpha.to(f.dtype) * self.cache_logits(f, self.method.beta.to(f.dtype))


class TipAdapter(Method):
    """Tip-Adapter, training-free (see the module docstring)."""

    name = "tip-adapter"
    family = "adapter"
    paper = "Zhang et al., Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification, ECCV 2022"
    Config = TipAdapterConfig
    limits = {
        "augment_epochs": (0, 1000),
        "search_steps_beta": (1, 100_000),
        "search_steps_alpha": (1, 100_000),
        "crop_scale_min": (0.0, 1.0),
    }
    towers = ()
    backbone_kinds = ("clip",)
    head = "text"
    trains = False
    deviations: ClassVar[tuple[dict[str, str], ...]] = (
        {
            "id": "cache-crop-on-cached-decode",
            "what": "The cache's random resized crops (scale 0.5-1) are taken from the harness's decoded "
            "square image with torch's antialiased bicubic resize, not from the full PIL image.",
        },
        {
            "id": "search-on-selection-split",
            "what": "alpha and beta are searched on the run's selection split (few-shot val, min(K, 4) per "
            "class, on fewshot11); the reference searches on the dataset's full val split "
            "(datasets/oxford_pets.py L26-29 subsample only train).",
        },
    )

    cache_keys: torch.Tensor  # buffers (registered in __init__)
    cache_values: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._backbone: Backbone | None = None
        self.register_buffer("cache_keys", torch.empty(0, 0))
        self.register_buffer("cache_values", torch.empty(0, 0))
        self.register_buffer("alpha", torch.tensor(float(self.config.init_alpha)))
        self.register_buffer("beta", torch.tensor(float(self.config.init_beta)))

    def validate_config(self) -> None:
        c = self.config
        if c.crop_scale_min <= 0:
            raise UserError("tip-adapter: crop_scale_min must be in (0, 1]")

    def attach(self, backbone: Backbone) -> None:
        self.__dict__["_backbone"] = backbone

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module:
        return TipAdapterHead(self, TextClassifierHead(backbone, class_names, templates))

    def keys(self) -> torch.Tensor:
        """The cache keys (N, D) the head uses."""
        return self.cache_keys

    # ----- stages -------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        return [
            Stage("cache", "build the cache from the training split", train=False, prepare=self.build_cache),
            Stage("search", "search alpha and beta on the selection split", train=False, prepare=self.search),
        ]

    @torch.no_grad()
    def build_cache(self, ctx: StageContext) -> None:
        """Keys: the mean over ``augment_epochs`` augmented views of each training image's frozen
        feature, normalised; values: one-hot labels (utils.py L38-62)."""
        model, c = _classifier(ctx), self.config
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(ctx.seed)
        with frozen_backbone(model.backbone):
            views: list[torch.Tensor] = []
            labels: list[torch.Tensor] = []
            for epoch in range(max(1, c.augment_epochs)):
                feats = []
                for pixels, y in ctx.batches():
                    if c.augment_epochs > 0:
                        pixels = _random_resized_crop(pixels.cpu(), generator, (c.crop_scale_min, 1.0))
                    feats.append(model.features(pixels.to(ctx.device)).float())
                    if epoch == 0:
                        labels.append(y)
                views.append(torch.cat(feats))
        model.train(was_training)
        keys = F.normalize(torch.stack(views).mean(dim=0), dim=-1)
        classes = len(_head(model).text_head.class_names)
        values = F.one_hot(torch.cat(labels).long(), classes).float()
        self._set_cache(keys, values)

    def _set_cache(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.cache_keys = keys
        self.cache_values = values

    @torch.no_grad()
    def search(self, ctx: StageContext) -> None:
        """alpha, beta maximising selection accuracy over the reference's grid (utils.py L99-129)."""
        c = self.config
        if not c.search or ctx.selection_batches is None:
            return
        model = _classifier(ctx)
        was_training = model.training
        model.eval()
        feats, labels = [], []
        for pixels, y in ctx.selection_batches():
            feats.append(F.normalize(model.features(pixels).float(), dim=-1))
            labels.append(y)
        model.train(was_training)
        f, y = torch.cat(feats), torch.cat(labels)
        best = search_alpha_beta(_head(model), f, y, c)
        self.alpha.fill_(best[0])
        self.beta.fill_(best[1])

    # ----- state --------------------------------------------------------------------------------
    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        """The cache's size is the training set's: take the saved shapes before loading."""
        state = dict(state)
        for name in CACHE_BUFFERS:
            if name in state:
                setattr(self, name, state.pop(name).clone())
        self.load_state_dict(state, strict=False)

    def describe(self) -> dict[str, Any]:
        return {
            "alpha": float(self.alpha),
            "beta": float(self.beta),
            "cache_size": int(self.cache_keys.shape[0]),
            "augment_epochs": self.config.augment_epochs,
        }


def _classifier(ctx: StageContext) -> ImageClassifier:
    """The stage's model: Tip-Adapter runs on CLIP, whose task model is an image classifier."""
    return cast("ImageClassifier", ctx.model)


def _head(model: ImageClassifier) -> TipAdapterHead:
    """The classifier's head: the one :meth:`TipAdapter.make_head` built."""
    return cast(TipAdapterHead, model.head)


def search_alpha_beta(
    head: TipAdapterHead, f: torch.Tensor, y: torch.Tensor, c: TipAdapterConfig
) -> tuple[float, float]:
    """(alpha, beta) with the best accuracy on normalised features ``f``; beta outer, alpha inner, a
    strictly better accuracy replaces the best (utils.py L106-125), so ties keep the first."""
    clip_logits = head.clip_logits(f)
    best_acc, best = 0.0, (0.0, 0.0)
    for beta in search_grid(c.search_scale_beta, c.search_steps_beta):
        cache = head.cache_logits(f, beta)
        for alpha in search_grid(c.search_scale_alpha, c.search_steps_alpha):
            acc = float(((clip_logits + cache * alpha).argmax(dim=-1) == y).float().mean()) * 100
            if acc > best_acc:
                best_acc, best = acc, (alpha, beta)
    return best


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the keys fine-tuned (see the module docstring).

    Reference protocol (``suggested_protocol``): AdamW lr 0.001 (configs/imagenet.yaml L29;
    ``torch.optim.AdamW(..., lr, eps=1e-4)``, main.py L72: torch's default weight decay 0.01), a
    cosine over every step to 0 (``CosineAnnealingLR(T_max = epochs * steps)``, main.py L73, stepped
    per batch L106), batch 256 (main.py L181), 20 epochs (configs/imagenet.yaml L31)."""

    name = "tip-adapter-f"
    paper = "Zhang et al., Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification, ECCV 2022"
    trains = True
    suggested_protocol: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 256,
        "epochs": 20,
        "warmup_epochs": 0,
        "schedule": "linear_warmup_cosine_step",
    }
    deviations: ClassVar[tuple[dict[str, str], ...]] = (
        *TipAdapter.deviations,
        {
            "id": "adamw-eps",
            "what": "AdamW with torch's eps 1e-8; the reference sets eps=1e-4 (main.py L72).",
        },
        {
            "id": "last-epoch-not-best-test",
            "what": "The keys of the last epoch are kept; the reference keeps the epoch with the best "
            "test accuracy (main.py L111-126), which selects on the test set.",
        },
    )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        # Sized by the cache stage; a placeholder until then (so the method declares a parameter).
        self.tuned_keys = nn.Parameter(torch.empty(0, 0))

    def keys(self) -> torch.Tensor:
        return self.tuned_keys if self.tuned_keys.numel() else self.cache_keys

    def _set_cache(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super()._set_cache(keys, values)
        self.tuned_keys = nn.Parameter(keys.clone())  # adapter.weight = cache_keys.t() (main.py L69-70)

    def stages(self) -> list[Stage]:
        cache, search = super().stages()
        return [cache, Stage("train"), search]

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if "tuned_keys" in state:
            self.tuned_keys = nn.Parameter(state.pop("tuned_keys").clone())
        super().load_method_state(state)
