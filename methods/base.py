"""The method interface every tuning method implements (DESIGN section 4).

A method owns its parameters (it is an ``nn.Module``), fills the backbone's slots in
:meth:`Method.attach` and never modifies a backbone weight (full fine-tuning is the one declared
exception). Everything a harness needs to refuse an impossible pairing or to cache frozen work is
declared as class attributes.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.slots import LayerSlots, TowerSlots
from petlbench.backbones.tower import Tower
from petlbench.errors import UserError

MAX_TOKENS = 4096  # tokens / prompts / prefixes per layer: more than any sequence a backbone here takes
MAX_WIDTH = 16384  # bottleneck, rank or hidden widths: far above every backbone width (<= 1280 here)
MAX_LAYERS = 1024

_Attach = typing.TypeVar("_Attach", bound=Callable[..., None])  # a Method's attach(self, backbone)


@dataclass
class StageContext:
    """What a stage's ``prepare`` hook may use (e.g. E²VPT's importance pass before pruning)."""

    model: nn.Module  # the ImageClassifier: pixels in [0, 1] -> logits
    method: Method
    device: torch.device
    seed: int
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # one pass: (pixels, labels) on device
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # results of finished stages by name
    # One pass over the selection split (pixels, labels), for methods that choose a setting on it
    # before the model is scored (Tip-Adapter's alpha/beta search); None where the run has none.
    selection_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None


@dataclass
class LossContext:
    """What :meth:`Method.extra_loss` sees for one training batch.

    ``features`` are the image features the head received (with the method's image-side slots, so
    they carry gradients when the image tower is prompted); ``logits`` the head's output on them.
    ``frozen_image_features()`` gives the frozen backbone's features of the same images (every slot
    emptied, :func:`frozen_backbone`), computed without autograd, and cached per training example
    by the trainer when the images are the same every epoch (no augmentation), or equal to
    ``features`` when the method leaves the image tower untouched; it is only computed if called.
    """

    logits: torch.Tensor  # (B, C)
    labels: torch.Tensor  # (B,)
    features: torch.Tensor  # (B, D)
    head: nn.Module
    index: torch.Tensor  # (B,) positions of the batch's examples in the training set
    epoch: int
    step: int
    frozen_image_features: Callable[[], torch.Tensor]


@contextlib.contextmanager
def frozen_backbone(backbone: Backbone) -> Iterator[Backbone]:
    """The backbone as it was before any method attached: every tower's per-layer slots, its
    tower-level slots (SSF's scale and shift after the patch embedding and the final norm) and
    CLIP's ``token_embeddings`` slot are emptied for the duration and restored afterwards, so a
    frozen teacher (KgCoOp's hand-crafted text features, PromptSRC's zero-shot features) runs
    through the same modules the method modifies. Weights a method merged in place (LoRA ``merge``)
    are not undone: merging happens after training, when no teacher is asked for."""
    saved = []
    for tower in map(backbone.tower, backbone.tower_names):
        saved.append((tower, tower.slots, tower.tower_slots, getattr(tower, "token_embeddings", None)))
        tower.slots = [LayerSlots() for _ in tower.slots]
        tower.tower_slots = TowerSlots()
        if hasattr(tower, "token_embeddings"):
            tower.set_slot(None, "token_embeddings", None)
    try:
        yield backbone
    finally:
        for tower, slots, tower_slots, token_embeddings in saved:
            tower.slots = slots
            tower.tower_slots = tower_slots
            if hasattr(tower, "token_embeddings"):
                tower.set_slot(None, "token_embeddings", token_embeddings)


@torch.no_grad()
def frozen_class_features(
    backbone: Backbone, class_names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Hand-crafted class text features (C, D) of the frozen CLIP (no method slots): each class's
    template prompts normalised, averaged over templates and normalised again, as zero-shot CLIP
    and the text head form them (one template: just its normalised feature). Computed once where a
    method's head is built, since neither the frozen tower nor the class names change."""
    from petlbench.backbones.heads import TextClassifierHead

    with frozen_backbone(backbone):
        head = TextClassifierHead(backbone, list(class_names), list(templates))
        return head.to(typing.cast(torch.Tensor, backbone.logit_scale).device).class_features().detach()


def dassl_protocol(lr: float, batch_size: int, epochs: int) -> dict[str, Any]:
    """The training protocol of the prompt learners built on KaiyangZhou/Dassl (CoOp, CoCoOp,
    KgCoOp, MaPLe, PromptSRC): SGD with momentum 0.9 and weight decay 5e-4 on 16 shots; the learning
    rate, batch size and epochs are each method's own (its ``suggested_protocol`` cites them)."""
    return {
        "optimizer": "sgd",
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": batch_size,
        "epochs": epochs,
        "shots": 16,
    }


def no_drop_path(method: str, why: str) -> dict[str, str]:
    """The deviation of a method whose reference trains with stochastic depth (drop path) on the
    frozen backbone, which runs here without it; ``why`` says where the reference applies it."""
    return {
        "id": f"{method}-no-drop-path",
        "what": f"The frozen backbone runs without stochastic depth ({why}).",
    }


@dataclass
class Stage:
    """One phase of a method's training (E²VPT: train -> prune -> rewind).

    The harness runs a method's stages in order within one run. Before a stage trains, ``prepare``
    runs (prune, re-initialise, freeze masks...). Each finished stage's state and metrics are kept,
    so a crash resumes in the stage it was in. ``prepare`` must be deterministic given the state
    the previous stage left (it is re-run when a stage resumes).
    """

    name: str
    description: str = ""
    train: bool = True  # False: only ``prepare`` runs (and the model is evaluated)
    epochs: int | None = None  # None: the protocol's epochs
    prepare: Callable[[StageContext], None] | None = None


class Callback:
    """Per-step hooks the trainer calls; state is checkpointed with the method for resume."""

    def on_train_start(self, ctx: Any) -> None: ...
    def after_backward(self, ctx: Any) -> None: ...
    def on_step_end(self, ctx: Any) -> None: ...
    def on_epoch_end(self, ctx: Any) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class EmptyConfig:
    """Methods without options."""


class Method(nn.Module, abc.ABC):
    name: ClassVar[str]
    family: ClassVar[str] = "other"  # baseline | prompt | adapter | reparameterization | selective
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    towers: ClassVar[tuple[str, ...]] = ("image",)  # towers the method may modify
    backbone_kinds: ClassVar[tuple[str, ...] | None] = None  # None: any kind with the towers above
    head: ClassVar[str] = "auto"  # auto (text head on CLIP, linear elsewhere) | linear | text
    trains: ClassVar[bool] = True
    needs_text_encoder_per_image: ClassVar[bool] = False
    # Named ways this implementation departs from the method's reference code, shown with every
    # result of the method ({"id": short-name, "what": one sentence}); empty when exact.
    deviations: ClassVar[tuple[dict[str, str], ...]] = ()
    # Declared ranges of numeric options, checked before anything is built ({option: (lo, hi)},
    # inclusive; a None value is not checked). Sizes are capped where a larger value could only
    # exhaust memory (MAX_TOKENS, MAX_WIDTH), so a typo is refused instead of allocated.
    limits: ClassVar[dict[str, tuple[float, float]]] = {}
    # Backbone weights the method unfreezes and trains in place (BitFit's biases) are copied when it
    # attaches, so :meth:`detach` can put them back; False where that copy would be a whole tower
    # (full fine-tuning), which then cannot be detached.
    copies_unfrozen: ClassVar[bool] = True
    # False where ``attach`` only attaches other methods that record their own (a composition).
    records_attach: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``attach`` a subclass defines is recorded (:func:`_recorded`), so that no method
        needs code of its own to refuse a filled slot or to :meth:`detach`."""
        super().__init_subclass__(**kwargs)
        attach = cls.__dict__.get("attach")
        if attach is not None and cls.records_attach and not getattr(attach, "__isabstractmethod__", False):
            cls.attach = _recorded(attach)  # type: ignore[method-assign]

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.config_from_dict(config)
        elif not isinstance(config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}")
        self.config = config
        self.check_limits()
        self.validate_config()

    # ----- configuration -------------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, values: dict[str, Any]) -> Any:
        """Build the config from JSON-ish values; unknown keys and wrong types are user errors."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = ", ".join(fields) or "(none)"
            raise UserError(f"method {cls.name!r} has no option {', '.join(unknown)}; options: {known}")
        hints = typing.get_type_hints(cls.Config)
        out = {}
        for key, value in values.items():
            out[key] = _coerce(cls.name, key, value, hints.get(key))
        return cls.Config(**out)

    def check_limits(self) -> None:
        """Every option in :attr:`limits` within its range, every float option finite."""
        for f in dataclasses.fields(self.config):
            value = getattr(self.config, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"method {self.name!r}: option {f.name} must be a finite number, got {value}")
        for key, (lo, hi) in self.limits.items():
            value = getattr(self.config, key)
            if value is not None and not lo <= value <= hi:
                raise UserError(
                    f"method {self.name!r}: option {key} must be in [{lo:g}, {hi:g}], got {value:g}"
                )

    def validate_config(self) -> None:
        """Raise UserError for inconsistent options."""

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # ----- pairing ----------------------------------------------------------------------------
    @classmethod
    def check_compatible(cls, backbone_name: str, kind: str, towers: tuple[str, ...]) -> None:
        if cls.backbone_kinds is not None and kind not in cls.backbone_kinds:
            raise UserError(
                f"method {cls.name!r} needs a {' or '.join(cls.backbone_kinds)} backbone; "
                f"{backbone_name!r} is a {kind} backbone"
            )
        needed = cls.required_towers()
        missing = [t for t in needed if t not in towers]
        if missing:
            raise UserError(
                f"method {cls.name!r} needs tower(s) {', '.join(missing)}, which backbone {backbone_name!r} "
                f"does not have (it has {', '.join(towers)})"
            )
        # A method that names no tower works on image features (linear probe): not on a generative
        # encoder-decoder, whose towers it would have to name.
        generative = "encoder" in towers and "decoder" in towers
        if (cls.towers or generative) and not any(t in towers for t in cls.towers):
            raise UserError(
                f"method {cls.name!r} works on tower(s) {', '.join(cls.towers)}; backbone {backbone_name!r} "
                f"has none of them (it has {', '.join(towers)})"
            )
        if cls.head == "text" and "text" not in towers:
            raise UserError(
                f"method {cls.name!r} classifies with a text head; {backbone_name!r} has no text tower"
            )

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return cls.towers

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        """Options whose default differs on a backbone kind (e.g. every tower of an encoder-decoder);
        the harness applies them under the options the user gives, so a run's spec records them."""
        return {}

    # ----- lifecycle --------------------------------------------------------------------------
    @abc.abstractmethod
    def attach(self, backbone: Backbone) -> None:
        """Create parameters and fill the backbone's slots. Must not change a backbone weight."""

    def detach(self) -> None:
        """Empty every slot :meth:`attach` filled and re-freeze (and restore) the backbone weights it
        unfroze: the backbone then computes exactly what it did before, and no parameter of the
        method is reachable from it. Methods that merged their update into the frozen weights refuse
        (LoRA, SSF: unmerging is exact only to float rounding)."""
        record: _Attachment | None = self.__dict__.pop("_attachment", None)
        if record is None:
            raise UserError(f"method {self.name!r} is not attached to a backbone")
        if record.unfrozen and not self.copies_unfrozen:
            self.__dict__["_attachment"] = record
            raise UserError(
                f"method {self.name!r} trains the backbone's own weights and keeps no copy of them: "
                "it cannot be detached (rebuild the backbone)"
            )
        for tower, layer, slot in record.filled:
            tower.set_slot(layer, slot, None)
            record.owners.pop((id(tower), layer, slot), None)
        with torch.no_grad():
            for p, saved in record.unfrozen:
                p.requires_grad_(False)
                p.copy_(saved)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def num_trainable_parameters(self) -> int:
        """Active trainable parameters the method owns (pruning-aware methods override)."""
        return sum(p.numel() for p in self.trainable_parameters())

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module | None:
        """A method-specific head (CoOp's learned prompts, CoCoOp's conditional prompts); None: the
        standard head for ``head`` (text head on CLIP, linear head otherwise). A head maps image
        features (B, D) to logits (B, C); the harness may feed it cached features when the image
        tower carries no trainable parameter."""
        return None

    def callbacks(self) -> list[Callback]:
        return []

    def extra_loss(self, ctx: LossContext) -> torch.Tensor | None:
        """A term added to the cross-entropy of every training batch, or None (the default: plain
        cross-entropy). Regularisers that compare the tuned model with the frozen one read what they
        need from ``ctx`` (see :class:`LossContext`): the batch's logits, labels and image features,
        the head (which may keep the class features it just computed), and the frozen backbone's
        image features of the batch. Fixed teacher outputs (hand-crafted class text features) are
        best computed once where the head is built (:func:`frozen_class_features`). KgCoOp uses it
        for its text-feature distance to the hand-crafted prompts."""
        return None

    @classmethod
    def has_extra_loss(cls) -> bool:
        """True when the method adds a term to the loss (the trainer then builds a LossContext)."""
        return cls.extra_loss is not Method.extra_loss

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def method_state(self) -> dict[str, torch.Tensor]:
        """Method parameters and buffers only (what a checkpoint holds)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """Extra facts recorded with the result (e.g. final per-layer context lengths)."""
        return {}

    @classmethod
    def plot_description(cls, description: dict[str, Any], path: Any) -> Any:
        """Render a stored :meth:`describe` as a figure at ``path`` (``bench show RUN --plot``) and
        return the path written. Methods with a picture worth drawing override this (Adapt: the
        paper's Figure 3, its per-layer context lengths)."""
        raise UserError(f"method {cls.name!r} has no figure to plot")


@dataclass
class _Attachment:
    """What one :meth:`Method.attach` filled: its slots, and the backbone weights it unfroze with a
    copy of their values (empty tensors where the method keeps no copy)."""

    filled: list[tuple[Tower, int | None, str]]
    unfrozen: list[tuple[nn.Parameter, torch.Tensor]]
    owners: dict[tuple[int, int | None, str], str]  # the backbone's: slot -> the method that filled it


def _filled_slots(backbone: Backbone) -> dict[tuple[int, int | None, str], tuple[Tower, Any]]:
    """Every filled slot of the backbone by (tower id, layer, slot), with its tower and value."""
    return {
        (id(tower), layer, slot): (tower, value)
        for tower in map(backbone.tower, backbone.tower_names)
        for (layer, slot), value in tower.filled_slots().items()
    }


def _recorded(attach: _Attach) -> _Attach:
    """``attach`` that records what it filled and unfroze (for :meth:`Method.detach`) and refuses,
    putting the backbone back as it was, a slot another method filled: each slot holds one method's
    contribution, so methods compose only through slots they do not share."""

    @functools.wraps(attach)
    def recorded(self: Method, backbone: Backbone) -> None:
        if self.__dict__.get("_attaching"):  # a subclass's attach calling super().attach
            attach(self, backbone)
            return
        owners: dict[tuple[int, int | None, str], str] = backbone.__dict__.setdefault("_slot_owners", {})
        before = _filled_slots(backbone)
        frozen = [p for p in backbone.parameters() if not p.requires_grad]
        self.__dict__["_attaching"] = True
        try:
            attach(self, backbone)
        finally:
            self.__dict__["_attaching"] = False
        after = _filled_slots(backbone)
        mine = f"{self.name}@{id(self)}"
        taken = [
            k
            for k, (_, v) in before.items()
            if owners.get(k) != mine and after.get(k, (None, None))[1] is not v
        ]
        if taken:
            for key in after.keys() - before.keys():
                tower, _ = after[key]
                tower.set_slot(key[1], key[2], None)
            for key in taken:
                tower, value = before[key]
                tower.set_slot(key[1], key[2], value)
            for p in frozen:
                p.requires_grad_(False)
            _, layer, slot = taken[0]
            where = f"layer {layer}" if layer is not None else "tower level"
            other = owners.get(taken[0], "another method").split("@")[0]
            raise UserError(
                f"method {self.name!r}: slot {slot} ({where}, {before[taken[0]][0].name} tower) is already "
                f"filled by method {other!r}; two methods cannot share a slot"
            )
        filled = [k for k in after if k not in before or owners.get(k) == mine]
        owners.update((key, mine) for key in filled)
        # attach changes no weight, so the values now are the ones to restore
        unfrozen = [
            (p, p.detach().clone() if self.copies_unfrozen else p.new_empty(0))
            for p in frozen
            if p.requires_grad
        ]
        self.__dict__["_attachment"] = _Attachment(
            [(after[k][0], k[1], k[2]) for k in filled], unfrozen, owners
        )

    return typing.cast(_Attach, recorded)


_FALSE_TRUE = {"false": False, "0": False, "no": False, "true": True, "1": True, "yes": True}


def _coerce(method: str, key: str, value: Any, hint: Any) -> Any:
    """Coerce a config value (possibly a CLI string) to the field's type, or raise a UserError."""
    args = typing.get_args(hint)
    optional = type(None) in args
    types_ = (
        [a for a in args if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else [hint]
    )
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
    else:
        for typ in types_:
            origin = typing.get_origin(typ)
            if typ is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in _FALSE_TRUE:
                    return _FALSE_TRUE[value.lower()]
            elif typ in (int, float) and not isinstance(value, bool):
                try:
                    if isinstance(value, str | int) or (typ is float and isinstance(value, float)):
                        return typ(value)
                    if typ is int and isinstance(value, float) and value.is_integer():
                        return int(value)
                except ValueError:
                    pass
            elif typ is str and isinstance(value, str):
                return value
            elif origin in (tuple, list) and isinstance(value, list | tuple | str):
                inner = (typing.get_args(typ) or (str,))[0]
                items = [v for v in value.split(",") if v] if isinstance(value, str) else list(value)
                try:
                    return origin(inner(v) for v in items)
                except ValueError:
                    pass
    raise UserError(f"method {method!r}: option {key}={value!r} is not a valid {hint}")
