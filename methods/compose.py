"""Two or more methods in one run, each through its own slots (``--method vpt+bitfit``).

:func:`compose` builds a :class:`Method` whose parts attach in order; a slot one part filled is
refused to the next (``methods/base.py``), so parts compose only where their slots differ. The
options are one sub-config per part (``{"vpt": {...}, "bitfit": {...}}``; ``--set vpt.num_tokens=10``
addresses one), so a composition's run id differs from each part's alone. What cannot combine is
refused when the class is built: two multi-stage parts, two parts that build the head, two
different heads, a training-free part with a trained one.

On a suite, ``a+b`` gets each part's option defaults (``method_config``, as ``a.option``) and
deviations, and the protocol its parts agree on: every field must have the value each part's own
run on that task would use, or the plan is refused naming the fields until ``--protocol`` sets
them (``Suite._composed_protocol`` in benchmarks/suites). ``bench methods a+b`` lists each part's
options under its name, as ``a.option``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from petlbench.backbones.base import Backbone
from petlbench.errors import UserError

from .base import Callback, LossContext, Method, Stage, StageContext


def compose(classes: list[type[Method]]) -> type[Method]:
    """A Method subclass running ``classes`` together, named ``"a+b"``; refuses what cannot combine."""
    name = "+".join(cls.name for cls in classes)
    if len(classes) < 2:
        raise UserError(f"composing methods needs at least two, got {name!r}")
    if len({cls.name for cls in classes}) < len(classes):
        raise UserError(f"method {name!r} names one method twice")
    if len({cls.trains for cls in classes}) > 1:
        raise UserError(f"method {name!r} combines a training-free method with a trained one")
    heads = {cls.head for cls in classes} - {"auto"}
    if len(heads) > 1:
        raise UserError(f"method {name!r}: its parts need different heads ({', '.join(sorted(heads))})")
    builders = [cls.name for cls in classes if cls.make_head is not Method.make_head]
    if len(builders) > 1:
        raise UserError(f"method {name!r}: {' and '.join(builders)} both build the classifier head")
    kinds = [cls.backbone_kinds for cls in classes if cls.backbone_kinds is not None]
    config = dataclasses.make_dataclass(
        "ComposedConfig",
        [(_field(cls.name), cls.Config, dataclasses.field(default_factory=cls.Config)) for cls in classes],
    )
    attributes = {
        "name": name,
        "family": "composed",
        "paper": "; ".join(cls.paper for cls in classes if cls.paper),
        "Config": config,
        "parts": tuple(classes),
        "towers": tuple(dict.fromkeys(t for cls in classes for t in cls.towers)),
        "backbone_kinds": tuple(k for k in kinds[0] if all(k in other for other in kinds)) if kinds else None,
        "head": heads.pop() if heads else "auto",
        "trains": classes[0].trains,
        "needs_text_encoder_per_image": any(cls.needs_text_encoder_per_image for cls in classes),
        "deviations": tuple({**d, "id": f"{cls.name}:{d['id']}"} for cls in classes for d in cls.deviations),
    }
    return type(name, (Composed,), {"__module__": __name__, "__qualname__": name, **attributes})


def _field(name: str) -> str:
    """A part's name as a config field (fields are identifiers: ``clip-adapter`` -> ``clip_adapter``)."""
    return name.replace("-", "_")


