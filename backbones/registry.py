"""Backbones by name: built-ins here, third-party ones through the ``petlbench.backbones`` entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from importlib.metadata import entry_points
from typing import Any

from petlbench.errors import UserError

from .base import Backbone

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: how to build it, and its facts declared as data (known without building).

    ``pretrained`` is the checkpoint that ``build(True)`` loads, as ``<library>:<tag>``
    (``"timm:vit_base_patch16_224.orig_in21k"``, ``"open_clip:ViT-B-16-quickgelu/openai"``,
    ``"petlbench:micro-clip (shipped)"``), or None for seeded random-init backbones. ``mean``/``std``
    normalise [0, 1] pixels, ``image_size`` is the square input side, ``towers`` the tower names;
    every built-in entry declares them and a test checks each against the backbone it builds
    (tests/backbones/test_registry_facts.py). Plugin entries declare nothing (``declared`` is False):
    build one to learn its facts.
    """

    name: str
    kind: str
    description: str
    build: Callable[[bool], Backbone]  # pretrained -> backbone
    source: str = "petlbench"
    _: KW_ONLY
    pretrained: str | None = None
    mean: Triple | None = None
    std: Triple | None = None
    image_size: int | None = None
    towers: tuple[str, ...] | None = None

    @property
    def declared(self) -> bool:
        return None not in (self.mean, self.std, self.image_size, self.towers)

    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` as declared; None for a plugin entry (facts unknown)."""
        if self.mean is None or self.std is None:
            return None
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    def facts(self) -> dict[str, Any]:
        """The declared facts as JSON-ready data (None where undeclared)."""
        return {
            "pretrained": self.pretrained,
            **(self.normalization() or {"mean": None, "std": None}),
            "image_size": self.image_size,
            "towers": list(self.towers) if self.towers is not None else None,
        }


IMAGE = ("image",)
IMAGE_TEXT = ("image", "text")
ENCODER_DECODER = ("encoder", "decoder")


def _builtins() -> dict[str, BackboneEntry]:
    from .clip import CLIP_MEAN, CLIP_STD, build_open_clip, build_tiny_clip
    from .micro import MICRO_CLIP, MICRO_VIT, build_micro_clip, build_micro_vit
    from .swin import TINY_SWIN, build_timm_swin, build_tiny_swin
    from .vit import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        INCEPTION_MEAN,
        INCEPTION_STD,
        build_timm_vit,
        build_tiny_vit,
    )

    entries = [
        BackboneEntry(
            "tiny-clip",
            "clip",
            "open_clip CLIP, width 64, 2+2 layers, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_clip("tiny-clip"),
            pretrained=None,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            image_size=32,
            towers=IMAGE_TEXT,
        ),
        BackboneEntry(
            "tiny-vit",
            "vit",
            "timm ViT, width 64, 2 layers, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_vit("tiny-vit"),
            pretrained=None,
            mean=INCEPTION_MEAN,
            std=INCEPTION_STD,
            image_size=32,
            towers=IMAGE,
        ),
        BackboneEntry(
            "micro-clip",
            "clip",
            "CLIP, width 128, 4+3 layers, 32px, pretrained on the synthetic world (shipped, offline)",
            lambda pretrained: build_micro_clip("micro-clip", pretrained),
            pretrained="petlbench:micro-clip (shipped)",
            mean=CLIP_MEAN,
            std=CLIP_STD,
            image_size=int(MICRO_CLIP["vision"]["image_size"]),  # type: ignore[index]
            towers=IMAGE_TEXT,
        ),
        BackboneEntry(
            "micro-vit",
            "vit",
            "timm ViT, width 128, 4 layers, 32px, supervised on the synthetic world (shipped, offline)",
            lambda pretrained: build_micro_vit("micro-vit", pretrained),
            pretrained="petlbench:micro-vit (shipped)",
            # the shipped weights were trained on these (harness/pretrain.py normalises with the backbone's)
            mean=INCEPTION_MEAN,
            std=INCEPTION_STD,
            image_size=int(MICRO_VIT["img_size"]),
            towers=IMAGE,
        ),
        BackboneEntry(
            "clip-vit-b16",
            "clip",
            "CLIP ViT-B/16 (open_clip 'ViT-B-16-quickgelu', pretrained 'openai')",
            lambda pretrained: build_open_clip(
                "clip-vit-b16", "ViT-B-16-quickgelu", "openai" if pretrained else None
            ),
            pretrained="open_clip:ViT-B-16-quickgelu/openai",
            mean=CLIP_MEAN,  # open_clip OPENAI_DATASET_MEAN/STD, as CLIP's own preprocess
            std=CLIP_STD,
            image_size=224,
            towers=IMAGE_TEXT,
        ),
        # VPT's and E2VPT's ViT-B/16: the original ImageNet-21k checkpoint (KMnP/vpt README.md:89,104:
        # vit_models/imagenet21k/ViT-B_16.npz renamed imagenet21k_ViT-B_16.npz;
        # src/models/build_vit_backbone.py:35 "sup_vitb16_imagenet21k"; ChengHan111/E2VPT
        # src/models/build_vit_backbone.py:46), with ImageNet mean/std (tf_dataset.py:75-76,
        # transforms.py:8-10). timm's pretrained_cfg for orig_in21k says mean = std = 0.5, so the
        # reference's normalisation is set here explicitly. Features: CLS after the final LayerNorm,
        # no pre-logits (VPT src/models/vit_backbones/vit.py:262, 319: head(x[:, 0]) after encoder_norm).
        BackboneEntry(
            "vit-b16",
            "vit",
            "supervised ViT-B/16, original ImageNet-21k (imagenet21k_ViT-B_16.npz, timm "
            "'vit_base_patch16_224.orig_in21k'), ImageNet mean/std, as VPT and E2VPT use",
            lambda pretrained: build_timm_vit(
                "vit-b16",
                "vit_base_patch16_224.orig_in21k",
                pretrained,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            ),
            pretrained="timm:vit_base_patch16_224.orig_in21k",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            image_size=224,
            towers=IMAGE,
        ),
        BackboneEntry(
            "vit-b16-augreg",
            "vit",
            "supervised ViT-B/16, AugReg ImageNet-21k (timm 'vit_base_patch16_224.augreg_in21k'), "
            "mean/std 0.5 (timm's config); not the VPT checkpoint",
            lambda pretrained: build_timm_vit(
                "vit-b16-augreg", "vit_base_patch16_224.augreg_in21k", pretrained
            ),
            pretrained="timm:vit_base_patch16_224.augreg_in21k",
            mean=INCEPTION_MEAN,  # from timm's pretrained_cfg (the builder reads it; the test checks)
            std=INCEPTION_STD,
            image_size=224,
            towers=IMAGE,
        ),
        BackboneEntry(
            "tiny-swin",
            "swin",
            "timm Swin, widths 32/64, 2+2 blocks, window 2, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_swin("tiny-swin"),
            pretrained=None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            image_size=int(TINY_SWIN["img_size"]),  # type: ignore[arg-type]
            towers=IMAGE,
        ),
        # VPT's Swin-B: swin_base_patch4_window7_224_22k.pth (KMnP/vpt src/models/build_vit_backbone.py:25),
        # ImageNet mean/std (tf_dataset.py:75-76), which timm's ms_in22k config also says.
        BackboneEntry(
            "swin-b",
            "swin",
            "Swin-B, ImageNet-22k (timm 'swin_base_patch4_window7_224.ms_in22k', as VPT and E2VPT use)",
            lambda pretrained: build_timm_swin("swin-b", "swin_base_patch4_window7_224.ms_in22k", pretrained),
            pretrained="timm:swin_base_patch4_window7_224.ms_in22k",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            image_size=224,
            towers=IMAGE,
        ),
    ]
    entries += _ofa_entries()
    return {e.name: e for e in entries}


def _ofa_entries() -> list[BackboneEntry]:
    from .ofa.backbone import OFA_MEAN, OFA_STD, build_ofa_backbone
    from .ofa.config import PUBLISHED_PARAMETERS, SIZES

    out = [
        BackboneEntry(
            f"ofa-{size}",
            "ofa",
            f"OFA-{size.capitalize()} (~{PUBLISHED_PARAMETERS[size] / 1e6:.0f}M), generative encoder-decoder "
            f"('OFA-Sys/ofa-{size}', transformers-branch checkpoint, loaded offline)",
            lambda pretrained, name=f"ofa-{size}": build_ofa_backbone(name, pretrained),
            pretrained=f"huggingface:OFA-Sys/ofa-{size}",
            mean=OFA_MEAN,
            std=OFA_STD,
            image_size=SIZES[size].patch_image_size,
            towers=ENCODER_DECODER,
        )
        for size in ("tiny", "medium", "base", "large", "huge")
    ]
    out.append(
        BackboneEntry(
            "ofa-test",
            "ofa",
            "OFA architecture, width 64, 2+2 layers, tiny ResNet stem, 64px, seeded random init (tests)",
            lambda pretrained: build_ofa_backbone("ofa-test", pretrained),
            pretrained=None,
            mean=OFA_MEAN,
            std=OFA_STD,
            image_size=SIZES["test"].patch_image_size,
            towers=ENCODER_DECODER,
        )
    )
    return out


def backbone_entries() -> dict[str, BackboneEntry]:
    entries = _builtins()
    for ep in entry_points(group="petlbench.backbones"):
        if ep.name in entries:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        # facts unknown until built (declared is False)
        entries[ep.name] = BackboneEntry(
            ep.name, "plugin", f"from {dist}", lambda pretrained, ep=ep: ep.load()(pretrained), source=dist
        )
    return entries


def list_backbones() -> list[BackboneEntry]:
    return list(backbone_entries().values())


def backbone_kind(name: str) -> str:
    return _entry(name).kind


def _entry(name: str) -> BackboneEntry:
    entries = backbone_entries()
    if name not in entries:
        raise UserError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(entries))}")
    return entries[name]


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone; ``pretrained=False`` gives the same architecture with random weights."""
    backbone = _entry(name).build(pretrained)
    backbone.freeze()
    return backbone
