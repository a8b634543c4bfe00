"""Attaching a run's method to its backbone, the one way every run path does it, with the failures a
user can cause (an option too large to allocate, options that leave nothing to train) as one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from petlbench.backbones.base import Backbone
from petlbench.errors import UserError
from petlbench.methods.base import Method
from petlbench.methods.registry import get_method

from .spec import RunSpec

_ALLOCATION_WORDS = ("alloc", "out of memory", "cannot allocate", "can't allocate")


@contextmanager
def out_of_memory_as_user_error(what: str) -> Iterator[None]:
    """Turn an allocation failure while ``what`` into "out of memory building ...", one line."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        text = str(err).strip().splitlines()[-1] if str(err).strip() else err.__class__.__name__
        if isinstance(err, MemoryError | torch.OutOfMemoryError) or any(
            w in text.lower() for w in _ALLOCATION_WORDS
        ):
            raise UserError(f"out of memory building {what}: {text}") from None
        raise


def attach_method(name: str, config: dict[str, Any], backbone: Backbone) -> Method:
    """Method ``name`` with options ``config``, configured (options checked), paired with the
    backbone (checked) and attached."""
    method_cls = get_method(name)
    method = method_cls(config)
    method_cls.check_compatible(backbone.name, backbone.kind, backbone.tower_names)
    with out_of_memory_as_user_error(f"method {name!r} on {backbone.name}"):
        method.attach(backbone)
    return method


def refuse_nothing_to_train(spec: RunSpec, model: torch.nn.Module) -> None:
    """A training method whose options leave no trainable parameter (head included) is refused
    before an optimiser is built, not run as a silent no-op."""
    if get_method(spec.method).trains and not any(p.requires_grad for p in model.parameters()):
        raise UserError(
            f"method {spec.method!r} with options {dict(spec.method_config)} has no trainable parameter "
            f"on {spec.backbone}: nothing to train"
        )
