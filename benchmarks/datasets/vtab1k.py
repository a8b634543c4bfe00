"""Loader ``vtab1k``: VTAB-1k in the text layout of NOAH / SSF and most PETL repositories
(``NOAH:data/vtab-source/get_vtab1k.py``), under ``--data-root``::

    <folder>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <folder>/<task>/images/<split>/000000.jpg ...

Each split file has one ``<image path> <int label>`` line per image, paths relative to the task
folder. The splits map to the harness's names as train800 -> ``train``, val200 -> ``val``,
train800val200 -> ``trainval``, test -> ``test``: the final run trains on ``trainval`` and a search
scores on ``val`` after training on ``train`` (the runner does that switch). The default
preprocessing is VPT's: a plain resize to 224 x 224 (no crop, no flip) with TensorFlow's legacy
bilinear resize, ``interpolation: tf_bilinear`` (KMnP/vpt src/data/datasets/tf_dataset.py:5,
148-150: ``tf.image.resize`` under ``tensorflow.compat.v1``; see ``_files.tf_bilinear_resize``),
then [0, 1] and ImageNet mean/std, which the backbone applies (``vit-b16``). Two differences stay:
the resized values are rounded to uint8 (VPT keeps float32: at most 0.5/255 apart), and the images
are NOAH's JPEG re-encodings of the TFDS images VPT decodes directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petlbench.errors import UserError

from ._args import REQUIRED, check_range, read_args
from ._files import (
    IMAGE_ARGS,
    SplitListing,
    TaskListing,
    check_image_args,
    disk_format,
    read_lines,
    require_dir,
    require_file,
    safe_relpath,
)
from .registry import FORMATS

if TYPE_CHECKING:
    from ..suites import TaskSpec

# NOAH folder -> (group, number of classes) (KMnP/vpt tune_vtab.py)
TASKS: dict[str, tuple[str, int]] = {
    "caltech101": ("Natural", 102),
    "cifar": ("Natural", 100),
    "dtd": ("Natural", 47),
    "oxford_flowers102": ("Natural", 102),
    "oxford_iiit_pet": ("Natural", 37),
    "svhn": ("Natural", 10),
    "sun397": ("Natural", 397),
    "patch_camelyon": ("Specialized", 2),
    "eurosat": ("Specialized", 10),
    "resisc45": ("Specialized", 45),
    "diabetic_retinopathy": ("Specialized", 5),
    "clevr_count": ("Structured", 8),
    "clevr_dist": ("Structured", 6),
    "dmlab": ("Structured", 6),
    "kitti": ("Structured", 4),
    "dsprites_loc": ("Structured", 16),
    "dsprites_ori": ("Structured", 16),
    "smallnorb_azi": ("Structured", 18),
    "smallnorb_ele": ("Structured", 9),
}
SPLIT_FILES = {
    "train": "train800.txt",
    "val": "val200.txt",
    "trainval": "train800val200.txt",
    "test": "test.txt",
}
HINT = "build it with NOAH's data/vtab-source/get_vtab1k.py (one '<path> <label>' line per image)"

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "task": (str, REQUIRED),
    "folder": (str, "vtab-1k"),
    "num_classes": ((int, type(None)), None),
    "class_names": ((list, type(None)), None),
    # VPT: tf.image.resize(image, [224, 224]) under tensorflow.compat.v1 = legacy bilinear, no crop
    # (KMnP/vpt src/data/datasets/tf_dataset.py:5, 148-150)
    **{**IMAGE_ARGS, "resize": (str, "square"), "interpolation": (str, "tf_bilinear")},
}


def check_args(args: Mapping[str, Any]) -> None:
    a = read_args("vtab1k", args, SCHEMA)
    check_image_args("vtab1k", a)
    if a["num_classes"] is not None:
        check_range("vtab1k", "num_classes", a["num_classes"], 2)
    elif a["task"] not in TASKS:
        raise UserError(
            f"loader 'vtab1k': task {a['task']!r} is not one of the 19 VTAB tasks ({', '.join(TASKS)}); "
            "give num_classes for another task"
        )


def num_classes_of(a: Mapping[str, Any]) -> int:
    return int(a["num_classes"] if a["num_classes"] is not None else TASKS[a["task"]][1])


def list_vtab1k(task_spec: TaskSpec, data_root: Path) -> TaskListing:
    a = read_args("vtab1k", task_spec.args, SCHEMA)
    root = Path(data_root) / a["folder"] / a["task"]
    what = f"task {task_spec.name!r} (vtab1k {a['task']})"
    require_dir(root, what, HINT)
    n = num_classes_of(a)
    splits: dict[str, SplitListing] = {}
    for split, file_name in SPLIT_FILES.items():
        path = require_file(root / file_name, what, HINT)
        rels: list[str] = []
        labels: list[int] = []
        for lineno, line in enumerate(read_lines(path, what), 1):
            rel, _, label = line.rpartition(" ")
            try:
                y = int(label)
            except ValueError:
                y = None
            if not rel or y is None:
                raise UserError(
                    f"{what}: {path} line {lineno}: expected '<image path> <int label>', got {line!r}"
                )
            if not 0 <= y < n:
                raise UserError(
                    f"{what}: {path} line {lineno}: unknown label {y} ({rel}); "
                    f"the task has {n} classes (0..{n - 1})"
                )
            rels.append(safe_relpath(rel, path, what))
            labels.append(y)
        splits[split] = SplitListing(path, rels, labels)
    names = a["class_names"]
    if names is not None and len(names) != n:
        raise UserError(f"{what}: class_names has {len(names)} entries for {n} classes")
    class_names = [str(c) for c in names] if names is not None else [str(i) for i in range(n)]
    return TaskListing(
        task=task_spec.name,
        loader="vtab1k",
        root=root,
        class_names=class_names,
        splits=splits,
        meta={"vtab_task": a["task"], "group": TASKS.get(a["task"], ("?", n))[0]},
        # 1k images for up to 397 classes can leave a class out of train800 (the search set); every
        # class must be in train800val200, the final training set.
        class_coverage_split="trainval",
    )


HOW_TO_GET = (
    "export the task with NOAH's data/vtab-source/get_vtab1k.py (TFDS versions: KMnP/vpt VTAB_SETUP.md)"
)
FORMATS.register("vtab1k", disk_format("vtab1k", list_vtab1k, SCHEMA, check_args, HOW_TO_GET))