class Composed(Method):
    """The parts of a composition (see :func:`compose`), attached in order, detached in reverse."""

    parts: ClassVar[tuple[type[Method], ...]] = ()
    records_attach = False  # each part records its own attach

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.components = nn.ModuleDict(
            {cls.name: cls(getattr(self.config, _field(cls.name))) for cls in self.parts}
        )
        staged = [p.name for p in self._parts() if [s.name for s in p.stages()] != ["train"]]
        if len(staged) > 1:
            raise UserError(f"method {self.name!r}: {' and '.join(staged)} both have stages of their own")

    def _parts(self) -> Iterator[Method]:
        return (m for m in self.components.values() if isinstance(m, Method))

    # ----- configuration --------------------------------------------------------------------------
    @classmethod
    def config_from_dict(cls, values: dict[str, Any]) -> Any:
        """``{"vpt": {...}, "bitfit": {...}}``, or ``{"vpt.num_tokens": 10}`` (how ``--set`` and the
        per-kind defaults address a part's option); each part's options are checked by that part."""
        names = {cls_.name: cls_ for cls_ in cls.parts}
        per_part: dict[str, dict[str, Any]] = {n: {} for n in names}
        for key, value in values.items():
            part, dot, option = key.partition(".")
            if part not in names:
                raise UserError(
                    f"method {cls.name!r} takes its parts' options as PART.OPTION or {{PART: {{...}}}} "
                    f"(parts: {', '.join(names)}), not {key!r}"
                )
            if dot:
                per_part[part][option] = value
            elif isinstance(value, dict):
                per_part[part].update(value)
            else:
                raise UserError(f"method {cls.name!r}: option {key!r} must be a dict of {part}'s options")
        return cls.Config(**{_field(n): names[n].config_from_dict(v) for n, v in per_part.items()})

    def check_limits(self) -> None:
        """Nothing of its own: each part checks its options when it is built."""

    def config_dict(self) -> dict[str, Any]:
        return {cls.name: dataclasses.asdict(getattr(self.config, _field(cls.name))) for cls in self.parts}

    # ----- pairing ----------------------------------------------------------------------------------
    @classmethod
    def check_compatible(cls, backbone_name: str, kind: str, towers: tuple[str, ...]) -> None:
        for part in cls.parts:
            part.check_compatible(backbone_name, kind, towers)

    @classmethod
    def required_towers(cls) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for part in cls.parts for t in part.required_towers()))

    @classmethod
    def kind_defaults(cls, kind: str) -> dict[str, Any]:
        return {f"{part.name}.{k}": v for part in cls.parts for k, v in part.kind_defaults(kind).items()}

    # ----- lifecycle --------------------------------------------------------------------------------
    def attach(self, backbone: Backbone) -> None:
        attached: list[Method] = []
        try:
            for part in self._parts():
                part.attach(backbone)
                attached.append(part)
        except Exception:
            for part in reversed(attached):  # the backbone as it was before the composition
                part.detach()
            raise

    def detach(self) -> None:
        for part in reversed(list(self._parts())):
            part.detach()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for part in self._parts():
            for p in part.trainable_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def num_trainable_parameters(self) -> int:
        return sum(part.num_trainable_parameters() for part in self._parts())

    def make_head(self, backbone: Backbone, class_names: list[str], templates: list[str]) -> nn.Module | None:
        heads = (part.make_head(backbone, class_names, templates) for part in self._parts())
        return next((h for h in heads if h is not None), None)

    def callbacks(self) -> list[Callback]:
        return [cb for part in self._parts() for cb in part.callbacks()]

    def extra_loss(self, ctx: LossContext) -> torch.Tensor | None:
        terms = [t for t in (part.extra_loss(ctx) for part in self._parts()) if t is not None]
        return torch.stack(terms).sum() if terms else None

    @classmethod
    def has_extra_loss(cls) -> bool:
        return any(part.has_extra_loss() for part in cls.parts)

    def stages(self) -> list[Stage]:
        """The one multi-stage part's stages (each ``prepare`` sees that part as ``ctx.method``)."""
        for part in self._parts():
            stages = part.stages()
            if [s.name for s in stages] != ["train"]:
                return [
                    dataclasses.replace(s, prepare=functools.partial(_prepare, s.prepare, part))
                    if s.prepare is not None
                    else s
                    for s in stages
                ]
        return [Stage("train")]

    def method_state(self) -> dict[str, torch.Tensor]:
        return {f"{part.name}.{k}": v for part in self._parts() for k, v in part.method_state().items()}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        for part in self._parts():
            prefix = f"{part.name}."
            part.load_method_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def describe(self) -> dict[str, Any]:
        """Each part's trainable parameters and description; their sum is the run's count."""
        return {
            "parts": {
                part.name: {"trainable_parameters": part.num_trainable_parameters(), **part.describe()}
                for part in self._parts()
            }
        }


def _prepare(prepare: Any, part: Method, ctx: StageContext) -> None:
    prepare(dataclasses.replace(ctx, method=part))
