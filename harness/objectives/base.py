"""The part of a run that depends on what the task outputs.

A run is one skeleton (``Runner.execute``): build the task model, pick the splits, train the
method's stages, score the selection and evaluation splits, count parameters and cost, attack,
save. An :class:`Objective` fills in what differs between a task that outputs a class label
(``classification``) and one that outputs text (``seq2seq``: image + text -> text on an
encoder-decoder): how the model is built, what a training batch's loss is, how a split is scored,
what the cost of one example is and how the input is attacked.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.benchmarks.data import TaskData
from petlbench.benchmarks.suites import Protocol, TaskSpec
from petlbench.methods.base import Method

from ..image_cache import ImageCache
from ..leakage import refuse_leakage
from ..spec import RunSpec
from ..trainer import Trainer, TrainResult

if TYPE_CHECKING:  # the OFA task data type, named for typing only
    from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData


@dataclass
class RunContext:
    """What an objective may use of the runner: the device, where data and artifacts are, and the
    runner's loader (cached per task; ``decode_size`` decodes larger for crop augmentations)."""

    device: torch.device
    data_root: Path | None
    image_cache: ImageCache | None
    load_task: Callable[[TaskSpec, int | None], TaskData | Seq2SeqTaskData]
    artifact_path: Callable[[str], Path | None]


@dataclass
class Splits:
    """The three splits of a run as the objective's model reads them. ``final`` is the selection
    split in a search trial (stage "search"), which never reads the evaluation split."""

    train: Any
    selection: Any
    final: Any


@dataclass
class Evaluation:
    """The evaluation split's metrics and what the record says about how they were computed."""

    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


Batches = Callable[[], Iterator[Any]]


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators, before the model is built."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_split_name(spec: RunSpec, protocol: Protocol) -> str:
    """A search trial never trains on the split it is scored on: trainval (VTAB's train800val200)
    holds the selection split, so a search trains on train (train800) alone."""
    if spec.stage == "search" and protocol.train_split == "trainval" and protocol.selection_split == "val":
        return "train"
    return protocol.train_split


def count_parameters(method: Method, head: nn.Module | None, backbone: Backbone) -> dict[str, Any]:
    """Trainable parameters the method owns, with and without the head, and percentages with the
    denominator named (DESIGN section 4)."""
    head_params = sum(p.numel() for p in head.parameters() if p.requires_grad) if head is not None else 0
    own = method.num_trainable_parameters()
    total = backbone.num_parameters()
    out: dict[str, Any] = {
        "method": own,
        "head": head_params,
        "with_head": own + head_params,
        "backbone_total": total,
        "percent_of_backbone": 100.0 * own / total,
        "denominator": "all backbone parameters",
    }
    if backbone.kind == "clip":
        no_emb = backbone.num_parameters(exclude=["towers.text.token_embedding"])
        out["backbone_without_token_embedding"] = no_emb
        out["percent_of_backbone_without_token_embedding"] = 100.0 * own / no_emb
    return out


class Objective(ABC):
    """One kind of task output. Built per run; :meth:`build` makes the task model, after which
    ``model``, ``backbone``, ``method`` and ``head`` (None where the model has none) are set."""

    output: ClassVar[str]  # what the task outputs: "label" or "text"

    model: nn.Module
    backbone: Backbone
    method: Method
    head: nn.Module | None

    def __init__(self, context: RunContext, spec: RunSpec, task: TaskSpec, data: Any) -> None:
        self.context = context
        self.device = context.device
        self.spec = spec
        self.task = task
        self.data = data
        self.protocol = Protocol(**spec.protocol)
        self.searching = spec.stage == "search"

    @property
    @abstractmethod
    def metric_name(self) -> str:
        """The task metric's name (the key of its value in the run's metrics)."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Refuse options that cannot work before anything is built or trained."""

    @abstractmethod
    def build(self) -> nn.Module:
        """Backbone + method (attached, freshly initialised under the run's seed) + head, on device."""

    def refuse_leakage(self) -> None:
        protocol = self.protocol
        splits = (train_split_name(self.spec, protocol), protocol.selection_split)
        refuse_leakage(self.task, self.context.data_root, splits, protocol.eval_split)

    @abstractmethod
    def splits(self) -> Splits:
        """The run's splits (leakage between them refused first)."""

    @abstractmethod
    def evaluation_split(self) -> Any:
        """The protocol's evaluation split as the model reads it (``splits().final`` outside a search)."""

    def model_head(self) -> nn.Module | None:
        """The head the trained model scores with, saved beside the method's state."""
        return self.head

    @property
    def feature_cache(self) -> bool:
        """Whether training and scoring reuse image features computed once (a frozen image tower)."""
        return False

    @abstractmethod
    def fit(self, trainer: Trainer, train: Any, evaluate: Callable[[], dict[str, float]]) -> TrainResult:
        """Train one stage on ``train`` with this objective's loss."""

    @abstractmethod
    def batches(self, train: Any) -> Batches:
        """One pass over ``train`` as the model reads it (a stage's ``prepare`` hook uses it)."""

    def selection_batches(self, selection: Any) -> Batches | None:
        """One pass over the selection split, for a ``prepare`` hook that chooses on it; None where
        the objective offers none."""
        return None

    def train_info(self) -> dict[str, Any]:
        """What the record's ``train`` block says beyond the loop's figures (the loss, where it is
        not the plain cross-entropy)."""
        return {}

    @abstractmethod
    def score(self, split: Any) -> float:
        """The task metric on a split (the selection metric, per epoch and at the end)."""

    def before_evaluation(self) -> None:  # noqa: B027 - optional hook
        """Anything the evaluation needs that is not part of its time (a head for unseen classes)."""

    @abstractmethod
    def evaluate(self, final: Any) -> Evaluation:
        """The evaluation split's metrics (timed by the caller)."""

    @abstractmethod
    def cost(self, final: Any) -> dict[str, Any]:
        """GMACs of one example (fvcore, the convention of ``harness/flops.py``)."""

    @abstractmethod
    def attack(self, final: Any, options: dict[str, Any]) -> dict[str, Any]:
        """FGSM on ``final`` with the run's ``measure.fgsm`` options."""

    def remeasure_options(self, epsilons: list[float] | None, max_examples: int | None) -> dict[str, Any]:
        """``bench robust``'s options as :meth:`attack` reads them."""
        return {"epsilons": epsilons, "max_examples": max_examples}

    def task_info(self) -> dict[str, Any] | None:
        """The task's format and options, where the record should carry them."""
        return None
