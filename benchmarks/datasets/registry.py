"""The on-disk formats by name (``FORMATS``), each registered once with everything the harness does
with it: load a task, list it without decoding (``bench data check``), say where its data comes
from and what ``bench data prepare --download`` can fetch. Adding a format is one module.

Kept apart from the package's ``__init__`` so a format module imports the registry without importing
the package that imports it (no import circle)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from petlbench.errors import UserError
from petlbench.registry import Registry

from ..data import TaskData

if TYPE_CHECKING:
    from ..suites import TaskSpec
    from ._files import TaskListing
    from .ofa_loaders import Seq2SeqTaskData

# a generative loader returns Seq2SeqTaskData, every other loader TaskData
LoaderFn = Callable[["TaskSpec", "Path | None"], "TaskData | Seq2SeqTaskData"]
ArgsCheck = Callable[[Mapping[str, Any]], None]
Lister = Callable[["TaskSpec", Path], "TaskListing"]


@dataclass(frozen=True)
class Archive:
    """One public archive and where its content goes."""

    url: str
    dest: str  # folder under the data root
    strip: str = ""  # leading folder inside the archive whose content goes to ``dest`` ("" = none)
    sha256: str | None = None  # pinned when known; otherwise recorded at download

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


@dataclass(frozen=True)
class Download:
    """What ``bench data prepare --download`` can fetch for one task: public ``archives``, unpacked
    under the data root by the harness, or ``fetch`` for data kept in its own cache (a Hub dataset),
    which returns what it did, one line each."""

    archives: tuple[Archive, ...] = ()
    fetch: Callable[[], list[str]] | None = None


@dataclass(frozen=True)
class DatasetFormat:
    """One on-disk (or generated) format. ``needs_data_root`` marks formats read from disk (a suite with
    one needs ``--data-root``); ``check_args`` validates ``task_spec.args`` (raise UserError) when the
    suite loads; ``generative`` loaders return their own sequence-to-sequence task data
    (``ofa_loaders``), which the harness runs on an encoder-decoder backbone. ``lister`` reads a
    task's layout and split files without opening an image (None: nothing on disk to check);
    ``download`` says what can be fetched for a task (None: nothing); ``how_to_get`` tells the user
    where the data comes from."""

    loader: LoaderFn
    needs_data_root: bool = False
    check_args: ArgsCheck | None = None
    generative: bool = False
    lister: Lister | None = None
    download: Callable[[TaskSpec], Download | None] | None = None
    how_to_get: str | Callable[[TaskSpec], str] = "see the loader's documentation"

    def source_of(self, task: TaskSpec) -> str:
        return self.how_to_get if isinstance(self.how_to_get, str) else self.how_to_get(task)

    def download_of(self, task: TaskSpec) -> Download | None:
        return self.download(task) if self.download is not None else None


FORMATS: Registry[DatasetFormat] = Registry(
    "dataset loader", kinds="loaders", hint="Set the task's `loader` to one of these."
)


def list_task(task: TaskSpec, data_root: Path) -> TaskListing | None:
    """The task's listing (no image opened), or None for a format whose data is not on disk."""
    fmt = FORMATS.get(task.loader)
    if fmt.lister is None:
        return None
    if fmt.check_args is not None:
        fmt.check_args(task.args)
    return fmt.lister(task, data_root)


def load_task(task_spec: TaskSpec, data_root: Path | None) -> TaskData | Seq2SeqTaskData:
    """Load one suite task. The suite's ``class_names`` (when given) and ``templates`` override the
    loader's, because the suite file is what results cite."""
    entry = FORMATS.get(task_spec.loader)
    if entry.needs_data_root and data_root is None:
        raise UserError(
            f"task {task_spec.name!r} (loader {task_spec.loader!r}) reads its dataset from disk: "
            "pass --data-root FOLDER"
        )
    if entry.check_args is not None:
        try:
            entry.check_args(task_spec.args)
        except UserError as err:
            raise UserError(f"task {task_spec.name!r}: {err}") from None
    # Loaders get their own copy of args, so nothing they do leaks into the (frozen) suite.
    loaded = entry.loader(replace(task_spec, args=copy.deepcopy(dict(task_spec.args))), data_root)
    if entry.generative:
        return loaded  # no class names or templates: image + text -> text
    data = cast(TaskData, loaded)
    names = list(task_spec.class_names) if task_spec.class_names else list(data.class_names)
    if task_spec.class_names and len(task_spec.class_names) != len(data.class_names):
        raise UserError(
            f"task {task_spec.name!r}: the suite gives {len(task_spec.class_names)} class_names but the "
            f"{task_spec.loader!r} loader produced {len(data.class_names)} "
            f"({', '.join(data.class_names)}); "
            "make the suite's class_names list match, or drop it to use the loader's names"
        )
    templates = list(task_spec.templates) if task_spec.templates else list(data.templates)
    meta = {"loader": task_spec.loader, "args": copy.deepcopy(dict(task_spec.args)), **data.meta}
    return TaskData(
        name=task_spec.name,
        class_names=names,
        templates=templates,
        splits=data.splits,
        image_size=data.image_size,
        meta=meta,
    )
