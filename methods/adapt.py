"""Adapt: adaptive prompt tuning with heterogeneous context lengths (Huang et al., "Adapt: Adaptive
Prompt Tuning for Pre-trained Vision-Language Models").

Mechanics (paper Eq. 7-8, Algorithm 1):

* Every prompted layer ``l`` of a branch (image tower ``f``, text tower ``g``) owns ``xi`` context
  tokens ``P_l`` of the tower's width. They are *residual-space key/value prompts*: they pass through
  the layer's frozen ``ln_1`` and ``W_k``/``W_v`` and are seen as extra keys/values only
  (``K = f_k([P, x])``, ``V = f_v([P, x])``, queries unchanged), so the residual stream keeps its
  length and a layer may hold any number of tokens, zero included. On the causal text tower the
  prompt keys are visible to every query (the DPL layout ``[SOS; ctx; x[1:]]`` with the mask widened).
  This is the backbone's ``kv_residual`` slot.
* A binary mask ``M(t)`` of shape (layers, xi) per branch (a buffer: it is checkpointed) selects the
  active tokens. A pruned token leaves the computation (the slot indexes it away), so the attention
  really shrinks.
* Saliency scores per token (summed over the width) are accumulated every step while the active
  total is above the target ``T_target``; every ``accumulation_steps`` steps, once the warmup epochs
  are over, the ``prune_rate`` tokens with the lowest accumulated score *across both branches* are
  pruned (never below the target: the last prune may remove fewer), and the scores are reset.

Choices where the paper is silent or ambiguous (documented so results can be read correctly):

* Init: the paper says "randomly initialized"; the authors' closest public code (DPL, same authors)
  uses ``normal(0, 0.02)``, which is used here (``init_std``).
* Scores: ``snip`` = sum over d of ``|g * P|``, ``grad`` = sum over d of ``|g|``, ``l2`` = sum over d
  of ``|P|`` (elementwise magnitudes summed per token; Eq. 6 writes ``|.|`` of the token vector).
  ``g`` is the gradient of the step's loss, read after ``backward`` and before clipping/the
  optimizer step.
* Timing: step ``t`` counts optimisation steps from 1. Scores accumulate in every step (warmup
  included) and are reset at every multiple of ``accumulation_steps``; a prune happens at such a
  multiple only when the step's epoch is ``>= warmup_epochs`` (paper Fig. 3: 5 warmup epochs). So
  every prune ranks tokens by exactly the last ``n_k`` steps of scores, as Algorithm 1 does.
* Ties are broken deterministically: image branch before text, lower layer first, lower token
  index first (a stable sort over that order).
* The target. The paper's headline setting is ``T_target = 128`` with ``l_f = l_g = 12`` and
  ``xi_f = xi_g = 16`` (Sec. 4.2 "Results" and Table 1/Table 2: 81.70% average; Fig. 1 uses 32), i.e.
  128 of 384 prompt tokens stay active. An absolute 128 means something else on another backbone
  (on the 4+3-layer micro-CLIP there are only 112 tokens: nothing would be pruned), so the default is
  that *fraction*: ``target_fraction = 1/3`` of the tokens attached over both branches. The effective
  target is ``floor(target_fraction * initial_tokens + 0.5)`` (round half up), where
  ``initial_tokens`` counts every attached prompt slot (after clamping layers to the tower depth):
  128 on CLIP ViT-B/16 (12+12 layers x 16), 37 on micro-CLIP (4+3 layers x 16 = 112), 21 on tiny-CLIP
  (2+2 x 16). The result need not be a multiple of ``prune_rate``: the last prune removes fewer. An
  absolute ``target_tokens`` set by the user wins over the fraction.
* Reaching the target takes ``ceil((initial - target) / prune_rate)`` pruning steps, the first at
  the first multiple of ``accumulation_steps`` after the warmup epochs, then one every
  ``accumulation_steps`` steps. :meth:`Adapt.describe` records whether the run got there
  (``reached_target``), and a ``warning`` with the steps it had and the steps it needed when not.

Trainable parameters are counted as the *active* ones: ``sum_branch width * active tokens``
(per layer ``layer_width(l) * active tokens of l`` on towers whose widths differ by stage, e.g. Swin).

On the OFA encoder-decoder the two branches are its two towers: the **encoder** (the ``[image ;
text]`` stream) takes the paper's image/vision branch role and the **decoder** (causal, text) the
text branch role. The options keep their names: ``image_layers``/``image_tokens`` size the encoder's
prompts, ``text_layers``/``text_tokens`` the decoder's. The branches are then named by their towers
(``encoder``, ``decoder``: prompt and mask names, scores, :meth:`Adapt.describe`, the figure), and
pruning ranks both jointly exactly as on CLIP (ties: encoder before decoder). The prompts enter every
self-attention of the prompted layers (never OFA's cross-attention) with zero position bias, visible to
every query of the causal decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import MaskedTokens
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

from .base import MAX_LAYERS, MAX_TOKENS, Callback, Method

BRANCHES = ("image", "text")  # also the tie-break order of pruning
# The towers that take each branch's role: CLIP/ViT/Swin's own, else an encoder-decoder's (OFA).
BRANCH_TOWERS = {"image": ("image", "encoder"), "text": ("text", "decoder")}
ORDER = ("image", "encoder", "text", "decoder")  # branch names in tie-break order
SCORES = ("snip", "grad", "l2")
# The paper's headline target as a fraction of its prompt slots: T_target = 128 of l x xi = 12 x 16 per
# branch, 2 branches (shared/papers/adapt.md Sec. 4.2 "Results", L188; Table 1 L170/L182, Table 2 L204/L211).
PAPER_TARGET_FRACTION = 128 / (2 * 12 * 16)


@dataclass
class AdaptConfig:
    score: str = "snip"  # snip | grad | l2 (Eq. 6)
    image_layers: int = 12  # l_f: prompted layers of the image tower, from the first (clamped to depth)
    text_layers: int = 12  # l_g: prompted layers of the text tower (clamped to depth)
    image_tokens: int = 16  # xi_f: maximum context length per image layer
    text_tokens: int = 16  # xi_g: maximum context length per text layer
    # T_target: total active tokens over both branches once pruning ends. None: the fraction below.
    target_tokens: int | None = None
    # T_target / initial tokens when target_tokens is None: 1/3 = 128/384, the paper's headline setting
    # (T_target = 128 with 12+12 layers x 16 tokens, Sec. 4.2 and Table 1). Rounded half up.
    target_fraction: float = PAPER_TARGET_FRACTION
    accumulation_steps: int = 80  # n_k: steps of accumulated scores per pruning step
    prune_rate: int = 4  # r_p: tokens removed per pruning step
    warmup_epochs: int = 5  # epochs without pruning (paper Fig. 3)
    init_std: float = 0.02  # P ~ N(0, init_std^2) (DPL's init)


class Adapt(Method):
    """Adapt (see the module docstring).

    ``reference_protocol`` is the paper's training protocol (``reference_protocol_source``: Sec. 4.1
    "Experiments", Datasets and Implementation Details): CLIP ViT-B/16, 16 shots (the CoOp few-shot
    setting), SGD, batch size 4, learning rate 2.5e-3, 100 epochs, test accuracy from the weights at
    epoch 100, results averaged over 3 runs. The method's defaults are that section's n_k = 80 and
    r_p = 4, with l = 12 and xi = 16 in both branches and snip scores (Sec. 4.2). The paper states no
    momentum, weight decay or learning-rate schedule. ``suggested_protocol`` is the same dict (an
    alias kept for callers of the older name)."""

    name = "adapt"
    family = "prompt"
    paper = "Huang et al., Adapt: Adaptive Prompt Tuning for Pre-trained Vision-Language Models"
    Config = AdaptConfig
    limits = {
        "image_layers": (0, MAX_LAYERS),
        "text_layers": (0, MAX_LAYERS),
        "image_tokens": (0, MAX_TOKENS),
        "text_tokens": (0, MAX_TOKENS),
        "target_tokens": (0, MAX_TOKENS * MAX_LAYERS),
        "accumulation_steps": (1, 10**9),
        "prune_rate": (1, MAX_TOKENS),
        "warmup_epochs": (0, 10**6),
    }
    towers = ("image", "text")
    reference_protocol: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",  # "We use the stochastic gradient descent (SGD)"
        "lr": 2.5e-3,  # "The learning rate is 2.5 x 10^-3"
        "batch_size": 4,  # "The batch size is 4"
        "epochs": 100,  # "The total number of training epochs is 100"
        "eval_epoch": 100,  # "test accuracy is obtained using the model weights at the epoch of 100"
        "shots": 16,  # "We follow the few-shot learning setting in CoOp ... The number of shots is 16"
        "runs": 3,  # "the result is averaged over 3 runs"
    }
    reference_protocol_source: ClassVar[str] = (
        "Adapt paper (shared/papers/adapt.md), Section 4.1 'Experiments': 'Datasets' (16 shots, 3 runs, "
        "L149) and 'Implementation Details' (ViT-B/16, n_k = 80, r_p = 4, batch size 4, lr 2.5e-3, "
        "100 epochs, evaluated at epoch 100, SGD; L153-155)"
    )
    suggested_protocol: ClassVar[dict[str, Any]] = reference_protocol  # alias of the older name

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.prompts = nn.ModuleDict()  # branch -> ParameterList of (xi, width), one per layer
        self._towers: dict[str, Tower] = {}  # plain dict: the method must not own backbone weights
        self._pruner: AdaptPruner | None = None

    # ----- configuration ------------------------------------------------------------------------
    def validate_config(self) -> None:
        c = self.config
        if c.score not in SCORES:
            raise UserError(f"adapt: score must be one of {', '.join(SCORES)}, not {c.score!r}")
        for key in ("image_layers", "text_layers", "image_tokens", "text_tokens", "target_tokens"):
            value = getattr(c, key)
            if value is not None and value < 0:
                raise UserError(f"adapt: {key} must be >= 0, got {value}")
        if not 0.0 <= c.target_fraction <= 1.0:
            raise UserError(f"adapt: target_fraction must be in [0, 1], got {c.target_fraction}")
        if c.warmup_epochs < 0:
            raise UserError(f"adapt: warmup_epochs must be >= 0, got {c.warmup_epochs}")
        if c.accumulation_steps < 1 or c.prune_rate < 1:
            raise UserError("adapt: accumulation_steps and prune_rate must be at least 1")
        if c.init_std < 0:
            raise UserError(f"adapt: init_std must be >= 0, got {c.init_std}")

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return ("image",)  # the text branch is prompted when the backbone has one (CLIP)

    @classmethod
    def check_compatible(cls, backbone_name: str, kind: str, towers: tuple[str, ...]) -> None:
        if "image" in towers or ("encoder" in towers and "decoder" in towers):
            return
        raise UserError(
            f"method 'adapt' prompts an image tower (with CLIP's text tower) or an encoder-decoder's "
            f"encoder and decoder; backbone {backbone_name!r} has {', '.join(towers) or 'no towers'}"
        )

    # ----- attach -------------------------------------------------------------------------------
    def attach(self, backbone: Backbone) -> None:
        c = self.config
        sizes = {"image": (c.image_layers, c.image_tokens), "text": (c.text_layers, c.text_tokens)}
        if "image" not in backbone.towers and not {"encoder", "decoder"} <= set(backbone.towers):
            raise UserError(
                f"adapt: backbone {backbone.name!r} has neither an image tower nor an encoder and decoder "
                f"(it has {', '.join(backbone.tower_names)})"
            )
        for role in BRANCHES:
            found = [t for t in BRANCH_TOWERS[role] if t in backbone.towers]
            if not found:
                continue
            branch = found[0]
            tower = backbone.tower(branch)
            layers, tokens = min(sizes[role][0], tower.depth), sizes[role][1]
            if layers == 0 or tokens == 0:
                continue
            self.prompts[branch] = nn.ParameterList(
                nn.Parameter(torch.randn(tokens, tower.layer_width(layer)) * c.init_std)
                for layer in range(layers)
            )
            self.register_buffer(f"mask_{branch}", torch.ones(layers, tokens, dtype=torch.bool))
            self._towers[branch] = tower
        if not self.prompts:
            raise UserError("adapt: no prompt tokens to attach (all layer/token counts are 0)")
        self._bind_slots()

    def _bind_slots(self) -> None:
        """Point each layer's ``kv_residual`` slot at its prompt parameter and mask row (views of the
        mask buffer, so pruning in place is seen at once)."""
        for branch, params in self.prompts.items():
            tower, mask = self._towers[branch], self.mask(branch)
            for layer, p in enumerate(cast(nn.ParameterList, params)):
                tower.slots[layer].kv_residual = MaskedTokens(p, mask[layer])

    def _apply(self, fn: Any, recurse: bool = True) -> Adapt:
        # ``.to(device)`` replaces buffer objects: re-point the slots at the moved masks.
        out = super()._apply(fn, recurse)
        if self._towers:
            self._bind_slots()
        return out

    # ----- state --------------------------------------------------------------------------------
    @property
    def branches(self) -> list[str]:
        return [b for b in ORDER if b in self.prompts]

    def mask(self, branch: str) -> torch.Tensor:
        """The binary mask M(t) of ``branch``: bool (layers, xi), True = active."""
        return getattr(self, f"mask_{branch}")

    def prompt(self, branch: str) -> torch.Tensor:
        """P of ``branch`` as one (layers, xi, width) tensor (a stacked copy, for inspection)."""
        return torch.stack([p.detach() for p in cast(nn.ParameterList, self.prompts[branch])])

    def initial_tokens(self) -> int:
        """Prompt slots attached over all branches (layers x xi each): the active total before pruning."""
        return sum(int(self.mask(b).numel()) for b in self.branches)

    def target_tokens(self) -> int:
        """The effective target ``T_target``: ``config.target_tokens`` when set, else
        ``floor(target_fraction * initial_tokens + 0.5)`` (round half up)."""
        c = self.config
        if c.target_tokens is not None:
            return int(c.target_tokens)
        return int(math.floor(c.target_fraction * self.initial_tokens() + 0.5))

    def pruning_steps_needed(self) -> int:
        """Pruning events needed to go from the initial tokens to the target."""
        excess = self.initial_tokens() - self.target_tokens()
        return max(0, math.ceil(excess / self.config.prune_rate))

    def steps_needed(self, steps_per_epoch: int) -> int:
        """Optimisation steps (counted from 1) an uninterrupted run needs to reach the target: the
        first prune is at the first multiple of ``accumulation_steps`` in epoch ``warmup_epochs``
        or later, then one every ``accumulation_steps`` steps."""
        c, events = self.config, self.pruning_steps_needed()
        if events == 0:
            return 0
        first_allowed = c.warmup_epochs * steps_per_epoch + 1  # first step of the first pruning epoch
        first = math.ceil(first_allowed / c.accumulation_steps) * c.accumulation_steps
        return first + (events - 1) * c.accumulation_steps

    def active_tokens(self) -> dict[str, int]:
        return {b: int(self.mask(b).sum()) for b in self.branches}

    def active_total(self) -> int:
        return sum(self.active_tokens().values())

    def num_trainable_parameters(self) -> int:
        total = 0
        for branch in self.branches:
            tower, per_layer = self._towers[branch], self.mask(branch).sum(dim=1)
            total += sum(tower.layer_width(layer) * int(n) for layer, n in enumerate(per_layer))
        return total

    def context_lengths(self) -> dict[str, list[int]]:
        return {b: [int(n) for n in self.mask(b).sum(dim=1)] for b in self.branches}

    # ----- pruning ------------------------------------------------------------------------------
    def token_scores(self) -> dict[str, torch.Tensor]:
        """This step's saliency per token (layers, xi) per branch (Eq. 6), from the current grads."""
        kind = self.config.score
        out = {}
        for branch, params in self.prompts.items():
            rows = []
            for p in cast(nn.ParameterList, params):
                value = p.detach()
                if kind == "l2":
                    rows.append(value.abs().sum(-1))
                elif p.grad is None:  # the layer took no part in this step (e.g. fully pruned)
                    rows.append(torch.zeros(value.shape[0], device=value.device, dtype=value.dtype))
                elif kind == "grad":
                    rows.append(p.grad.abs().sum(-1))
                else:
                    rows.append((p.grad * value).abs().sum(-1))
            out[branch] = torch.stack(rows).float()
        return out

    @torch.no_grad()
    def prune_lowest(self, scores: dict[str, torch.Tensor], count: int) -> list[tuple[str, int, int]]:
        """Prune up to ``count`` active tokens with the lowest score across all branches, never below
        the effective target (:meth:`target_tokens`). Ties: image (encoder) before text (decoder),
        then layer, then token index. Returns the pruned (branch, layer, token) in pruning order."""
        count = min(count, self.active_total() - self.target_tokens())
        if count <= 0:
            return []
        flat: list[torch.Tensor] = []
        active: list[torch.Tensor] = []
        where: list[tuple[str, int, int]] = []
        for branch in self.branches:
            s = scores[branch].detach().to("cpu", torch.float64)
            mask = self.mask(branch).cpu()
            if s.shape != mask.shape:
                raise ValueError(
                    f"scores for {branch} have shape {tuple(s.shape)}, expected {tuple(mask.shape)}"
                )
            flat.append(s.flatten())
            active.append(mask.flatten())
            where.extend(
                (branch, layer, token) for layer in range(mask.shape[0]) for token in range(mask.shape[1])
            )
        values = torch.cat(flat).masked_fill(~torch.cat(active), float("inf"))
        order = torch.sort(values, stable=True).indices[:count].tolist()
        pruned = [where[i] for i in order]
        for branch, layer, token in pruned:
            self.mask(branch)[layer, token] = False
        return pruned

    def callbacks(self) -> list[Callback]:
        if self._pruner is None:
            self._pruner = AdaptPruner(self)
        return [self._pruner]

    @classmethod
    def plot_description(cls, description: dict[str, Any], path: Any) -> Path:
        return plot_context_lengths(description, path)

    def describe(self) -> dict[str, Any]:
        """Final per-layer context lengths and masks, the effective target and whether pruning
        reached it (with a ``warning`` when it did not), and the prune history."""
        c = self.config
        pruner = self._pruner
        active, target = self.active_total(), self.target_tokens()
        reached = active <= target
        history = pruner.history if pruner is not None else []
        out: dict[str, Any] = {
            "context_lengths": self.context_lengths(),  # final, per branch per layer
            "masks": {b: self.mask(b).int().tolist() for b in self.branches},
            "depths": {b: int(self.mask(b).shape[0]) for b in self.branches},  # prompted layers
            "active_tokens": self.active_tokens(),
            "active_total": active,
            "initial_tokens": self.initial_tokens(),
            "target_tokens": target,  # effective
            "target_source": (
                "target_tokens" if c.target_tokens is not None else f"target_fraction={c.target_fraction:.6g}"
            ),
            "reached_target": reached,
            "pruning_steps": len({int(h[0]) for h in history}),  # pruning events that removed tokens
            "pruning_steps_needed": self.pruning_steps_needed(),
            "score": c.score,
            "widths": {b: self._towers[b].width for b in self.branches},
        }
        steps_per_epoch = pruner.steps_per_epoch if pruner is not None else 0
        if pruner is not None:
            out["steps_run"] = pruner.last_step
        if steps_per_epoch > 0:
            out["steps_needed"] = self.steps_needed(steps_per_epoch)
        if not reached:
            out["warning"] = self._shortfall_warning(active, target, pruner)
        if pruner is not None:
            out["pruned"] = [list(item) for item in history]  # [step, branch, layer, token]
        return out

    def _shortfall_warning(self, active: int, target: int, pruner: AdaptPruner | None) -> str:
        c = self.config
        head = f"pruning stopped at {active} tokens, above the target {target}"
        if pruner is None or pruner.last_step == 0:
            return f"{head}: no training step ran"
        spe = pruner.steps_per_epoch
        if spe <= 0:
            return (
                f"{head}: the run had too few steps ({pruner.last_step} steps; "
                f"{self.pruning_steps_needed()} pruning steps of {c.accumulation_steps} steps each are "
                f"needed after {c.warmup_epochs} warmup epochs)"
            )
        warm = c.warmup_epochs * spe
        needed = self.steps_needed(spe)
        return (
            f"{head}: the run had too few steps after warmup ({max(0, pruner.last_step - warm)} steps, "
            f"{needed - warm} needed: {self.pruning_steps_needed()} pruning steps of {c.prune_rate} tokens, "
            f"one every {c.accumulation_steps} steps after {c.warmup_epochs} warmup epochs of {spe} steps; "
            f"train at least {math.ceil(needed / spe)} epochs, or lower accumulation_steps or warmup_epochs)"
        )


