"""Every metric a suite names, classification and generative, in one registry.

Kept apart from the package's ``__init__`` so a metric module (``ofa.py``) registers its metrics
without importing the package that imports it (no import circle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from petlbench.errors import UserError
from petlbench.registry import Registry


@dataclass(frozen=True)
class MetricEntry:
    """A metric in percent (0-100). A classification metric is ``fn(predictions, labels, num_classes)``
    on int64 tensors of shape (N,); a ``generative`` one is ``fn(predictions, references)`` on the
    decoded outputs of a sequence-to-sequence task (boxes, answers, captions)."""

    fn: Callable[..., float]
    generative: bool = False


METRICS: Registry[MetricEntry] = Registry("metric", hint="Set the task's `metric` to one of these.")


def get_metric(name: str, *, generative: bool = False) -> Callable[..., float]:
    """The metric ``name`` for a classification task, or with ``generative`` for a sequence-to-sequence
    one; a metric of the other kind is refused, naming the ones that fit."""
    entry = METRICS.get(name)
    if entry.generative != generative:
        fitting = ", ".join(n for n, e in METRICS.items() if e.generative == generative)
        task = "sequence-to-sequence" if generative else "classification"
        raise UserError(f"metric {name!r} does not score a {task} task; known {task} metrics: {fitting}")
    return entry.fn
