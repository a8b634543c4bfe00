"""Prefix tuning (Li & Liang, ACL 2021) on any tower, with OFA's layout and options.

Every layer of the chosen towers gets ``length`` learned keys and values in head space, concatenated
after the frozen projections (the ``kv_heads`` slot): queries and the residual stream are unchanged,
and on the causal CLIP text tower the prefixes are visible to every query. Per tower the prefixes
are one (length, layers * 2 * d) table, OFA's ``Embedding(length, layers*2*d)``: layer ``l`` reads
columns ``[2l*d, (2l+2)*d)``, the first ``d`` its keys and the next ``d`` its values, each viewed as
(heads, length, d/heads). Init N(0, init_std^2) with init_std 0.02. On towers whose layers differ in
width (Swin stages) the table is (length, sum_l 2*d_l) and layer ``l`` reads its ``2*d_l`` columns
after those of the layers before it, viewed with its own heads; the prefixes of a Swin layer are
seen by every window.

Options (OFA-Sys/OFA ``PromptEncoder`` and the prompt-tuning scripts, see reference/methods.md 6):

* ``projection``: the MLP reparameterization ``Embedding(length, d) -> Linear(d, projection_dim) ->
  activation -> Linear(projection_dim, layers*2*d)``; ReLU as OFA, Tanh as PEFT (``activation``).
  Linear weights N(0, 0.02) and zero biases (BERT init, as OFA initialises its modules).
  Each layer evaluates only its own slice of the last Linear, so the cost is independent of the batch.
* ``dropout``: prompt dropout on the prefixes, 0.2 as OFA hard-codes it. Deviation: OFA draws a
  dropout mask per example (it expands the prefixes over the batch first); here one mask per step is
  shared by the batch, because the slot holds batch-free (heads, n, d_head) tensors.
* ``fold`` (with ``projection``): after training a training-free stage evaluates the MLP once and
  replaces it by the plain prefix table (:meth:`PrefixTuning.fold`), so inference costs nothing extra.

On OFA (towers ``encoder`` and ``decoder``, the default there is both) the prefixes go into the
self-attention of every encoder and decoder layer, never into cross-attention, with separate tables
per tower (OFA's ``encoder_prompt_length`` = ``length`` and ``decoder_prompt_length`` =
``decoder_length``). The default length there is 64 (:meth:`PrefixTuning.kind_defaults`), the
length the OFA prompt-tuning paper recommends (shared/papers/ofa-prompt-tuning.md: section 1
"64 should be favored in most cases", section 4.3 "Prompt Length", Figure 2, Appendix A.2 Table 6:
average score 92.29 at 64 against 92.10 at 100), not OFA's code default 100
(OFA-Sys/OFA models/ofa/unify_transformer.py L1931, L1939 at a36b91c;
run_scripts/refcoco/train_refcoco_prefix.sh L20-21 on branch feature/prompt_tuning). OFA-Base 64/64
gives 6*2*768*64 * 2 = 1,179,648 parameters, OFA-Large 3,145,728; with ``length=100`` (the code's
value) 1,843,200 and 4,915,200. Elsewhere (CLIP, ViT, Swin) the default stays 100. OFA's
``prompt_dim`` for the projection is ``2 * d``; here ``projection_dim`` (512) is used.

Counting: ``num_trainable_parameters`` counts what is trained right now: the plain table,
``length * layers * 2 * d`` per tower (e.g. 10 prefixes on ViT-B/16: 184,320), or, with the
reparameterization before folding, the embedding plus the MLP. :meth:`describe` states which is
counted and gives both (``prefix_parameters`` and ``reparameterization_parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import MaskedKV
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from ._towers import TowerChoice, tower_defaults
from .base import MAX_TOKENS, MAX_WIDTH, Stage, StageContext

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
# Prefix length on OFA: the paper's recommendation (ofa-prompt-tuning.md section 1, section 4.3 "Prompt
# Length", Figure 2, Appendix A.2 Table 6), applied by kind_defaults under the user's options.
OFA_PAPER_LENGTH = 64


@dataclass
class PrefixConfig:
    length: int = 100  # prefixes per layer (OFA's code default 100; on OFA kind_defaults gives 64); 0: none
    text_length: int | None = None  # prefixes per layer on the CLIP text tower (None: length)
    decoder_length: int | None = None  # prefixes per layer on an encoder-decoder's decoder (None: length)
    tower: str = "image"  # image | text | both (CLIP) | comma-separated tower names
    projection: bool = False  # MLP reparameterization (OFA's --*-prompt-projection)
    projection_dim: int = 512  # hidden width of the reparameterization MLP
    activation: str = "relu"  # relu (OFA) | tanh (PEFT) | gelu
    dropout: float = 0.2  # prompt dropout (OFA's hard-coded 0.2)
    init_std: float = 0.02  # prefix (or embedding) init N(0, init_std^2)
    fold: bool = True  # with projection: fold the MLP into plain prefixes after training (a second stage)


class PrefixKV(MaskedKV):
    """A layer's prefixes, computed when attention asks for them (so the MLP reparameterization and
    dropout run inside the forward pass and gradients reach the method's parameters)."""

    def __init__(self, method: PrefixTuning, tower: str, layer: int) -> None:  # no dataclass fields stored
        self._method = method
        self._tower = tower
        self._layer = layer
        self.mask = None

    def active(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._method.layer_prefix(self._tower, self._layer)

    # The dataclass versions would compute and compare tensors.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"PrefixKV(tower={self._tower!r}, layer={self._layer})"

    # ``keys``/``values`` are for inspection (e.g. whether the tower depends on trainable tensors);
    # they are built with grad enabled so ``requires_grad`` reflects the parameters even under no_grad.
    @property
    def keys(self) -> torch.Tensor:  # type: ignore[override]
        with torch.enable_grad():
            return self.active()[0]

    @property
    def values(self) -> torch.Tensor:  # type: ignore[override]
        with torch.enable_grad():
            return self.active()[1]


class PrefixTuning(TowerChoice):
    name = "prefix"
    family = "prompt"
    paper = "Li & Liang, Prefix-Tuning, ACL 2021 (OFA prompt tuning, Yang et al. 2022)"
    Config = PrefixConfig
    limits = {
        "length": (0, MAX_TOKENS),
        "text_length": (0, MAX_TOKENS),
        "decoder_length": (0, MAX_TOKENS),
        "projection_dim": (1, MAX_WIDTH),
    }

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.prefixes = nn.ParameterDict()  # tower -> (length, layers*2*d): plain (or folded) prefixes
        self.embeddings = nn.ParameterDict()  # tower -> (length, d): reparameterization input
        self.mlps = nn.ModuleDict()  # tower -> Sequential(Linear, act, Linear(-> layers*2*d))
        self.dropout = nn.Dropout(self.config.dropout) if self.config.dropout > 0 else nn.Identity()
        self._towers: dict[str, Tower] = {}  # plain dict: the method must not own backbone weights

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if c.length < 0 or any(v is not None and v < 0 for v in (c.text_length, c.decoder_length)):
            raise UserError("prefix: length, text_length and decoder_length must be >= 0 (0: no prefixes)")
        if c.projection and c.projection_dim < 1:
            raise UserError(f"prefix: projection_dim must be at least 1, got {c.projection_dim}")
        if c.activation not in ACTIVATIONS:
            raise UserError(
                f"prefix: activation must be one of {', '.join(ACTIVATIONS)}, not {c.activation!r}"
            )
        if not math.isfinite(c.init_std) or c.init_std < 0:
            raise UserError(f"prefix: init_std must be >= 0, got {c.init_std}")

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        """Every tower of an encoder-decoder and, on OFA, 64 prefixes per layer: the OFA prompt-tuning
        paper's recommendation (Figure 2, section 4.3, Appendix A.2 Table 6), not the code's 100."""
        defaults: dict[str, Any] = dict(tower_defaults(kind))
        if kind == "ofa":
            defaults["length"] = OFA_PAPER_LENGTH
        return defaults

    def length_for(self, tower: str) -> int:
        c = self.config
        if tower == "text" and c.text_length is not None:
            return c.text_length
        if tower == "decoder" and c.decoder_length is not None:
            return c.decoder_length
        return c.length

    # ----- attach -------------------------------------------------------------------------------
    def attach(self, backbone: Backbone) -> None:
        c = self.config
        for name, tower in self.chosen_towers(backbone).items():
            for layer in range(tower.depth):
                if tower.layer_width(layer) % tower.layer_heads(layer):
                    raise UserError(
                        f"prefix: {name} tower layer {layer} width {tower.layer_width(layer)} is not "
                        f"divisible by its {tower.layer_heads(layer)} heads"
                    )
            n, out = self.length_for(name), 2 * sum(tower.layer_widths)
            if c.projection:
                self.embeddings[name] = nn.Parameter(torch.randn(n, tower.width) * c.init_std)
                mlp = nn.Sequential(
                    nn.Linear(tower.width, c.projection_dim),
                    ACTIVATIONS[c.activation](),
                    nn.Linear(c.projection_dim, out),
                )
                with torch.no_grad():
                    for lin in (cast(nn.Linear, mlp[0]), cast(nn.Linear, mlp[2])):
                        lin.weight.normal_(0.0, 0.02)
                        lin.bias.zero_()
                self.mlps[name] = mlp
            else:
                self.prefixes[name] = nn.Parameter(torch.randn(n, out) * c.init_std)
            self._towers[name] = tower
            for layer in range(tower.depth):
                tower.slots[layer].kv_heads = PrefixKV(self, name, layer)

    def layer_prefix(self, tower_name: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (heads, length, d_head) of one layer, dropout included in training."""
        tower = self._towers[tower_name]
        start = 2 * sum(tower.layer_widths[:layer])
        cols = slice(start, start + 2 * tower.layer_width(layer))
        if tower_name in self.prefixes:
            kv = self.prefixes[tower_name][:, cols]
        else:
            mlp = cast(nn.Sequential, self.mlps[tower_name])
            last = cast(nn.Linear, mlp[2])
            hidden = mlp[1](mlp[0](self.embeddings[tower_name]))
            kv = F.linear(hidden, last.weight[cols], last.bias[cols])
        kv = self.dropout(kv)
        heads, head_dim = tower.layer_heads(layer), tower.layer_head_dim(layer)
        keys, values = kv.view(kv.shape[0], 2, heads, head_dim).permute(1, 2, 0, 3).unbind(0)
        return keys, values

    # ----- folding ------------------------------------------------------------------------------
    @property
    def folded(self) -> bool:
        """True when no reparameterization MLP is left (always true without ``projection``)."""
        return len(self.mlps) == 0

    @torch.no_grad()
    def fold(self) -> None:
        """Replace each tower's embedding + MLP by the plain prefix table it produces (idempotent)."""
        for name in list(self.mlps.keys()):
            table = self.mlps[name](self.embeddings[name])
            del self.mlps[name]
            del self.embeddings[name]
            self.prefixes[name] = nn.Parameter(table.detach().clone())

    def stages(self) -> list[Stage]:
        if not (self.config.projection and self.config.fold):
            return [Stage("train")]

        def fold(ctx: StageContext) -> None:  # noqa: ARG001 - the method holds what it needs
            self.fold()

        return [
            Stage("train"),
            Stage("fold", "fold the prefix MLP into plain prefixes", train=False, prepare=fold),
        ]

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        saved_folded = not any(k.startswith(("mlps.", "embeddings.")) for k in state)
        if saved_folded and not self.folded:
            self.fold()  # a checkpoint taken after the fold stage: match its shape, then load
        elif not saved_folded and self.folded and self.config.projection:
            raise UserError(
                "prefix: this checkpoint holds the unfolded reparameterization but the method is folded; "
                "load it into a freshly attached method"
            )
        self.load_state_dict(state)

    # ----- counting -----------------------------------------------------------------------------
    def inference_parameters(self) -> int:
        """Parameters of the plain prefixes: sum over towers of length * layers * 2 * d."""
        return sum(self.length_for(n) * 2 * sum(t.layer_widths) for n, t in self._towers.items())

    def reparameterization_parameters(self) -> int | None:
        """Parameters the MLP reparameterization trains (embedding + MLP), None without it."""
        if not self.config.projection:
            return None
        h = self.config.projection_dim
        total = 0
        for n, t in self._towers.items():
            out = 2 * sum(t.layer_widths)
            total += self.length_for(n) * t.width + (t.width * h + h) + (h * out + out)
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "lengths": {n: self.length_for(n) for n in self._towers},
            "reparameterized": bool(self.config.projection),
            "folded": self.folded,
            "counted": "plain prefixes" if self.folded else "embedding + reparameterization MLP",
            "counted_parameters": self.num_trainable_parameters(),
            "prefix_parameters": self.inference_parameters(),
            "reparameterization_parameters": self.reparameterization_parameters(),
        }
