"""Shared by the OFA method tests: a random ``ofa-test`` backbone with a method attached, and a batch."""

from __future__ import annotations

import torch

from petlbench.backbones.ofa import build_ofa_backbone
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.methods.base import Method
from petlbench.methods.registry import get_method

VOCAB = 300


def ofa_backbone(seed: int | None = None):
    """``ofa-test`` with a small vocabulary; ``seed`` fixes its random weights."""
    if seed is not None:
        torch.manual_seed(seed)
    return build_ofa_backbone("ofa-test", pretrained=False, vocab_size=VOCAB)


def ofa_model(
    method: str, backbone=None, method_seed: int | None = None, **options
) -> tuple[OFAGenerator, Method]:
    """The method (with its OFA defaults under ``options``) attached to ``backbone`` (a new one if None)."""
    backbone = backbone if backbone is not None else ofa_backbone()
    cls = get_method(method)
    cls.check_compatible(backbone.name, backbone.kind, backbone.tower_names)
    m = cls({**cls.kind_defaults("ofa"), **options})
    if method_seed is not None:
        torch.manual_seed(method_seed)
    m.attach(backbone)
    return OFAGenerator(backbone, m), m


def ofa_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source tokens with BOS/EOS, pixels in [0, 1], decoder inputs starting with BOS)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (2, 6), generator=gen)
    src[:, 0], src[:, -1] = 0, 2
    prev = torch.randint(4, VOCAB, (2, 4), generator=gen)
    prev[:, 0] = 0
    return src, torch.rand(2, 3, 64, 64, generator=gen), prev
