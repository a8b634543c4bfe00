"""Tasks that output a class label: an image classifier (backbone + method + head), cross-entropy
on the labels plus the method's extra loss, accuracy-type metrics, pixel-space FGSM (ART).

The head is the method's own (CoOp's prompt learner), else a text head on CLIP (class names through
the templates), else a linear one. With the image tower frozen (no method parameter in it) image
features are computed once and reused by training and scoring (DESIGN section 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead, TextClassifierHead
from petlbench.backbones.registry import build_backbone
from petlbench.benchmarks.augment import get_augmentation
from petlbench.benchmarks.data import TaskData, TensorImageDataset
from petlbench.benchmarks.fewshot import few_shot_splits
from petlbench.benchmarks.metrics import get_metric
from petlbench.errors import UserError
from petlbench.methods.base import LossContext, Method, frozen_backbone

from ..building import attach_method, out_of_memory_as_user_error, refuse_nothing_to_train
from ..data import iter_pixels, materialize, to_pixels
from ..flops import image_gmacs, text_gmacs_per_prompt
from ..robustness import DEFAULT_EPSILONS, fgsm
from ..trainer import Trainer, TrainResult
from .base import Batches, Evaluation, Objective, Splits, seed_everything, train_split_name


def head_for(
    method: Method, backbone: Backbone, class_names: Sequence[str], templates: Sequence[str]
) -> nn.Module:
    """The method's own head if it builds one (CoOp), else a text head on CLIP, a linear one elsewhere."""
    custom = method.make_head(backbone, list(class_names), list(templates))
    if custom is not None:
        return custom
    kind = method.head
    if kind == "auto":
        kind = "text" if backbone.kind == "clip" else "linear"
    if kind == "text":
        return TextClassifierHead(backbone, list(class_names), list(templates))
    return LinearHead(backbone.feature_dim, len(class_names))


def measure_cost(backbone: Backbone, method: Method, head: nn.Module) -> dict[str, Any]:
    """GMACs per image (fvcore convention, see harness/flops.py), and the text tower's cost per
    class prompt with how the method really runs it (once and cached, or per image)."""
    cost: dict[str, Any] = {"unit": "GMACs", "image_size": backbone.image_size}
    cost["image_gmacs"] = image_gmacs(backbone, method)
    if backbone.kind == "clip":
        per_prompt = text_gmacs_per_prompt(backbone, method, head)
        prompts = int(getattr(head, "token_ids", torch.empty(0)).shape[0]) or None
        cost["text_gmacs_per_prompt"] = per_prompt
        cost["text_prompts"] = prompts
        if method.needs_text_encoder_per_image:
            cost["text_runs"] = "per image"
        elif backbone.tower("text").has_trainable_parameters() or (
            not isinstance(head, LinearHead) and any(p.requires_grad for p in head.parameters())
        ):  # prompts in the text tower's slots, or in a head that runs the text tower (CoOp)
            cost["text_runs"] = "per step in training, once at inference"
        else:
            cost["text_runs"] = "once (cached)"
    return cost


