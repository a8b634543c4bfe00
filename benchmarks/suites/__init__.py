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
from typing import Any

import yaml

from petlbench.errors import UserError

SUITES_DIR = Path(__file__).resolve().parent
OPTIMIZERS = ("sgd", "adamw")
SPLITS = ("train", "val", "test", "trainval")


# ----- protocol -----------------------------------------------------------------------------------


def _field_error(name: str, expected: str, value: Any) -> UserError:
    return UserError(f"protocol field {name!r} must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
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

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UserError(f"suite {self.name!r} has no task {name!r}; its tasks: {', '.join(self.task_names)}")

    def protocol_for(self, task: TaskSpec, method: str | None = None, **overrides: Any) -> Protocol:
        """The protocol one run uses: suite defaults <- ``method_protocol[method]`` <- the task's
        ``protocol`` <- ``overrides`` (e.g. from the command line); later wins."""
        merged: dict[str, Any] = {}
        if method is not None:
            merged.update(self.method_protocol.get(method, {}))
        merged.update(task.protocol)
        merged.update(overrides)
        try:
            return self.protocol.replace(**merged)
        except UserError as err:
            where = f"suite {self.name!r}, task {task.name!r}" + (f", method {method!r}" if method else "")
            raise UserError(f"{where}: {err}") from None


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

    def protocol_overrides(self, value: Any, where: str) -> dict[str, Any]:
        overrides = self.mapping(value, where)
        unknown = sorted(set(overrides) - set(Protocol.field_names()))
        if unknown:
            raise self.error(
                f"{where}.{unknown[0]}",
                f"unknown protocol field; known fields: {', '.join(Protocol.field_names())}",
            )
        return dict(overrides)

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
        seeds_raw = top["seeds"]
        if not isinstance(seeds_raw, list) or not seeds_raw:
            raise self.error("seeds", f"expected a non-empty list of integers, got {_describe(seeds_raw)}")
        for i, s in enumerate(seeds_raw):
            if not _is_int(s) or s < 0:
                raise self.error(f"seeds[{i}]", f"expected a non-negative integer, got {_describe(s)}")
        if len(set(seeds_raw)) != len(seeds_raw):
            raise self.error("seeds", f"duplicate seeds in {seeds_raw}")
        seeds = tuple(seeds_raw)

        try:
            protocol = Protocol(**self.protocol_overrides(top.get("protocol", {}), "protocol"))
        except UserError as err:
            raise self.error("protocol", str(err)) from None
        except TypeError as err:  # pragma: no cover - keys are checked above
            raise self.error("protocol", str(err)) from None

        method_protocol: dict[str, dict[str, Any]] = {}
        for method, overrides in self.mapping(top.get("method_protocol", {}), "method_protocol").items():
            where = f"method_protocol.{method}"
            method_protocol[method] = self.protocol_overrides(overrides, where)
            self.check_protocol(protocol, method_protocol[method], where)

        tasks_raw = top["tasks"]
        if not isinstance(tasks_raw, list) or not tasks_raw:
            raise self.error("tasks", f"expected a non-empty list of tasks, got {_describe(tasks_raw)}")
        tasks = tuple(self.task(t, f"tasks[{i}]", protocol, method_protocol) for i, t in enumerate(tasks_raw))
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise self.error("tasks", f"duplicate task names {dupes}; task names must be unique")

        from petlbench.benchmarks.datasets import loader_entry

        return Suite(
            name=name,
            version=version,
            description=description,
            backbones=backbones,
            protocol=protocol,
            method_protocol=method_protocol,
            tasks=tasks,
            seeds=seeds,
            needs_data_root=any(loader_entry(t.loader).needs_data_root for t in tasks),
            path=str(self.path),
            sha256=hashlib.sha256(raw_bytes).hexdigest(),
        )

    def task(
        self, raw: Any, where: str, protocol: Protocol, method_protocol: Mapping[str, Mapping[str, Any]]
    ) -> TaskSpec:
        from petlbench.benchmarks.datasets import loader_entry
        from petlbench.benchmarks.metrics import get_metric

        t = self.mapping(raw, where, self.TASK_KEYS)
        name = self.string(t["name"], f"{where}.name")
        self.task_name = name
        loader = self.string(t["loader"], f"{where}.loader")
        try:
            entry = loader_entry(loader)
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
            if entry.generative:
                from petlbench.benchmarks.metrics.ofa import get_ofa_metric

                get_ofa_metric(metric)
            else:
                get_metric(metric)
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
        overrides = self.protocol_overrides(t.get("protocol", {}), f"{where}.protocol")
        self.check_protocol(protocol, overrides, f"{where}.protocol")
        for method, m_over in method_protocol.items():
            self.check_protocol(
                protocol, {**m_over, **overrides}, f"{where}.protocol (with method_protocol.{method})"
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
