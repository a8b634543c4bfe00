"""Frozen pre-trained backbones behind one insertion-point API (DESIGN section 3)."""

from .base import Backbone
from .registry import build_backbone, list_backbones
from .slots import InputTokens, LayerSlots, MaskedKV, MaskedTokens
from .tower import Tower

__all__ = [
    "Backbone",
    "InputTokens",
    "LayerSlots",
    "MaskedKV",
    "MaskedTokens",
    "Tower",
    "build_backbone",
    "list_backbones",
]
