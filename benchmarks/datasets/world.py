"""Loader ``world``: a task of the synthetic world (benchmarks/synthetic/tasks.py), generated on the
fly; ``data_root`` is not used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import TaskData, TensorImageDataset
from ._args import REQUIRED, check_choice, check_range, read_args
from .registry import FORMATS, DatasetFormat

if TYPE_CHECKING:
    from ..suites import TaskSpec

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "task": (str, REQUIRED),
    "n_train": (int, 1000),
    "n_val": (int, 200),
    "n_test": (int, 500),
    "seed": (int, 0),
}


def check_args(args: Mapping[str, Any]) -> None:
    from ..synthetic.tasks import TASKS

    a = read_args("world", args, SCHEMA)
    check_choice("world", "task", a["task"], tuple(TASKS))
    check_range("world", "n_train", a["n_train"], len(TASKS[a["task"]].class_names))
    for key in ("n_val", "n_test", "seed"):
        check_range("world", key, a[key], 0)


def load_world_task(task_spec: TaskSpec, data_root: Path | None) -> TaskData:
    from ..synthetic.tasks import TASKS, make_task_split
    from ..synthetic.world import WORLD_VERSION

    check_args(task_spec.args)
    a = read_args("world", task_spec.args, SCHEMA)
    task = TASKS[a["task"]]
    splits, hashes = {}, {}
    for split in ("train", "val", "test"):
        if a[f"n_{split}"] == 0:
            continue
        images, labels = make_task_split(task.name, a[f"n_{split}"], a["seed"], split)
        splits[split] = TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels))
        hashes[split] = splits[split].sha256()
    return TaskData(
        name=task_spec.name,
        class_names=list(task.class_names),
        templates=list(task.templates),
        splits=splits,
        image_size=32,
        meta={"loader": "world", "world": WORLD_VERSION, "args": a, "sha256": hashes},
    )


FORMATS.register("world", DatasetFormat(load_world_task, check_args=check_args))
