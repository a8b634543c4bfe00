"""OFA (Wang et al., ICML 2022), our implementation: a unified generative encoder-decoder backbone.

Parts: :mod:`.config` (the five sizes and ``test``), :mod:`.positions` (relative position buckets),
:mod:`.layers` (ResNet stem, NormFormer layers), :mod:`.towers` (``encoder`` / ``decoder`` with
slots), :mod:`.backbone` (building, pretrained loading), :mod:`.checkpoint` (released key layout),
:mod:`.synthetic` (a random state in that layout), :mod:`.generator` (the model a run trains) and
:mod:`.decoding` (greedy, beam, trie, all-candidate).
"""

from .backbone import OFABackbone, build_ofa_backbone
from .checkpoint import load_ofa_checkpoint
from .config import SIZES, OFAConfig, size_config
from .synthetic import synthetic_released_state
from .towers import EncoderOutput, OFADecoderTower, OFAEncoderTower

__all__ = [
    "SIZES",
    "EncoderOutput",
    "OFABackbone",
    "OFAConfig",
    "OFADecoderTower",
    "OFAEncoderTower",
    "build_ofa_backbone",
    "load_ofa_checkpoint",
    "size_config",
    "synthetic_released_state",
]
