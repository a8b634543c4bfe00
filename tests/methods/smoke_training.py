"""Shared by the method tests: a method trained on the smoke suite's ``colors`` task through the
Trainer, with what it was before (its frozen backbone, its validation accuracy) to compare with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.benchmarks.data import TaskData
from petlbench.benchmarks.metrics import accuracy
from petlbench.harness.objectives.classification import fit_classifier, head_for, predict
from petlbench.harness.trainer import TrainConfig, Trainer, TrainResult
from petlbench.methods.base import Method
from petlbench.methods.registry import get_method


@dataclass
class Trained:
    model: ImageClassifier
    method: Method
    before: dict[str, torch.Tensor]  # the backbone's state before training
    result: TrainResult
    before_acc: float  # validation accuracy before and after training
    after_acc: float

    def learned(self, margin: float) -> bool:
        """The loss fell, and validation accuracy rose by more than ``margin`` points."""
        history = self.result.history
        return history[-1]["loss"] < history[0]["loss"] and self.after_acc > self.before_acc + margin

    def val_predictions(self, data: TaskData) -> torch.Tensor:
        return predict(self.model, data.split("val"), torch.device("cpu"), 256)


def train_on(
    data: TaskData,
    method_name: str,
    backbone_name: str,
    config: dict[str, Any] | None = None,
    *,
    epochs: int = 6,
    lr: float = 0.1,
) -> Trained:
    """``method_name`` (options ``config``) on a fresh ``backbone_name`` (seed 0) with its standard head,
    trained ``epochs`` epochs at ``lr``; checks that exactly the method's and the head's parameters train."""
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    method = get_method(method_name)(config or {})
    method.attach(backbone)
    model = ImageClassifier(backbone, head_for(method, backbone, data.class_names, data.templates), method)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in method.trainable_parameters()} | {
        id(p) for p in model.head.parameters() if p.requires_grad
    }
    val = data.split("val")
    before_acc = accuracy(predict(model, val, torch.device("cpu"), 256), val.labels)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=epochs, batch_size=32, lr=lr, warmup_epochs=1, grad_clip=1.0, seed=0),
        head=model.head,
        device=torch.device("cpu"),
    )
    result = fit_classifier(trainer, model, data.split("train"))
    after_acc = accuracy(predict(model, val, torch.device("cpu"), 256), val.labels)
    return Trained(model, method, before, result, before_acc, after_acc)


def backbone_unchanged(trained: Trained) -> bool:
    after = trained.model.backbone.state_dict()
    return after.keys() == trained.before.keys() and all(
        torch.equal(trained.before[k], v) for k, v in after.items()
    )


def trains_all_it_owns(method: Method) -> bool:
    """Every parameter the method owns trains (no frozen part of it goes uncounted)."""
    return {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.parameters()}