class AdaptPruner(Callback):
    """Algorithm 1's score accumulation and pruning; its state is checkpointed so a resumed run
    prunes exactly as an uninterrupted one."""

    def __init__(self, method: Adapt) -> None:
        self.method = method
        self.scores: dict[str, torch.Tensor] | None = None  # accumulated (layers, xi) per branch
        self.accumulated = 0  # steps in the current window that added scores
        self.history: list[tuple[int, str, int, int]] = []  # (step, branch, layer, token) per pruned token
        self.last_step = 0  # the last optimisation step seen (counted from 1): the steps the run had
        self.steps_per_epoch = 0  # from the trainer's context (0: unknown)

    def reset(self) -> None:
        self.scores = None
        self.accumulated = 0

    def on_train_start(self, ctx: Any) -> None:
        self.steps_per_epoch = int(getattr(ctx, "steps_per_epoch", 0) or 0)

    def after_backward(self, ctx: Any) -> None:
        m = self.method
        if m.active_total() <= m.target_tokens():
            return
        delta = m.token_scores()
        if self.scores is None:
            self.scores = {b: torch.zeros_like(s) for b, s in delta.items()}
        for b, s in delta.items():
            acc = self.scores[b]
            if acc.device != s.device:
                acc = self.scores[b] = acc.to(s.device)
            acc += s
        self.accumulated += 1

    def on_step_end(self, ctx: Any) -> None:
        step = int(ctx.step)  # steps completed, counted from 1 here
        self.last_step = max(self.last_step, step)
        if step % self.method.config.accumulation_steps != 0:
            return
        if int(ctx.epoch) >= self.method.config.warmup_epochs and self.scores is not None:
            for branch, layer, token in self.method.prune_lowest(self.scores, self.method.config.prune_rate):
                self.history.append((step, branch, layer, token))
        self.reset()

    def state_dict(self) -> dict[str, Any]:
        scores = (
            None if self.scores is None else {b: s.detach().cpu().clone() for b, s in self.scores.items()}
        )
        return {
            "scores": scores,
            "accumulated": self.accumulated,
            "history": [list(h) for h in self.history],
            "last_step": self.last_step,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = state.get("scores")
        self.scores = None if scores is None else {b: s.clone().float() for b, s in scores.items()}
        self.accumulated = int(state.get("accumulated", 0))
        self.history = [tuple(h) for h in state.get("history", [])]
        self.last_step = int(state.get("last_step", 0))
        self.steps_per_epoch = int(state.get("steps_per_epoch", 0))


def context_length_series(describe: dict[str, Any]) -> dict[str, list[int]]:
    """Active tokens per prompted layer of each branch, from the masks of :meth:`Adapt.describe`
    (one entry per attached layer: the masks have exactly the backbone's prompted layers)."""
    masks = describe.get("masks") or {}
    return {branch: [int(sum(row)) for row in mask] for branch, mask in masks.items()}


def mask_snapshots(describe: dict[str, Any], count: int = 4) -> list[tuple[int, dict[str, list[list[int]]]]]:
    """The binary masks of every branch at up to ``count`` points of the pruning process (the paper's
    Figure 3): before the first pruning step, evenly spaced pruning steps, and the last one, rebuilt
    from the recorded prune history (``[step, branch, layer, token]``) over all-active masks.

    Each entry is (training step, masks). When there is no history, or the history does not rebuild
    the stored final masks (a record from before the history was kept), only the final masks are
    returned, at the last step run."""
    final = describe.get("masks") or {}
    history = [tuple(int(v) if i != 1 else v for i, v in enumerate(h)) for h in describe.get("pruned") or []]
    last = int(describe.get("steps_run", 0))
    if not history:
        return [(last, final)]
    current = {b: [[1] * len(row) for row in mask] for b, mask in final.items()}
    steps = sorted({h[0] for h in history})
    wanted = {steps[round(i * (len(steps) - 1) / max(1, count - 2))] for i in range(max(1, count - 1))}
    snapshots = [(0, {b: [row[:] for row in m] for b, m in current.items()})]
    for step in steps:
        for _, branch, layer, token in (h for h in history if h[0] == step):
            if branch not in current or layer >= len(current[branch]) or token >= len(current[branch][layer]):
                return [(last, final)]
            current[branch][layer][token] = 0
        if step in wanted:
            snapshots.append((step, {b: [row[:] for row in m] for b, m in current.items()}))
    if current != final:
        return [(last, final)]
    return snapshots


def _pruning_steps(describe: dict[str, Any]) -> int:
    if "pruning_steps" in describe:
        return int(describe["pruning_steps"])
    return len({int(h[0]) for h in describe.get("pruned") or []})  # records from before the field


def draw_context_lengths(describe: dict[str, Any]) -> tuple[Any, dict[str, list[int]]]:
    """Draw the paper's Figure 3 from :meth:`Adapt.describe`: the final per-layer context lengths of
    every branch (layers on x, active tokens on y, one bar series per branch, with a legend) above
    each branch's binary mask (rows = layers, columns = token index; dark = active) at points of the
    pruning process (:func:`mask_snapshots`: before pruning, evenly spaced pruning steps, the end),
    titled with the active total, the target and the number of pruning steps.

    Returns the figure and the series as drawn (bar heights read back from the axes), per branch.
    Needs matplotlib (``pip install matplotlib``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UserError("plotting Adapt masks needs matplotlib: pip install matplotlib") from None
    masks = describe.get("masks") or {}
    if not masks:
        raise UserError(
            "describe() output has no 'masks' to plot; pass Adapt.describe() of an attached method"
        )
    series = context_length_series(describe)
    depth = max(len(v) for v in series.values())
    xi = max((len(mask[0]) for mask in masks.values() if mask), default=1)
    snapshots = mask_snapshots(describe)
    fig_width = max(6.0, 0.45 * depth * len(series) + 2.0, 2.6 * len(snapshots))
    fig = plt.figure(figsize=(fig_width, 4.0 + 2.4 * len(masks)))
    grid = fig.add_gridspec(1 + len(masks), len(snapshots), height_ratios=[1.3] + [1.0] * len(masks))
    bars_ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(series)
    containers = {}
    for i, (branch, lengths) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        containers[branch] = bars_ax.bar(
            [layer + 1 + offset for layer in range(len(lengths))],
            lengths,
            width=width,
            label=f"{branch}: {sum(lengths)} active tokens, {len(lengths)} layers",
        )
    bars_ax.set_xticks(range(1, depth + 1))
    bars_ax.set_xlim(0.4, depth + 0.6)
    bars_ax.set_ylim(0, xi + 0.5)
    bars_ax.set_xlabel("layer (prompt depth)")
    bars_ax.set_ylabel("active context tokens")
    cast(MaxNLocator, bars_ax.yaxis.get_major_locator()).set_params(integer=True)
    bars_ax.legend(loc="upper right", fontsize=8)
    for row, branch in enumerate(masks, start=1):  # rows: branches; columns: points of the pruning
        for col, (step, snapshot) in enumerate(snapshots):
            ax = fig.add_subplot(grid[row, col])
            values = torch.tensor(snapshot[branch], dtype=torch.float32).reshape(len(snapshot[branch]), -1)
            ax.imshow(values.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_title(f"{branch} M(t), step {step}: {int(values.sum())} active", fontsize=8)
            ax.set_xlabel("token index", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            ax.set_yticks(range(values.shape[0]))
            ax.set_yticklabels([str(i + 1) for i in range(values.shape[0])])
            ax.tick_params(labelsize=6)
    total = describe.get("active_total", sum(sum(v) for v in series.values()))
    target = describe.get("target_tokens")
    reached = describe.get("reached_target", target is not None and total <= target)
    initial = describe.get("initial_tokens", sum(len(m) * len(m[0]) for m in masks.values() if m))
    fig.suptitle(
        f"Adapt context lengths per layer\n{total} of {initial} tokens active, target {target} "
        f"({'reached' if reached else 'not reached'}), {_pruning_steps(describe)} pruning steps",
        fontsize=11,
    )
    fig.tight_layout()
    drawn = {b: [int(round(patch.get_height())) for patch in c.patches] for b, c in containers.items()}
    return fig, drawn


def plot_context_lengths(describe: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`draw_context_lengths`'s figure as a PNG at ``path`` and return the path."""
    fig, _ = draw_context_lengths(describe)  # checks matplotlib and the masks first
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
