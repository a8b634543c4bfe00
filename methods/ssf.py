"""SSF: scaling and shifting the frozen features (Lian et al., NeurIPS 2022; dongzelian/SSF).

Every op the reference wraps gets a per-channel ``y -> gamma * y + beta`` on its output
(``ssf_ada``, dongzelian/SSF models/vision_transformer.py:L388-395): in every block after ``norm1``
and ``norm2`` (L246-255), after the fused ``qkv`` and the output ``proj`` (L190-211), after ``fc1``
and ``fc2`` (L152-166); once after the patch embedding (L350-369) and once after the final norm
(L458-459, L532-533). ``gamma ~ N(1, 0.02)``, ``beta ~ N(0, 0.02)`` (``init_ssf_scale_shift``,
L378-385), so unlike LoRA the tuned model does not start equal to the backbone.

On ViT-B/16: per block 2 * (768 + 2304 + 768 + 768 + 3072 + 768) = 16,896, times 12, plus 2 * 768
after the patch embedding and 2 * 768 after the final norm: 205,824.

Every scale and shift sits right after a linear map (a LayerNorm's affine, a Linear, the patch
Conv), so :meth:`SSF.fold` multiplies it into that op's frozen weight and bias and empties the slots:
inference then costs exactly the backbone's (the paper's re-parameterisation, section 3.3).
:meth:`SSF.unfold` undoes it (to float rounding). ``fold=true`` adds a training-free stage that
folds after training; the folded flag travels with the state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import OPS
from petlbench.backbones.tower import Tower
from petlbench.backbones.vit import fold_affine

from ._folding import FoldsIntoWeights
from ._towers import TowerChoice
from .base import no_drop_path


@dataclass
class SSFConfig:
    tower: str = "image"  # image (ViT, Swin, CLIP) | text | both (CLIP) | comma-separated tower names
    init_std: float = 0.02  # gamma ~ N(1, std), beta ~ N(0, std) (SSF models/vision_transformer.py:L378-385)
    fold: bool = False  # after training, fold the scales and shifts into the frozen weights (a second stage)


class ScaleShift(nn.Module):
    """``y -> y * scale + shift`` over the last dimension, or over dim 1 of a (B, C, ...) map when
    only that matches (``ssf_ada``, dongzelian/SSF models/vision_transformer.py:L388-395)."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))
        self.shift = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.scale, mean=1.0, std=std)
        nn.init.normal_(self.shift, std=std)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype) + self.shift.to(y.dtype)


class _QKV(nn.Module):
    """The fused qkv projection's weight and bias, however the backbone stores them, as a module
    :func:`fold_affine` folds into."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, where: str) -> None:
        super().__init__()
        if bias is None:
            raise ValueError(f"ssf: {where} has no qkv bias to fold a shift into")
        self.weight, self.bias = weight, bias


def _op_width(tower: Tower, layer: int, op: str) -> int:
    width = tower.layer_width(layer)
    if op == "qkv":
        return 3 * width
    if op == "fc1":
        return tower._views[layer].mlp_parts().fc1.out_features
    return width


class SSF(FoldsIntoWeights, TowerChoice):
    name = "ssf"
    family = "reparameterization"
    paper = (
        "Lian et al., Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning, "
        "NeurIPS 2022"
    )
    Config = SSFConfig
    towers = ("image", "text")
    backbone_kinds = ("vit", "swin", "clip")  # OFA's layers do not read the MLP / tower slots
    limits = {"init_std": (0.0, 1.0)}
    fold_option = "fold"
    fold_stage = ("fold", "fold the scales and shifts into the frozen weights")
    fold_key = "folded"
    deviations = (
        {
            "id": "ssf-swin-merging",
            "what": "On Swin the patch embedding gets one scale and shift after its LayerNorm (the reference "
            "also scales after the conv, models/swin_transformer.py:L529-531) and patch merging gets none "
            "(the reference scales its norm, L422).",
        },
        no_drop_path(
            "ssf", "the reference trains with drop_path_rate 0.1, train_scripts/vit/vtab/*/train_ssf.sh"
        ),
    )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.ssf = nn.ModuleDict()  # "<tower>" -> ModuleDict of "<layer>_<op>", "embed", "final"
        self._towers: dict[str, Tower] = {}

    def validate_config(self) -> None:
        super().validate_config()

    @property
    def folded(self) -> bool:
        return self._in_weights

    def attach(self, backbone: Backbone) -> None:
        std = self.config.init_std
        for tower_name, tower in self.chosen_towers(backbone).items():
            mods = nn.ModuleDict()
            if tower_name == "image":  # text has no patch embedding; its final norm is pooled inside
                mods["embed"] = ScaleShift(tower.width, std)
            for layer in range(tower.depth):
                for op in OPS:
                    mods[f"{layer}_{op}"] = ScaleShift(_op_width(tower, layer, op), std)
            if tower_name == "image":
                mods["final"] = ScaleShift(tower.layer_width(tower.depth - 1), std)
            self.ssf[tower_name] = mods
            self._towers[tower_name] = tower
        self._bind_slots()

    def _scale_shifts(self) -> Iterator[tuple[str, Tower, dict[str, ScaleShift]]]:
        """Each attached tower's name, the tower and its scale-shift modules by key."""
        for tower_name, mods in self.ssf.items():
            typed = {key: cast(ScaleShift, m) for key, m in cast(nn.ModuleDict, mods).items()}
            yield tower_name, self._towers[tower_name], typed

    def _bind_slots(self) -> None:
        for _, tower, mods in self._scale_shifts():
            for layer in range(tower.depth):
                for op in OPS:  # entry by entry: another method's after_op entries stay
                    tower.set_slot(
                        layer, f"after_op.{op}", None if self._in_weights else mods[f"{layer}_{op}"]
                    )
            live = {} if self._in_weights else mods
            tower.tower_slots.after_patch_embed = live.get("embed")
            tower.tower_slots.after_final_norm = live.get("final")

    # ----- folding --------------------------------------------------------------------------
    def fold(self) -> None:
        """Multiply every scale and shift into the op before it and empty the slots (idempotent)."""
        self._set_in_weights(True)

    def unfold(self) -> None:
        """Take the scales and shifts out of the weights again and refill the slots (idempotent)."""
        self._set_in_weights(False)

    def _write_into_weights(self, undo: bool) -> None:
        for tower_name, tower, mods in self._scale_shifts():
            for layer, view in enumerate(tower._views):
                parts = view.mlp_parts()
                qkv = _QKV(view.qkv_weight(), view.qkv_bias(), f"layer {layer} of tower {tower_name!r}")
                targets: dict[str, nn.Module] = {
                    "ln_1": view.ln_1,
                    "qkv": qkv,
                    "proj": view.out_proj,
                    "ln_2": view.ln_2,
                }
                targets |= {"fc1": parts.fc1, "fc2": parts.fc2}
                for op, module in targets.items():
                    m = mods[f"{layer}_{op}"]
                    fold_affine(module, m.scale, m.shift, undo=undo)
            if "embed" in mods:
                tower.fold_patch_affine(mods["embed"].scale, mods["embed"].shift, undo=undo)
            if "final" in mods:
                tower.fold_final_affine(mods["final"].scale, mods["final"].shift, undo=undo)

    def describe(self) -> dict[str, Any]:
        return {"folded": self._in_weights}
