"""The loader registry: on-disk formats by name, each with its loader and how to check its args.

Kept apart from the package's ``__init__`` so a format module imports the registry without importing
the package that imports it (no import circle)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from petlbench.errors import UserError

from ..data import TaskData

if TYPE_CHECKING:
    from ..suites import TaskSpec
    from .ofa_loaders import Seq2SeqTaskData

# a generative loader returns Seq2SeqTaskData, every other loader TaskData
LoaderFn = Callable[["TaskSpec", "Path | None"], "TaskData | Seq2SeqTaskData"]
ArgsCheck = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class LoaderEntry:
    name: str
    fn: LoaderFn
    needs_data_root: bool = False
    check_args: ArgsCheck | None = None
    generative: bool = False  # returns sequence-to-sequence task data (image + text -> text), not TaskData


_LOADERS: dict[str, LoaderEntry] = {}


def register_loader(
    name: str,
    *,
    needs_data_root: bool = False,
    check_args: ArgsCheck | None = None,
    generative: bool = False,
) -> Callable[[LoaderFn], LoaderFn]:
    """Register a loader under ``name``. ``needs_data_root`` marks formats read from disk (a suite with
    one needs ``--data-root``); ``check_args`` validates ``task_spec.args`` (raise UserError);
    ``generative`` loaders return their own sequence-to-sequence task data (``ofa_loaders``), which
    the harness runs on an encoder-decoder backbone."""

    def deco(fn: LoaderFn) -> LoaderFn:
        if name in _LOADERS and _LOADERS[name].fn is not fn:
            raise ValueError(f"a dataset loader named {name!r} is already registered")
        _LOADERS[name] = LoaderEntry(name, fn, needs_data_root, check_args, generative)
        return fn

    return deco


def list_loaders() -> list[str]:
    return sorted(_LOADERS)


def loader_entry(name: str) -> LoaderEntry:
    if name not in _LOADERS:
        raise UserError(
            f"unknown dataset loader {name!r}; known loaders: {', '.join(list_loaders())}. "
            "Set the task's `loader` to one of these."
        )
    return _LOADERS[name]


def load_task(task_spec: TaskSpec, data_root: Path | None) -> TaskData | Seq2SeqTaskData:
    """Load one suite task. The suite's ``class_names`` (when given) and ``templates`` override the
    loader's, because the suite file is what results cite."""
    entry = loader_entry(task_spec.loader)
    if entry.needs_data_root and data_root is None:
        raise UserError(
            f"task {task_spec.name!r} (loader {entry.name!r}) reads its dataset from disk: "
            "pass --data-root FOLDER"
        )
    if entry.check_args is not None:
        try:
            entry.check_args(task_spec.args)
        except UserError as err:
            raise UserError(f"task {task_spec.name!r}: {err}") from None
    # Loaders get their own copy of args, so nothing they do leaks into the (frozen) suite.
    loaded = entry.fn(replace(task_spec, args=copy.deepcopy(dict(task_spec.args))), data_root)
    if entry.generative:
        return loaded  # no class names or templates: image + text -> text
    data = cast(TaskData, loaded)
    names = list(task_spec.class_names) if task_spec.class_names else list(data.class_names)
    if task_spec.class_names and len(task_spec.class_names) != len(data.class_names):
        raise UserError(
            f"task {task_spec.name!r}: the suite gives {len(task_spec.class_names)} class_names but the "
            f"{entry.name!r} loader produced {len(data.class_names)} "
            f"({', '.join(data.class_names)}); "
            "make the suite's class_names list match, or drop it to use the loader's names"
        )
    templates = list(task_spec.templates) if task_spec.templates else list(data.templates)
    meta = {"loader": entry.name, "args": copy.deepcopy(dict(task_spec.args)), **data.meta}
    return TaskData(
        name=task_spec.name,
        class_names=names,
        templates=templates,
        splits=data.splits,
        image_size=data.image_size,
        meta=meta,
    )
