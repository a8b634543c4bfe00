"""The built-in backbones as registry entries, each registered in our pyproject's
``petlbench.backbones`` entry-point group: the path a third-party backbone takes is the path every
built-in takes (``name = "package.module:ENTRY"``, ENTRY a :class:`BackboneEntry`).

Every entry declares its facts as data (checkpoint tag, normalisation, input size, towers, whether it
is generative) so planning knows them without building the model; a test checks each against the
backbone it builds (tests/backbones/test_registry_facts.py). Builders import their libraries lazily.
"""

from __future__ import annotations

from typing import cast

from .clip import CLIP_MEAN, CLIP_STD, build_open_clip, build_tiny_clip
from .micro import MICRO_CLIP as MICRO_CLIP_ARCH
from .micro import MICRO_VIT as MICRO_VIT_ARCH
from .micro import build_micro_clip, build_micro_vit
from .ofa.backbone import OFA_MEAN, OFA_STD, build_ofa_backbone
from .ofa.config import PUBLISHED_PARAMETERS, SIZES
from .registry import ENCODER_DECODER, IMAGE, IMAGE_TEXT, BackboneEntry
from .swin import TINY_SWIN as TINY_SWIN_ARCH
from .swin import build_timm_swin, build_tiny_swin
from .vit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    build_timm_vit,
    build_tiny_vit,
)

# The architectures' config dicts (MICRO_CLIP_ARCH, MICRO_VIT_ARCH, TINY_SWIN_ARCH) are imported under
# other names: the entries below take theirs.

TINY_CLIP = BackboneEntry(
    "tiny-clip",
    "clip",
    "open_clip CLIP, width 64, 2+2 layers, 32px, seeded random init (tests, smoke)",
    lambda pretrained: build_tiny_clip("tiny-clip"),
    pretrained=None,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    image_size=32,
    towers=IMAGE_TEXT,
)

TINY_VIT = BackboneEntry(
    "tiny-vit",
    "vit",
    "timm ViT, width 64, 2 layers, 32px, seeded random init (tests, smoke)",
    lambda pretrained: build_tiny_vit("tiny-vit"),
    pretrained=None,
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    image_size=32,
    towers=IMAGE,
)

MICRO_CLIP = BackboneEntry(
    "micro-clip",
    "clip",
    "CLIP, width 128, 4+3 layers, 32px, pretrained on the synthetic world (shipped, offline)",
    lambda pretrained: build_micro_clip("micro-clip", pretrained),
    pretrained="petlbench:micro-clip (shipped)",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    image_size=int(MICRO_CLIP_ARCH["vision"]["image_size"]),
    towers=IMAGE_TEXT,
)

MICRO_VIT = BackboneEntry(
    "micro-vit",
    "vit",
    "timm ViT, width 128, 4 layers, 32px, supervised on the synthetic world (shipped, offline)",
    lambda pretrained: build_micro_vit("micro-vit", pretrained),
    pretrained="petlbench:micro-vit (shipped)",
    # the shipped weights were trained on these (harness/pretrain.py normalises with the backbone's)
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    image_size=int(MICRO_VIT_ARCH["img_size"]),
    towers=IMAGE,
)

CLIP_VIT_B16 = BackboneEntry(
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
)

# VPT's and E2VPT's ViT-B/16: the original ImageNet-21k checkpoint (KMnP/vpt README.md:89,104:
# vit_models/imagenet21k/ViT-B_16.npz renamed imagenet21k_ViT-B_16.npz;
# src/models/build_vit_backbone.py:35 "sup_vitb16_imagenet21k"; ChengHan111/E2VPT
# src/models/build_vit_backbone.py:46), with ImageNet mean/std (tf_dataset.py:75-76,
# transforms.py:8-10). timm's pretrained_cfg for orig_in21k says mean = std = 0.5, so the
# reference's normalisation is set here explicitly. Features: CLS after the final LayerNorm,
# no pre-logits (VPT src/models/vit_backbones/vit.py:262, 319: head(x[:, 0]) after encoder_norm).
VIT_B16 = BackboneEntry(
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
)

VIT_B16_AUGREG = BackboneEntry(
    "vit-b16-augreg",
    "vit",
    "supervised ViT-B/16, AugReg ImageNet-21k (timm 'vit_base_patch16_224.augreg_in21k'), "
    "mean/std 0.5 (timm's config); not the VPT checkpoint",
    lambda pretrained: build_timm_vit("vit-b16-augreg", "vit_base_patch16_224.augreg_in21k", pretrained),
    pretrained="timm:vit_base_patch16_224.augreg_in21k",
    mean=INCEPTION_MEAN,  # from timm's pretrained_cfg (the builder reads it; the test checks)
    std=INCEPTION_STD,
    image_size=224,
    towers=IMAGE,
)

TINY_SWIN = BackboneEntry(
    "tiny-swin",
    "swin",
    "timm Swin, widths 32/64, 2+2 blocks, window 2, 32px, seeded random init (tests, smoke)",
    lambda pretrained: build_tiny_swin("tiny-swin"),
    pretrained=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    image_size=int(cast(int, TINY_SWIN_ARCH["img_size"])),
    towers=IMAGE,
)

# VPT's Swin-B: swin_base_patch4_window7_224_22k.pth (KMnP/vpt src/models/build_vit_backbone.py:25),
# ImageNet mean/std (tf_dataset.py:75-76), which timm's ms_in22k config also says.
SWIN_B = BackboneEntry(
    "swin-b",
    "swin",
    "Swin-B, ImageNet-22k (timm 'swin_base_patch4_window7_224.ms_in22k', as VPT and E2VPT use)",
    lambda pretrained: build_timm_swin("swin-b", "swin_base_patch4_window7_224.ms_in22k", pretrained),
    pretrained="timm:swin_base_patch4_window7_224.ms_in22k",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    image_size=224,
    towers=IMAGE,
)


def _ofa(size: str) -> BackboneEntry:
    if size == "test":
        return BackboneEntry(
            "ofa-test",
            "ofa",
            "OFA architecture, width 64, 2+2 layers, tiny ResNet stem, 64px, seeded random init (tests)",
            lambda pretrained: build_ofa_backbone("ofa-test", pretrained),
            pretrained=None,
            mean=OFA_MEAN,
            std=OFA_STD,
            image_size=SIZES["test"].patch_image_size,
            towers=ENCODER_DECODER,
            generative=True,
        )
    name = f"ofa-{size}"
    return BackboneEntry(
        name,
        "ofa",
        f"OFA-{size.capitalize()} (~{PUBLISHED_PARAMETERS[size] / 1e6:.0f}M), generative encoder-decoder "
        f"('OFA-Sys/ofa-{size}', transformers-branch checkpoint, loaded offline)",
        lambda pretrained: build_ofa_backbone(name, pretrained),
        pretrained=f"huggingface:OFA-Sys/ofa-{size}",
        mean=OFA_MEAN,
        std=OFA_STD,
        image_size=SIZES[size].patch_image_size,
        towers=ENCODER_DECODER,
        generative=True,
    )


OFA_TINY, OFA_MEDIUM, OFA_BASE, OFA_LARGE, OFA_HUGE, OFA_TEST = (
    _ofa(size) for size in ("tiny", "medium", "base", "large", "huge", "test")
)
