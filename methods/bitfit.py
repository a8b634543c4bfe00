"""BitFit: train only bias terms of the frozen backbone (Ben Zaken et al., ACL 2022).

Two selections:

* ``variant="all"`` (default): every backbone parameter whose name contains ``bias`` in the chosen
  towers, the ``tinytl-bias`` of KMnP/vpt and V-PETL Bench's BitFit. On ViT-B/16 that is
  102,912 parameters (0.120% of 85,798,656): per block qkv 2,304, proj 768, fc1 3,072, fc2 768 and two
  LayerNorm biases 1,536, plus the patch-embed bias and the final LayerNorm's bias. On Swin the same
  substring rule also selects every block's ``relative_position_bias_table`` ((2w-1)^2 x heads), as
  KMnP/vpt's ``tinytl-bias`` does on its Swin: Swin-B gives 137,216 biases + 63,544 table entries.
* ``variant="ofa"``: OFA's ``--bitfit`` (``train.py``), which trains the biases whose names contain
  ``layer_norm`` or ``fc``: the LayerNorm biases and the FFN (MLP) biases, not the attention's
  q/k/v/out biases. Mapped onto our towers as the biases of every ``LayerNorm`` module of the tower
  plus the biases of every block's MLP; on the OFA towers exactly the fairseq-named set (every
  layer's pre-attention, pre-cross-attention and pre-FFN LayerNorm, ``fc1``, ``fc2``, and the final
  ``layer_norm``; NormFormer's extra norms are not matched by those names and stay frozen).

Like full fine-tuning, this method deliberately makes backbone weights trainable: it owns no
parameter of its own, :meth:`trainable_parameters` yields exactly the selected backbone biases, and
its checkpoint (``method_state``) holds their values under ``"<tower>.<parameter name>"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from ._towers import TowerChoice, tower_defaults

VARIANTS = ("all", "ofa")


@dataclass
class BitFitConfig:
    variant: str = "all"  # all (every bias) | ofa (LayerNorm and FFN biases only)
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names


def _layer_norm_biases(tower: Tower) -> set[int]:
    return {id(m.bias) for m in tower.modules() if isinstance(m, nn.LayerNorm) and m.bias is not None}


def _mlp_biases(tower: Tower) -> set[int]:
    return {
        id(p)
        for view in tower._views  # the real blocks' MLP modules, read through the tower's views
        for name, p in view.mlp.named_parameters()
        if name.endswith("bias")
    }


def select_biases(tower: Tower, variant: str) -> dict[str, nn.Parameter]:
    """The tower's parameters BitFit trains, by name within the tower. A tower that knows OFA's exact
    selection (the OFA towers: fairseq's ``layer_norm``/``fc`` names differ from the LayerNorm
    modules it has) gives it through ``ofa_bitfit_parameters``."""
    if variant == "all":
        unused = tuple(getattr(tower, "unused_modules", ()))  # kept only so checkpoints load (OFA)
        return {n: p for n, p in tower.named_parameters() if "bias" in n and not n.startswith(unused)}
    own = getattr(tower, "ofa_bitfit_parameters", None)
    if callable(own):
        return own()
    wanted = _layer_norm_biases(tower) | _mlp_biases(tower)
    return {n: p for n, p in tower.named_parameters() if id(p) in wanted}


class BitFit(TowerChoice):
    name = "bitfit"
    family = "selective"
    paper = "Ben Zaken et al., BitFit: Simple Parameter-efficient Fine-tuning, ACL 2022"
    Config = BitFitConfig

    def validate_config(self) -> None:
        super().validate_config()
        if self.config.variant not in VARIANTS:
            raise UserError(
                f"{self.name}: variant must be one of {', '.join(VARIANTS)}, not {self.config.variant!r}"
            )

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        return tower_defaults(kind)

    def attach(self, backbone: Backbone) -> None:
        # A plain dict in __dict__: the classifier owns the backbone; registering its biases here
        # would duplicate them in the method's state_dict and parameter count.
        params: dict[str, nn.Parameter] = {}
        for tower_name, tower in self.chosen_towers(backbone).items():
            for name, p in select_biases(tower, self.config.variant).items():
                params[f"{tower_name}.{name}"] = p
        if not params:
            raise UserError(f"{self.name}: the selected towers of {backbone.name!r} have no bias to train")
        for p in params.values():
            p.requires_grad_(True)
        self.__dict__["_params"] = params

    def _selected(self) -> dict[str, nn.Parameter]:
        params = self.__dict__.get("_params")
        if params is None:
            raise RuntimeError(f"{self.name}: attach() the method to a backbone first")
        return params

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self._selected().values() if p.requires_grad)

    def parameter_names(self) -> list[str]:
        """The trained biases as ``"<tower>.<name>"``."""
        return list(self._selected())

    def method_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self._selected().items()}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self._selected()
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise UserError(
                f"{self.name}: checkpoint does not match the selected biases "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved with other options?"
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k].to(device=p.device, dtype=p.dtype))

    def describe(self) -> dict[str, Any]:
        per_tower: dict[str, int] = {}
        for key, p in self._selected().items():
            tower = key.split(".", 1)[0]
            per_tower[tower] = per_tower.get(tower, 0) + p.numel()
        return {"variant": self.config.variant, "trained_biases_per_tower": per_tower}


@dataclass
class BitFitOFAConfig(BitFitConfig):
    variant: str = "ofa"


class BitFitOFA(BitFit):
    """``bitfit`` with ``variant="ofa"`` as its default (OFA's script: LayerNorm and FFN biases).

    Not registered as an entry point (pyproject.toml lists ``bitfit`` only); ``bitfit`` with
    ``variant=ofa`` is the same method."""

    name = "bitfit-ofa"
    Config = BitFitOFAConfig
