"""What a run does that depends on the task's output: ``classification`` (a class label) and
``seq2seq`` (text from an encoder-decoder). :func:`objective_for` picks one from the data and checks
that the backbone can produce it (the one pairing check)."""

from __future__ import annotations

from typing import Any

from petlbench.backbones.registry import backbone_entry
from petlbench.errors import UserError

from ..spec import RunSpec
from .base import Evaluation, Objective, RunContext, Splits, count_parameters, seed_everything
from .classification import ClassificationObjective


def objective_for(spec: RunSpec, data: Any) -> type[Objective]:
    """The objective of ``spec`` on ``data`` (generative data: image + text -> text), refusing a
    backbone that cannot produce the task's output in one line."""
    generative_data = bool(getattr(data, "generative", False))
    generative_backbone = backbone_entry(spec.backbone).generative
    if generative_data and not generative_backbone:
        raise UserError(
            f"task {spec.task!r} is generative (image + text -> text): it needs an encoder-decoder backbone "
            f"(ofa-*), not {spec.backbone!r}"
        )
    if generative_backbone and not generative_data:
        raise UserError(
            f"{spec.backbone!r} is a generative encoder-decoder; task {spec.task!r} is classification. "
            "Use a generative suite (ofa-smoke, ofa)"
        )
    if generative_data:
        from .seq2seq import Seq2SeqObjective  # the OFA stack loads only for generative runs

        return Seq2SeqObjective
    return ClassificationObjective


__all__ = [
    "ClassificationObjective",
    "Evaluation",
    "Objective",
    "RunContext",
    "Splits",
    "count_parameters",
    "objective_for",
    "seed_everything",
]
