"""Suites are data: a YAML file names the tasks (loader + args, class names, prompt templates,
metric), the default backbones and seeds, and the training protocol with per-method and per-task
overrides. A suite carries a ``version`` and the sha256 of its file; results record both.

Every mistake in a suite file is a ``UserError`` naming the file and the field, raised when the suite
loads, so a sweep never dies halfway through on a typo.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from petlbench.errors import UserError

SUITES_DIR = Path(__file__).resolve().parent
OPTIMIZERS = ("sgd", "adamw")
SPLITS = ("train", "val", "test", "trainval")
# How the learning rate moves, as each reference steps it (the trainer implements them).
SCHEDULES = {
    "linear_warmup_cosine_step": "per optimisation step: linear warm-up (step+1)/W, then a half cosine to 0 "
    "(petlbench's own, for the offline suites)",
    "dassl_constant_warmup_cosine_epoch": "per epoch: the first warmup_epochs at the constant warmup_lr, "
    "then lr*(1+cos(pi*(e-W)/epochs))/2 (Dassl ConstantWarmupScheduler + CosineAnnealingLR(MAX_EPOCH), "
    "WARMUP_RECOUNT=True; KaiyangZhou/Dassl.pytorch dassl/optim/lr_scheduler.py:L35-54, L128-141; "
    "stepped once per epoch, KaiyangZhou/CoOp trainers/coop.py:L281-282)",
    "vpt_linear_warmup_cosine_epoch": "per epoch: factor e/W for e < W (0 at epoch 0), then "
    "(1+cos(pi*(e-W)/(epochs-W)))/2 (KMnP/vpt src/solver/lr_scheduler.py:L41-65 WarmupCosineSchedule, "
    "stepped once per epoch, src/engine/trainer.py:L156, L221)",
}
# Where a protocol value came from, bottom to top (DESIGN section 6.1).
LAYERS = ("suite", "task", "method", "search", "user")


# ----- protocol -----------------------------------------------------------------------------------


MAX_EPOCHS = 10**6  # far above any protocol; a larger value is a typo that would overflow a schedule


def _field_error(name: str, expected: str, value: Any) -> UserError:
    return UserError(f"protocol field {name!r} must be {expected}, got {value!r}")


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Protocol:
    """How a method is trained and scored on a task. Values are checked and normalised on creation
    (ints where floats are expected become floats), so equal protocols have equal ``to_dict()`` and so
    equal run hashes."""

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    grad_clip: float | None = 1.0
    selection_split: str = "val"
    train_split: str = "train"
    eval_split: str = "test"
    shots: int | None = None
    schedule: str = "linear_warmup_cosine_step"  # one of SCHEDULES
    warmup_lr: float = 1e-5  # the constant lr of warm-up epochs (dassl_constant_warmup_cosine_epoch only)
    augmentation: str = "none"  # training augmentation (petlbench.benchmarks.augment); eval never augments

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise _field_error(name, "a positive integer", v)
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in OPTIMIZERS:
            raise _field_error("optimizer", f"one of {', '.join(OPTIMIZERS)}", self.optimizer)
        object.__setattr__(self, "optimizer", self.optimizer.lower())
        for name, lo, strict in (
            ("lr", 0.0, True),
            ("weight_decay", 0.0, False),
            ("momentum", 0.0, False),
            ("warmup_epochs", 0.0, False),
        ):
            v = getattr(self, name)
            if not _is_number(v) or v < lo or (strict and v == lo):
                raise _field_error(name, f"a number {'>' if strict else '>='} {lo:g}", v)
            object.__setattr__(self, name, float(v))
        for name in ("epochs", "warmup_epochs"):
            if getattr(self, name) > MAX_EPOCHS:
                raise _field_error(name, f"at most {MAX_EPOCHS:,} epochs", getattr(self, name))
        if self.momentum >= 1.0:
            raise _field_error("momentum", "a number in [0, 1)", self.momentum)
        if self.grad_clip is not None:
            if not _is_number(self.grad_clip) or self.grad_clip <= 0:
                raise _field_error("grad_clip", "a positive number or null (no clipping)", self.grad_clip)
            object.__setattr__(self, "grad_clip", float(self.grad_clip))
        for name in ("selection_split", "train_split", "eval_split"):
            v = getattr(self, name)
            if v not in SPLITS:
                raise _field_error(name, f"one of {', '.join(SPLITS)}", v)
        if self.selection_split == "test":
            raise UserError(
                "protocol field 'selection_split' is 'test': selecting models on the test split leaks it "
                "into the result; use 'val' (or a split carved from train)"
            )
        if self.train_split == self.eval_split:
            raise UserError(
                f"protocol fields 'train_split' and 'eval_split' are both {self.train_split!r}: a model "
                "must not be evaluated on the data it was trained on"
            )
        if self.shots is not None and (not _is_int(self.shots) or self.shots < 1):
            raise _field_error("shots", "a positive integer or null (all training data)", self.shots)
        if self.schedule not in SCHEDULES:
            raise _field_error("schedule", f"one of {', '.join(SCHEDULES)}", self.schedule)
        if self.schedule.endswith("_epoch") and not float(self.warmup_epochs).is_integer():
            raise _field_error(
                "warmup_epochs",
                f"a whole number of epochs with schedule {self.schedule!r}",
                self.warmup_epochs,
            )
        if not _is_number(self.warmup_lr) or self.warmup_lr < 0:
            raise _field_error("warmup_lr", "a number >= 0", self.warmup_lr)
        object.__setattr__(self, "warmup_lr", float(self.warmup_lr))
        from petlbench.benchmarks.augment import AUGMENTATIONS

        if self.augmentation not in AUGMENTATIONS:
            raise _field_error("augmentation", f"one of {', '.join(AUGMENTATIONS)}", self.augmentation)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_keys(cls, overrides: Mapping[str, Any]) -> None:
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise UserError(
                f"unknown protocol field {', '.join(map(repr, unknown))}; "
                f"known fields: {', '.join(cls.field_names())}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Protocol:
        """A copy with ``overrides`` applied, checked like a new protocol."""
        self.check_keys(overrides)
        return dataclasses.replace(self, **overrides)


# ----- tasks and suites ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    """A named way runs of a suite depart from the reference protocol (shown per result row).
    ``tasks``/``methods``/``backbones`` restrict it (empty: all)."""

    id: str
    what: str
    tasks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    backbones: tuple[str, ...] = ()

    def applies(self, task: str, method: str, backbone: str) -> bool:
        return (
            (not self.tasks or task in self.tasks)
            and (not self.methods or method in self.methods)
            and (not self.backbones or backbone in self.backbones)
        )

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "what": self.what}


@dataclass(frozen=True)
class SearchSpace:
    """A reference's hyperparameter search as suite data (VPT's tune_vtab.py / tune_fgvc.py).

    ``phases`` are searched one after another on the selection split (each phase's grid is crossed
    with the best point of the phases before it); ``method_phases[m]`` are merged into the phases
    of the same index for method ``m`` (longer lists append phases: E2VPT's pruning rates).
    ``lr_scaling`` ``batch/256`` multiplies every searched lr by batch_size / 256 (the reference's
    linear scaling rule). ``tie_break`` orders equal selection scores: ``[[key, min|max], ...]``,
    then grid order."""

    phases: tuple[dict[str, list[Any]], ...]
    method_phases: dict[str, tuple[dict[str, list[Any]], ...]]
    lr_scaling: str | None = None
    tie_break: tuple[tuple[str, str], ...] = ()
    refs: dict[str, str] = field(default_factory=dict)

    def phases_for(self, method: str) -> list[dict[str, list[Any]]]:
        extra = list(self.method_phases.get(method, ()))
        out = [dict(p) for p in self.phases]
        for i, phase in enumerate(extra):
            if i < len(out):
                out[i].update(phase)
            else:
                out.append(dict(phase))
        return out

    def scaled(self, point: dict[str, Any], batch_size: int) -> dict[str, Any]:
        """A grid point as the run uses it (lr scaled by the batch when the rule says so)."""
        if self.lr_scaling == "batch/256" and "lr" in point:
            return {**point, "lr": float(point["lr"]) * batch_size / 256}
        return dict(point)

    def describe(self, method: str) -> dict[str, Any]:
        return {
            "phases": self.phases_for(method),
            "lr_scaling": self.lr_scaling,
            "tie_break": [list(t) for t in self.tie_break],
            "refs": dict(self.refs),
        }


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite, as written in the suite file."""

    name: str
    loader: str
    args: dict[str, Any]
    metric: str = "accuracy"
    templates: tuple[str, ...] = ("a photo of a {}.",)
    class_names: tuple[str, ...] | None = None
    group: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    protocol_refs: dict[str, str] = field(default_factory=dict)
    method_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method, this task only
    method_protocol_refs: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectiveProtocol:
    """A run's protocol with, for every field, the layer that set it (suite | task | method | user)
    and, for suite and method values, the reference it reproduces."""

    protocol: Protocol
    source: dict[str, str]
    refs: dict[str, str]


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    description: str
    backbones: tuple[str, ...]
    protocol: Protocol
    method_protocol: dict[str, dict[str, Any]]
    tasks: tuple[TaskSpec, ...]
    seeds: tuple[int, ...]
    needs_data_root: bool
    path: str
    sha256: str
    protocol_refs: dict[str, str] = field(default_factory=dict)
    method_protocol_refs: dict[str, dict[str, str]] = field(default_factory=dict)
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method option defaults
    epochs_by_shots: dict[int, int] = field(default_factory=dict)
    epochs_by_shots_ref: str | None = None
    seeds_ref: str | None = None
    search: SearchSpace | None = None
    deviations: tuple[Deviation, ...] = ()

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UserError(f"suite {self.name!r} has no task {name!r}; its tasks: {', '.join(self.task_names)}")

    def resolve_protocol(
        self,
        task: TaskSpec,
        method: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> EffectiveProtocol:
        """The protocol one run uses, layered bottom to top (DESIGN 6.1): the suite's protocol, the
        task's, the method's reference protocol on this suite (``method_protocol``, then the task's
        own ``method_protocol``), the point a search chose (``search``), then ``overrides`` (the
        user's). A layer that repeats the value
        below it does not take the field over. The suite's ``epochs_by_shots`` (the reference's
        epochs per shot count) sets ``epochs`` when no layer above the suite set it. A composed
        method ``a+b`` runs with the protocol its parts agree on (:meth:`_composed_protocol`)."""
        if method is not None and "+" in method:
            return self._composed_protocol(task, method, overrides, search)
        overrides = dict(overrides or {})
        Protocol.check_keys(overrides)
        Protocol.check_keys(search or {})
        values = self.protocol.to_dict()
        source = dict.fromkeys(values, "suite")
        refs = dict(self.protocol_refs)

        def apply(layer: Mapping[str, Any], layer_refs: Mapping[str, str], name: str) -> None:
            for key, value in layer.items():
                if key in values and values[key] == value and key not in layer_refs:
                    continue
                values[key] = value
                source[key] = name
                if key in layer_refs:
                    refs[key] = layer_refs[key]
                else:
                    refs.pop(key, None)

        apply(task.protocol, task.protocol_refs, "task")
        if method is not None:
            apply(self.method_protocol.get(method, {}), self.method_protocol_refs.get(method, {}), "method")
            apply(task.method_protocol.get(method, {}), task.method_protocol_refs.get(method, {}), "method")
        user_epochs = "epochs" in overrides or "epochs" in (search or {})
        apply(search or {}, {}, "search")
        apply(overrides, {}, "user")
        where = f"suite {self.name!r}, task {task.name!r}" + (f", method {method!r}" if method else "")
        if self.epochs_by_shots and source["epochs"] == "suite" and not user_epochs:
            shots = values.get("shots")
            if shots not in self.epochs_by_shots:
                known = ", ".join(str(k) for k in sorted(self.epochs_by_shots))
                raise UserError(
                    f"{where}: the reference gives no epoch count for shots={shots} (it has {known}); "
                    "pass --protocol epochs=E as well"
                )
            values["epochs"] = self.epochs_by_shots[shots]
            if self.epochs_by_shots_ref:
                refs["epochs"] = self.epochs_by_shots_ref
        try:
            protocol = self.protocol.replace(**values)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        return EffectiveProtocol(protocol, source, {k: v for k, v in refs.items() if k in values})

    def _composed_protocol(
        self,
        task: TaskSpec,
        method: str,
        overrides: Mapping[str, Any] | None,
        search: Mapping[str, Any] | None,
    ) -> EffectiveProtocol:
        """A composition ``a+b`` (methods/compose.py) trains once, so every part must get the
        protocol it would run with alone on this task: each field has the value all parts' own
        protocols give it, from the highest layer any part took it from (with the reference of
        the first such part that cites one). Where the parts' protocols differ the run is
        refused, naming the fields; ``--protocol FIELD=VALUE`` settles one (the user layer is on
        top of every part's)."""
        names = method.split("+")
        parts = [self.resolve_protocol(task, name, overrides, search) for name in names]
        first = parts[0].protocol.to_dict()
        for name, part in zip(names[1:], parts[1:], strict=True):
            values = part.protocol.to_dict()
            differ = [key for key in first if values[key] != first[key]]
            if differ:
                raise UserError(
                    f"suite {self.name!r}, task {task.name!r}, method {method!r}: its parts train with "
                    f"different {', '.join(differ)} ({names[0]}: "
                    + ", ".join(f"{key}={first[key]!r}" for key in differ)
                    + f"; {name}: "
                    + ", ".join(f"{key}={values[key]!r}" for key in differ)
                    + "); choose with --protocol "
                    + " ".join(f"{key}=VALUE" for key in differ)
                )
        source: dict[str, str] = {}
        refs: dict[str, str] = {}
        for key in first:
            top = max(parts, key=lambda part: (LAYERS.index(part.source[key]), key in part.refs))
            source[key] = top.source[key]
            if key in top.refs:
                refs[key] = top.refs[key]
        return EffectiveProtocol(parts[0].protocol, source, refs)

    def protocol_for(self, task: TaskSpec, method: str | None = None, **overrides: Any) -> Protocol:
        """The effective protocol of :meth:`resolve_protocol` without its sources."""
        return self.resolve_protocol(task, method, overrides).protocol

    def method_config_for(self, method: str) -> dict[str, Any]:
        """Option defaults this suite sets for ``method`` (under the user's ``--set``); a composed
        ``a+b`` gets each part's as ``a.option``, the key a composition's config reads."""
        if "+" in method:
            return {
                f"{part}.{key}": value
                for part in method.split("+")
                for key, value in self.method_config.get(part, {}).items()
            }
        return dict(self.method_config.get(method, {}))

    def deviations_for(self, task: str, method: str, backbone: str) -> list[dict[str, str]]:
        """The suite's deviations that apply to a run of ``method`` (of any part of ``a+b``)."""
        parts = method.split("+")
        return [d.to_dict() for d in self.deviations if any(d.applies(task, m, backbone) for m in parts)]


# ----- loading ------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Reads one suite file; every error names the file and the field path."""

    TOP_KEYS = {
        "name": False,
        "version": True,
        "description": False,
        "backbones": True,
        "seeds": True,
        "protocol": False,
        "method_protocol": False,
        "method_config": False,
        "epochs_by_shots": False,
        "search": False,
        "deviations": False,
        "tasks": True,
    }
    TASK_KEYS = {
        "name": True,
        "loader": True,
        "args": False,
        "metric": False,
        "templates": False,
        "class_names": False,
        "group": False,
        "protocol": False,
        "method_protocol": False,
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self.task_name: str | None = None  # the task being read, named in its errors

    def error(self, where: str, message: str) -> UserError:
        context = f" (task {self.task_name!r})" if self.task_name and where.startswith("tasks[") else ""
        return UserError(f"suite file {self.path}: {where}{context}: {message}")

    def mapping(self, value: Any, where: str, keys: Mapping[str, bool] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {_describe(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise self.error(where, f"keys must be strings, got {bad[0]!r}")
        if keys is not None:
            unknown = sorted(set(value) - set(keys))
            if unknown:
                raise self.error(
                    f"{where}.{unknown[0]}" if where else unknown[0],
                    f"unknown key; expected one of: {', '.join(keys)}",
                )
            missing = [k for k, required in keys.items() if required and k not in value]
            if missing:
                raise self.error(f"{where}.{missing[0]}" if where else missing[0], "missing required field")
        return value

    def string(self, value: Any, where: str, allow_int: bool = False) -> str:
        if allow_int and _is_int(value):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"expected a non-empty string, got {_describe(value)}")
        return value

    def str_list(
        self, value: Any, where: str, *, nonempty: bool = True, unique: bool = True
    ) -> tuple[str, ...]:
        if not isinstance(value, list) or (nonempty and not value):
            raise self.error(
                where, f"expected a {'non-empty ' if nonempty else ''}list of strings, got {_describe(value)}"
            )
        out = tuple(self.string(v, f"{where}[{i}]") for i, v in enumerate(value))
        if unique and len(set(out)) != len(out):
            dupes = sorted({v for v in out if out.count(v) > 1})
            raise self.error(where, f"duplicate entries {dupes}")
        return out

    def cited(self, value: Any, where: str) -> tuple[Any, str | None]:
        """A value as written: plain, or ``{value: V, ref: "repo file:line"}`` (the reference it comes
        from, kept with the value so every run can cite it)."""
        if isinstance(value, dict) and "value" in value:
            extra = sorted(set(value) - {"value", "ref"})
            if extra:
                raise self.error(
                    f"{where}.{extra[0]}", "unknown key; a cited value has only 'value' and 'ref'"
                )
            ref = value.get("ref")
            if ref is not None:
                ref = self.string(ref, f"{where}.ref")
            return value["value"], ref
        return value, None

    def protocol_overrides(self, value: Any, where: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Protocol values and their references (``ref``) from a mapping of possibly cited values."""
        overrides = self.mapping(value, where)
        unknown = sorted(set(overrides) - set(Protocol.field_names()))
        if unknown:
            raise self.error(
                f"{where}.{unknown[0]}",
                f"unknown protocol field; known fields: {', '.join(Protocol.field_names())}",
            )
        values: dict[str, Any] = {}
        refs: dict[str, str] = {}
        for key, raw in overrides.items():
            values[key], ref = self.cited(raw, f"{where}.{key}")
            if ref is not None:
                refs[key] = ref
        return values, refs

    def per_method(self, value: Any, where: str, base: Protocol) -> tuple[dict, dict]:
        """``{method: {field: value}}`` -> (values per method, refs per method), each checked."""
        values: dict[str, dict[str, Any]] = {}
        refs: dict[str, dict[str, str]] = {}
        for method, overrides in self.mapping(value, where).items():
            values[method], refs[method] = self.protocol_overrides(overrides, f"{where}.{method}")
            self.check_protocol(base, values[method], f"{where}.{method}")
        return values, refs

    def method_config(self, value: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for method, options in self.mapping(value, "method_config").items():
            opts = self.mapping(options, f"method_config.{method}")
            out[method] = {k: self.cited(v, f"method_config.{method}.{k}")[0] for k, v in opts.items()}
        return out

    def epochs_by_shots(self, value: Any) -> tuple[dict[int, int], str | None]:
        raw, ref = self.cited(value, "epochs_by_shots")
        table = self.mapping(raw, "epochs_by_shots") if not isinstance(raw, dict) else raw
        out: dict[int, int] = {}
        for k, v in table.items():
            if not _is_int(k) or k < 1 or not _is_int(v) or v < 1:
                raise self.error(
                    "epochs_by_shots", f"expected shots: epochs (positive integers), got {k!r}: {v!r}"
                )
            out[k] = v
        return out, ref

    def search(self, value: Any) -> SearchSpace:
        s = self.mapping(
            value, "search", {"phases": True, "methods": False, "lr_scaling": False, "tie_break": False}
        )
        refs: dict[str, str] = {}

        def phases(raw: Any, where: str) -> tuple[dict[str, list[Any]], ...]:
            if not isinstance(raw, list) or not raw:
                raise self.error(where, f"expected a non-empty list of grids, got {_describe(raw)}")
            out = []
            for i, phase in enumerate(raw):
                grid: dict[str, list[Any]] = {}
                for key, cell in self.mapping(phase, f"{where}[{i}]").items():
                    values, ref = self.cited(cell, f"{where}[{i}].{key}")
                    if not isinstance(values, list) or not values:
                        raise self.error(
                            f"{where}[{i}].{key}", f"expected a non-empty list, got {_describe(values)}"
                        )
                    grid[key] = list(values)
                    if ref is not None:
                        refs[f"{where}[{i}].{key}"] = ref
                out.append(grid)
            return tuple(out)

        main = phases(s["phases"], "search.phases")
        method_phases = {
            m: phases(
                self.mapping(v, f"search.methods.{m}", {"phases": True})["phases"],
                f"search.methods.{m}.phases",
            )
            for m, v in self.mapping(s.get("methods", {}), "search.methods").items()
        }
        scaling, ref = self.cited(s.get("lr_scaling"), "search.lr_scaling")
        if scaling not in (None, "batch/256"):
            raise self.error("search.lr_scaling", f"expected batch/256 or nothing, got {_describe(scaling)}")
        if ref:
            refs["lr_scaling"] = ref
        ties_raw, ref = self.cited(s.get("tie_break", []), "search.tie_break")
        if ref:
            refs["tie_break"] = ref
        ties = []
        for i, item in enumerate(ties_raw or []):
            if not (isinstance(item, list) and len(item) == 2 and item[1] in ("min", "max")):
                raise self.error(f"search.tie_break[{i}]", f"expected [key, min|max], got {_describe(item)}")
            ties.append((self.string(item[0], f"search.tie_break[{i}][0]"), item[1]))
        return SearchSpace(main, method_phases, scaling, tuple(ties), refs)

    def deviations(self, value: Any) -> tuple[Deviation, ...]:
        if not isinstance(value, list):
            raise self.error("deviations", f"expected a list, got {_describe(value)}")
        out = []
        keys = {"id": True, "what": True, "tasks": False, "methods": False, "backbones": False}
        for i, raw in enumerate(value):
            d = self.mapping(raw, f"deviations[{i}]", keys)
            out.append(
                Deviation(
                    self.string(d["id"], f"deviations[{i}].id"),
                    " ".join(self.string(d["what"], f"deviations[{i}].what").split()),
                    *(
                        self.str_list(d[k], f"deviations[{i}].{k}") if k in d else ()
                        for k in ("tasks", "methods", "backbones")
                    ),
                )
            )
        ids = [d.id for d in out]
        if len(set(ids)) != len(ids):
            raise self.error("deviations", f"duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
        return tuple(out)

    def check_protocol(self, base: Protocol, overrides: Mapping[str, Any], where: str) -> None:
        try:
            base.replace(**overrides)
        except UserError as err:
            raise self.error(where, str(err)) from None

    def read(self) -> Suite:
        try:
            raw_bytes = self.path.read_bytes()
        except OSError as err:
            raise UserError(f"suite file {self.path}: cannot be read ({err.strerror or err})") from None
        try:
            data = yaml.load(raw_bytes.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
        except UnicodeDecodeError:
            raise UserError(f"suite file {self.path}: not UTF-8 text") from None
        except yaml.YAMLError as err:
            raise UserError(f"suite file {self.path}: not valid YAML ({_yaml_message(err)})") from None
        if data is None:
            raise UserError(
                f"suite file {self.path}: is empty; a suite needs at least version, backbones, "
                "seeds and tasks"
            )
        top = self.mapping(data, "", self.TOP_KEYS) if isinstance(data, dict) else None
        if top is None:
            raise UserError(
                f"suite file {self.path}: expected a mapping at the top level, got {_describe(data)}"
            )

        name = self.string(top.get("name", self.path.stem), "name")
        version = self.string(top["version"], "version", allow_int=True)
        description = top.get("description", "")
        if not isinstance(description, str):
            raise self.error("description", f"expected a string, got {_describe(description)}")
        backbones = self.str_list(top["backbones"], "backbones")
        seeds_raw, seeds_ref = self.cited(top["seeds"], "seeds")
        if not isinstance(seeds_raw, list) or not seeds_raw:
            raise self.error("seeds", f"expected a non-empty list of integers, got {_describe(seeds_raw)}")
        for i, s in enumerate(seeds_raw):
            if not _is_int(s) or s < 0:
                raise self.error(f"seeds[{i}]", f"expected a non-negative integer, got {_describe(s)}")
        if len(set(seeds_raw)) != len(seeds_raw):
            raise self.error("seeds", f"duplicate seeds in {seeds_raw}")
        seeds = tuple(seeds_raw)

        protocol_values, protocol_refs = self.protocol_overrides(top.get("protocol", {}), "protocol")
        try:
            protocol = Protocol(**protocol_values)
        except UserError as err:
            raise self.error("protocol", str(err)) from None
        except TypeError as err:  # pragma: no cover - keys are checked above
            raise self.error("protocol", str(err)) from None

        method_protocol, method_protocol_refs = self.per_method(
            top.get("method_protocol", {}), "method_protocol", protocol
        )
        method_config = self.method_config(top.get("method_config", {}))
        epochs_by_shots, epochs_ref = self.epochs_by_shots(top.get("epochs_by_shots", {}))
        search = self.search(top["search"]) if top.get("search") is not None else None
        deviations = self.deviations(top.get("deviations", []))

        tasks_raw = top["tasks"]
        if not isinstance(tasks_raw, list) or not tasks_raw:
            raise self.error("tasks", f"expected a non-empty list of tasks, got {_describe(tasks_raw)}")
        tasks = tuple(self.task(t, f"tasks[{i}]", protocol, method_protocol) for i, t in enumerate(tasks_raw))
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise self.error("tasks", f"duplicate task names {dupes}; task names must be unique")

        from petlbench.benchmarks.datasets import FORMATS

        return Suite(
            name=name,
            version=version,
            description=description,
            backbones=backbones,
            protocol=protocol,
            method_protocol=method_protocol,
            tasks=tasks,
            seeds=seeds,
            needs_data_root=any(FORMATS.get(t.loader).needs_data_root for t in tasks),
            path=str(self.path),
            sha256=hashlib.sha256(raw_bytes).hexdigest(),
            protocol_refs=protocol_refs,
            method_protocol_refs=method_protocol_refs,
            method_config=method_config,
            epochs_by_shots=epochs_by_shots,
            epochs_by_shots_ref=epochs_ref,
            seeds_ref=seeds_ref,
            search=search,
            deviations=deviations,
        )

    def task(
        self, raw: Any, where: str, protocol: Protocol, method_protocol: Mapping[str, Mapping[str, Any]]
    ) -> TaskSpec:
        from petlbench.benchmarks.datasets import FORMATS
        from petlbench.benchmarks.metrics import get_metric

        t = self.mapping(raw, where, self.TASK_KEYS)
        name = self.string(t["name"], f"{where}.name")
        self.task_name = name
        loader = self.string(t["loader"], f"{where}.loader")
        try:
            entry = FORMATS.get(loader)
        except UserError as err:
            raise self.error(f"{where}.loader", str(err)) from None
        args = dict(self.mapping(t.get("args", {}), f"{where}.args"))
        if entry.check_args is not None:
            try:
                entry.check_args(args)
            except UserError as err:
                raise self.error(f"{where}.args", str(err)) from None
        metric = self.string(t.get("metric", "accuracy"), f"{where}.metric")
        try:
            get_metric(metric, generative=entry.generative)
        except UserError as err:
            raise self.error(f"{where}.metric", str(err)) from None
        templates = TaskSpec.templates
        if "templates" in t:
            templates = self.str_list(t["templates"], f"{where}.templates")
            for i, tpl in enumerate(templates):
                if tpl.count("{}") != 1:
                    raise self.error(
                        f"{where}.templates[{i}]",
                        f"template {tpl!r} must contain exactly one '{{}}' where the class name goes",
                    )
        class_names = None
        if t.get("class_names") is not None:
            class_names = self.str_list(t["class_names"], f"{where}.class_names")
        group = t.get("group")
        if group is not None:
            group = self.string(group, f"{where}.group")
        overrides, refs = self.protocol_overrides(t.get("protocol", {}), f"{where}.protocol")
        self.check_protocol(protocol, overrides, f"{where}.protocol")
        task_methods, task_method_refs = self.per_method(
            t.get("method_protocol", {}), f"{where}.method_protocol", protocol.replace(**overrides)
        )
        for method in set(method_protocol) | set(task_methods):
            self.check_protocol(
                protocol,
                {**overrides, **method_protocol.get(method, {}), **task_methods.get(method, {})},
                f"{where}.protocol (with method_protocol.{method})",
            )
        self.task_name = None
        return TaskSpec(
            name=name,
            loader=loader,
            args=args,
            metric=metric,
            templates=tuple(templates),
            class_names=class_names,
            group=group,
            protocol=overrides,
            protocol_refs=refs,
            method_protocol=task_methods,
            method_protocol_refs=task_method_refs,
        )


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _yaml_message(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error (their str() spans several lines with a source excerpt)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def list_suites() -> list[str]:
    """Names of the built-in suites (the ``*.yaml`` files next to this module)."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if not looks_like_path:
        builtin = SUITES_DIR / f"{text}.yaml"
        if builtin.is_file():
            return builtin
        raise UserError(
            f"unknown suite {text!r}; built-in suites: {', '.join(list_suites())}, or pass a path to a "
            "suite .yaml file"
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(
            f"suite file {path} does not exist; pass a built-in suite name or a path to a .yaml file"
        )
    return path


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite by name (see ``list_suites``) or any suite file by path."""
    return _Reader(suite_path(name_or_path)).read()