@torch.no_grad()
def image_features(
    model: ImageClassifier, data: TensorImageDataset, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Image features of every example, in float32 on ``device`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    feats = []
    for pixels in iter_pixels(data, device, batch_size):  # a cached split streams from disk
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats.append(model.features(pixels).float())
    model.train(was_training)
    return torch.cat(feats)


@torch.no_grad()
def predict(
    model: ImageClassifier,
    data: TensorImageDataset,
    device: torch.device,
    batch_size: int,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predicted labels for every example (eval mode, no grad, bf16 autocast on GPU). With
    ``features`` (cached image features of ``data``) only the head runs."""
    was_training = model.training
    model.eval()
    preds = []
    inputs = (
        (features[start : start + batch_size] for start in range(0, len(data), batch_size))
        if features is not None
        else iter_pixels(data, device, batch_size)  # a cached split streams from disk
    )
    for x in inputs:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model.head(x) if features is not None else model(x)
        preds.append(logits.argmax(dim=-1))  # on device: no sync per batch, the next one is read meanwhile
    model.train(was_training)
    return torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.long)


def build_classifier(
    backbone_name: str,
    method_name: str,
    method_config: dict[str, Any],
    *,
    pretrained: bool,
    class_names: list[str],
    templates: list[str],
) -> tuple[ImageClassifier, Method]:
    """Backbone + attached method + the method's head for ``class_names``: the task model of a
    classification run, and the model ``bench perf`` times (the one way both build it)."""
    backbone = build_backbone(backbone_name, pretrained=pretrained)
    method = attach_method(method_name, method_config, backbone)
    with out_of_memory_as_user_error(f"the head of {method_name!r} on {backbone_name}"):
        head = head_for(method, backbone, class_names, templates)
    return ImageClassifier(backbone, head, method), method


def pixel_batches(split: TensorImageDataset, batch_size: int, device: torch.device) -> Batches:
    """One pass over ``split`` in order, as (pixels, labels) on ``device``: what a stage's ``prepare``
    hook reads (E²VPT's gate importance, Tip-Adapter's cache)."""

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(split), batch_size):
            yield (
                to_pixels(split.images[start : start + batch_size], device),
                split.labels[start : start + batch_size].to(device),
            )

    return batches


def fit_classifier(
    trainer: Trainer,
    model: ImageClassifier,
    train: TensorImageDataset,
    evaluate: Callable[[], dict[str, float]] | None = None,
    *,
    augmentation: str = "none",
    cache_features: bool = False,
    eval_batch_size: int = 256,
) -> TrainResult:
    """Train a classifier on ``train`` with cross-entropy on its labels, plus the method's
    :meth:`Method.extra_loss` when it has one (a :class:`LossContext` with the batch's logits,
    features and, on demand, the frozen backbone's features, cached per example when the images
    are the same every epoch).

    ``cache_features`` says the image tower carries no trainable parameter: its features cannot
    change, so they are computed once and the head trains on them. Augmented images change every
    epoch, so then the frozen tower runs every step (without autograd), as the references do.
    ``augmentation`` (petlbench.benchmarks.augment) draws from the trainer's per-epoch generator."""
    if len(train) == 0:
        raise ValueError("empty training set")
    device, method = trainer.device, trainer.method
    augment = get_augmentation(augmentation)
    augments = augment.name != "none"
    frozen_image_tower = cache_features
    model.to(device)
    out_size = int(getattr(model.backbone, "image_size", train.images.shape[-1]))

    def pixels(idx: torch.Tensor) -> torch.Tensor:
        images = train.images[idx]
        if augments:
            images = augment(images, trainer.data_generator, out_size)
        return to_pixels(images, device)

    features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    if cache_features and not augments:
        cached = image_features(model, train, device, eval_batch_size)

        def features(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return cached[idx.to(cached.device)], torch.empty(0)
    elif frozen_image_tower:

        def features(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            px = pixels(idx)
            with torch.no_grad():  # frozen tower, augmented input: no autograd graph to keep
                return model.features(px), px
    else:

        def features(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            px = pixels(idx)
            return model.features(px), px

    extra = method.has_extra_loss()
    teacher_cache: dict[int, torch.Tensor] = {}  # frozen features per example (fixed images only)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        labels = train.labels[idx].to(device)
        feats, px = features(idx)
        logits = model.head(feats)
        loss = F.cross_entropy(logits.float(), labels)
        if not extra:
            return loss

        def frozen() -> torch.Tensor:
            if frozen_image_tower:  # the method leaves the image tower as it is
                return feats.detach()
            if not augments and all(int(i) in teacher_cache for i in idx):
                return torch.stack([teacher_cache[int(i)] for i in idx])
            with torch.no_grad(), frozen_backbone(model.backbone):
                out = model.features(px)
            if not augments:
                for i, f in zip(idx.tolist(), out, strict=True):
                    teacher_cache[i] = f
            return out

        term = method.extra_loss(
            LossContext(logits, labels, feats, model.head, idx, trainer.epoch, trainer.step, frozen)
        )
        return loss if term is None else loss + term.float()

    return trainer.fit(len(train), batch_loss, evaluate)


class ClassificationObjective(Objective):
    """Image -> class label."""

    output = "label"
    model: ImageClassifier
    head: nn.Module

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._features: dict[int, torch.Tensor] = {}
        self._classes = len(self.task.class_names or self.data.class_names)
        self.metric = get_metric(self.task.metric)

    @property
    def metric_name(self) -> str:
        return self.task.metric

    def check(self) -> None:
        if self.spec.measure.get("test_by_epoch") and self.data.meta.get("eval_class_names"):
            raise UserError(
                f"task {self.spec.task!r} is base-to-new: its test classes get a head only after training, "
                "so there is no test score per epoch (--test-by-epoch)"
            )

    def build(self) -> ImageClassifier:
        spec, data, task = self.spec, self.data, self.task
        seed_everything(spec.seed)
        class_names = list(task.class_names) if task.class_names else data.class_names
        model, method = build_classifier(
            spec.backbone,
            spec.method,
            spec.method_config,
            pretrained=spec.pretrained,
            class_names=class_names,
            templates=list(task.templates),
        )
        refuse_nothing_to_train(spec, model)
        self.model, self.backbone, self.method, self.head = model, model.backbone, method, model.head
        model.to(self.device)
        return self.model

    def splits(self) -> Splits:
        """Few-shot picks are made on labels alone, so only the picked images are ever decoded; an
        augmentation that crops from a larger image gets the same picks decoded larger."""
        self.refuse_leakage()
        protocol, spec, data = self.protocol, self.spec, self.data
        size, interp = self.backbone.image_size, self.backbone.interpolation
        cache = self.context.image_cache
        train_name = train_split_name(spec, protocol)
        train_split, selection_split = few_shot_splits(
            data, train_name, protocol.selection_split, protocol.shots, spec.seed
        )
        decode = get_augmentation(protocol.augmentation).decode_size(size)
        if decode != size:  # the same picks (labels and seed are the same), decoded larger to crop from
            larger = self.context.load_task(self.task, decode)
            assert isinstance(larger, TaskData)  # the same task as self.data, decoded larger
            train_split, _ = few_shot_splits(
                larger, train_name, protocol.selection_split, protocol.shots, spec.seed
            )
        train = materialize(train_split, decode, interp, cache=cache)
        selection = materialize(selection_split, size, interp, cache=cache, stream=True)
        return Splits(train, selection, selection if self.searching else self.evaluation_split())

    def evaluation_split(self) -> TensorImageDataset:
        backbone = self.backbone
        split = self.data.split(self.protocol.eval_split)
        return materialize(
            split, backbone.image_size, backbone.interpolation, cache=self.context.image_cache, stream=True
        )

    def model_head(self) -> nn.Module:
        return self.model.head  # after a base-to-new evaluation, the head of the new classes

    @property
    def feature_cache(self) -> bool:
        return not self.backbone.tower("image").has_trainable_parameters()

    def fit(self, trainer: Trainer, train: Any, evaluate: Callable[[], dict[str, float]]) -> TrainResult:
        return fit_classifier(
            trainer,
            self.model,
            train,
            evaluate,
            augmentation=self.protocol.augmentation,
            cache_features=self.feature_cache,
            eval_batch_size=self.protocol.eval_batch_size,
        )

    def batches(self, train: Any) -> Batches:
        return pixel_batches(train, self.protocol.batch_size, self.device)

    def selection_batches(self, selection: Any) -> Batches | None:
        return pixel_batches(selection, self.protocol.eval_batch_size, self.device)

    def score(self, split: Any) -> float:
        feats = None
        if self.feature_cache:
            if id(split) not in self._features:
                self._features[id(split)] = image_features(
                    self.model, split, self.device, self.protocol.eval_batch_size
                )
            feats = self._features[id(split)]
        preds = predict(self.model, split, self.device, self.protocol.eval_batch_size, features=feats)
        return float(self.metric(preds, split.labels, self._classes))

    def before_evaluation(self) -> None:
        """Base-to-new (CoCoOp): the model trained on the base classes is tested on new classes, with
        a head built for their names; only a CLIP text head can name classes it was not trained on."""
        eval_names = None if self.searching else self.data.meta.get("eval_class_names")
        if not eval_names:
            return
        eval_head = head_for(self.method, self.backbone, list(eval_names), list(self.task.templates))
        if isinstance(eval_head, LinearHead):
            raise UserError(
                f"task {self.task.name!r} tests on classes unseen in training: it needs a method with a "
                "text head on a CLIP backbone (a linear head cannot name new classes)"
            )
        self.model.head = eval_head.to(self.device)
        self._classes = len(eval_names)

    def evaluate(self, final: Any) -> Evaluation:
        info = {
            "split": self.protocol.selection_split if self.searching else self.protocol.eval_split,
            "feature_cache": self.feature_cache,
        }
        return Evaluation({self.metric_name: self.score(final)}, info)

    def cost(self, final: Any) -> dict[str, Any]:
        return measure_cost(self.backbone, self.method, self.head)

    def attack(self, final: Any, options: dict[str, Any]) -> dict[str, Any]:
        return fgsm(
            self.model,
            final,
            self._classes,
            epsilons=options.get("epsilons") or DEFAULT_EPSILONS,
            device=self.device,
            max_examples=options.get("max_examples"),
        )


__all__ = [
    "ClassificationObjective",
    "fit_classifier",
    "head_for",
    "image_features",
    "measure_cost",
    "predict",
]
