"""Task metrics, by the name suite files give them (``registry.METRICS``): the classification
metrics here, ``fn(predictions, labels, num_classes) -> float`` in percent (0-100) with predictions
and labels as int64 tensors of shape (N,), and the generative ones of ``ofa.py``."""

from __future__ import annotations

import torch

from . import ofa  # noqa: F401 - registers the generative metrics
from .registry import METRICS, MetricEntry, get_metric


def _as_predictions(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept class indices (N,) or scores (N, C) (argmax taken); check the shapes agree."""
    preds = torch.as_tensor(logits_or_preds)
    labels = torch.as_tensor(labels).reshape(-1).long()
    if preds.ndim == 2:
        preds = preds.argmax(dim=1)
    preds = preds.reshape(-1).long()
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        raise ValueError("no examples to score")
    return preds.cpu(), labels.cpu()


def accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """Top-1 accuracy in percent."""
    preds, labels = _as_predictions(logits_or_preds, labels)
    return 100.0 * float((preds == labels).double().mean())


def per_class_mean_accuracy(
    logits_or_preds: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> float:
    """Mean over classes of each class's accuracy (recall), in percent; the usual metric for imbalanced
    test sets (e.g. FGVC Aircraft, Flowers). Classes absent from ``labels`` are left out of the mean,
    since their accuracy is undefined."""
    preds, labels = _as_predictions(logits_or_preds, labels)
    n = int(num_classes) if num_classes is not None else int(max(labels.max(), preds.max())) + 1
    support = torch.bincount(labels, minlength=n).double()
    correct = torch.bincount(labels[preds == labels], minlength=n).double()
    present = support > 0
    return 100.0 * float((correct[present] / support[present]).mean())


METRICS.register("accuracy", MetricEntry(accuracy))
METRICS.register("per_class_mean_accuracy", MetricEntry(per_class_mean_accuracy))


def harmonic_mean(base: float, new: float) -> float:
    """Harmonic mean of base and new accuracy (CoCoOp's base-to-new summary); 0 when either is 0."""
    if base <= 0 or new <= 0:
        return 0.0
    return 2.0 * base * new / (base + new)


__all__ = [
    "METRICS",
    "MetricEntry",
    "accuracy",
    "get_metric",
    "harmonic_mean",
    "per_class_mean_accuracy",
]
