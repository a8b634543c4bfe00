"""CLIP-LoRA: low-rank updates of q, k, v in both CLIP towers (Zanella and Ben Ayed, CVPRW 2024), as
MaxZanella/CLIP-LoRA implements it, on this package's LoRA (:class:`petlbench.methods.lora.LoRA`).

Reference defaults (``run_utils.py``): rank 2 (L35), alpha 1 (L36), dropout 0.25 before the LoRA
branch (L37), on q, k and v (L34) of every layer (``position all``, L32) of both encoders
(``encoder both``, L33). The scaling is ``alpha / sqrt(r)`` (``loralib/layers.py`` L42), not LoRA's
``alpha / r``. Init as LoRA's: A Kaiming-uniform (a = sqrt 5), B zero (``loralib/layers.py`` L63-68).
Trainable on CLIP ViT-B/16: 12 layers x 3 x 2 x 2 x (768 + 512) = 184,320 (110,592 image + 73,728
text). The text tower carries trainable parameters, so class text features are recomputed every
training step, as the reference does (``lora.py`` L96-101).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import MAX_WIDTH
from .lora import LoRA


@dataclass
class CLIPLoRAConfig:
    rank: int = 2  # --r (run_utils.py L35)
    alpha: float = 1.0  # --alpha (run_utils.py L36)
    targets: str = "q,k,v"  # --params q k v (run_utils.py L34)
    dropout: float = 0.25  # --dropout_rate (run_utils.py L37)
    tower: str = "both"  # --encoder both (run_utils.py L33)
    merge: bool = False  # after training, merge the updates into the frozen weights (a second stage)


class CLIPLoRA(LoRA):
    """CLIP-LoRA (see the module docstring).

    Reference protocol (``suggested_protocol``): AdamW, lr 2e-4, weight decay 1e-2, betas (0.9,
    0.999) (``lora.py`` L75; ``run_utils.py`` L28), batch 32 (``run_utils.py`` L30), a cosine over
    ``500 x shots`` iterations to 1e-6 (``lora.py`` L73, L76; ``run_utils.py`` L29), stepped per
    iteration (L122), no validation search."""

    name = "clip-lora"
    paper = "Zanella and Ben Ayed, Low-Rank Few-Shot Adaptation of Vision-Language Models, CVPRW 2024"
    Config = CLIPLoRAConfig
    limits = {"rank": (1, MAX_WIDTH)}
    towers = ("image", "text")
    backbone_kinds = ("clip",)
    head = "text"
    suggested_protocol: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw",
        "lr": 2e-4,
        "weight_decay": 1e-2,
        "batch_size": 32,
        "warmup_epochs": 0,
        "schedule": "linear_warmup_cosine_step",
    }
    deviations: ClassVar[tuple[dict[str, str], ...]] = (
        {
            "id": "iteration-budget-as-epochs",
            "what": "The reference trains 500 x shots iterations (lora.py L73) and stops mid-epoch; the "
            "harness trains whole epochs: fewshot11 and base2new give each task the budget rounded up "
            "to whole epochs at 16 shots (ceil(8000 / (16 C // 32)) for C training classes).",
        },
        {
            "id": "cosine-to-zero",
            "what": "The cosine ends at 0; the reference's CosineAnnealingLR ends at eta_min 1e-6 "
            "(lora.py L76).",
        },
    )

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        return {}

    @property
    def scaling(self) -> float:
        return self.config.alpha / math.sqrt(self.config.rank)  # loralib/layers.py L42
