"""Backbones by name: built-ins here, third-party ones through the ``petlbench.backbones`` entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from petlbench.errors import UserError

from .base import Backbone


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    kind: str
    description: str
    build: Callable[[bool], Backbone]  # pretrained -> backbone
    source: str = "petlbench"


def _builtins() -> dict[str, BackboneEntry]:
    from .clip import build_open_clip, build_tiny_clip
    from .micro import build_micro_clip, build_micro_vit
    from .swin import build_timm_swin, build_tiny_swin
    from .vit import build_timm_vit, build_tiny_vit

    entries = [
        BackboneEntry(
            "tiny-clip",
            "clip",
            "open_clip CLIP, width 64, 2+2 layers, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_clip("tiny-clip"),
        ),
        BackboneEntry(
            "tiny-vit",
            "vit",
            "timm ViT, width 64, 2 layers, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_vit("tiny-vit"),
        ),
        BackboneEntry(
            "micro-clip",
            "clip",
            "CLIP, width 128, 4+3 layers, 32px, pretrained on the synthetic world (shipped, offline)",
            lambda pretrained: build_micro_clip("micro-clip", pretrained),
        ),
        BackboneEntry(
            "micro-vit",
            "vit",
            "timm ViT, width 128, 4 layers, 32px, supervised on the synthetic world (shipped, offline)",
            lambda pretrained: build_micro_vit("micro-vit", pretrained),
        ),
        BackboneEntry(
            "clip-vit-b16",
            "clip",
            "CLIP ViT-B/16 (open_clip 'ViT-B-16-quickgelu', pretrained 'openai')",
            lambda pretrained: build_open_clip(
                "clip-vit-b16", "ViT-B-16-quickgelu", "openai" if pretrained else None
            ),
        ),
        BackboneEntry(
            "vit-b16",
            "vit",
            "supervised ViT-B/16, ImageNet-21k (timm 'vit_base_patch16_224.augreg_in21k')",
            lambda pretrained: build_timm_vit("vit-b16", "vit_base_patch16_224.augreg_in21k", pretrained),
        ),
        BackboneEntry(
            "tiny-swin",
            "swin",
            "timm Swin, widths 32/64, 2+2 blocks, window 2, 32px, seeded random init (tests, smoke)",
            lambda pretrained: build_tiny_swin("tiny-swin"),
        ),
        BackboneEntry(
            "swin-b",
            "swin",
            "Swin-B, ImageNet-22k (timm 'swin_base_patch4_window7_224.ms_in22k', as VPT and E2VPT use)",
            lambda pretrained: build_timm_swin("swin-b", "swin_base_patch4_window7_224.ms_in22k", pretrained),
        ),
    ]
    entries += _ofa_entries()
    return {e.name: e for e in entries}


def _ofa_entries() -> list[BackboneEntry]:
    from .ofa.backbone import build_ofa_backbone
    from .ofa.config import PUBLISHED_PARAMETERS

    out = [
        BackboneEntry(
            f"ofa-{size}",
            "ofa",
            f"OFA-{size.capitalize()} (~{PUBLISHED_PARAMETERS[size] / 1e6:.0f}M), generative encoder-decoder "
            f"('OFA-Sys/ofa-{size}', transformers-branch checkpoint, loaded offline)",
            lambda pretrained, name=f"ofa-{size}": build_ofa_backbone(name, pretrained),
        )
        for size in ("tiny", "medium", "base", "large", "huge")
    ]
    out.append(
        BackboneEntry(
            "ofa-test",
            "ofa",
            "OFA architecture, width 64, 2+2 layers, tiny ResNet stem, 64px, seeded random init (tests)",
            lambda pretrained: build_ofa_backbone("ofa-test", pretrained),
        )
    )
    return out


def backbone_entries() -> dict[str, BackboneEntry]:
    entries = _builtins()
    for ep in entry_points(group="petlbench.backbones"):
        if ep.name in entries:
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
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
