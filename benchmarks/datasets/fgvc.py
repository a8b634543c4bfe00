"""Loader ``fgvc``: the five FGVC datasets in VPT's layout (``KMnP/vpt:src/data/datasets/json_dataset.py``),
under ``--data-root``::

    <folder>/train.json  val.json  test.json      # each {"<image path>": <class id>, ...}
    <folder>/<image dir>/...                      # CUB, NABirds: images/; Stanford Dogs: Images/;
                                                  # Stanford Cars, Oxford Flowers: the folder itself

Class ids are remapped to contiguous labels in sorted order. VPT builds that map per split, so a
split missing a class silently shifts every later label; here the map comes from train and an id
that train lacks is an error. The default preprocessing is VPT's eval transform
(``KMnP/vpt:src/data/transforms.py:14-16, 33-40``): ``Resize(256)`` (shorter side to 256) and
``CenterCrop(224)``, torchvision on a PIL image (``json_dataset.py:108``, ``default_loader``), whose
default interpolation is bilinear and which calls PIL's resize (antialiased when downsampling); here
PIL's bilinear resize directly (``resize_crop``, ``interpolation: bilinear``), same sizes and crop
offsets. VPT's train transform (RandomCrop + flip) is augmentation, not this loader's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petlbench.errors import UserError

from ._args import REQUIRED, check_choice, read_args
from ._files import (
    IMAGE_ARGS,
    SplitListing,
    TaskListing,
    check_image_args,
    disk_format,
    read_json,
    require_dir,
    require_file,
    safe_relpath,
)
from .registry import FORMATS

if TYPE_CHECKING:
    from ..suites import TaskSpec

# name -> (default folder under data root, image folder, classes)
DATASETS: dict[str, tuple[str, str, int]] = {
    "CUB": ("CUB_200_2011", "images", 200),
    "NABirds": ("nabirds", "images", 555),
    "StanfordDogs": ("Stanford-dogs", "Images", 120),
    "StanfordCars": ("Stanford-cars", "", 196),
    "OxfordFlowers": ("OxfordFlower", "", 102),
}
HINT = "VPT's README links the FGVC split jsons ({train,val,test}.json: image path -> class id)"

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "dataset": (str, REQUIRED),
    "folder": ((str, type(None)), None),
    "image_dir": ((str, type(None)), None),
    "train_file": (str, "train.json"),
    "class_names": ((list, type(None)), None),
    # VPT eval transform: Resize(256) (torchvision default: bilinear, on PIL), CenterCrop(224)
    # (KMnP/vpt src/data/transforms.py:14-16, 35-36)
    **{**IMAGE_ARGS, "resize": (str, "resize_crop"), "interpolation": (str, "bilinear")},
}


def check_args(args: Mapping[str, Any]) -> None:
    a = read_args("fgvc", args, SCHEMA)
    check_choice("fgvc", "dataset", a["dataset"], tuple(DATASETS))
    check_image_args("fgvc", a)


def _read_split(path: Path, what: str) -> list[tuple[str, int]]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path} must be a JSON object {{image path: class id}}")
    out = []
    for rel, cid in data.items():
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise UserError(f"{what}: {path}: {rel!r} has class id {cid!r}; expected an integer")
        out.append((rel, cid))
    return out


def list_fgvc(task_spec: TaskSpec, data_root: Path) -> TaskListing:
    a = read_args("fgvc", task_spec.args, SCHEMA)
    folder, image_dir, expected = DATASETS[a["dataset"]]
    root = Path(data_root) / (a["folder"] or folder)
    image_dir = a["image_dir"] if a["image_dir"] is not None else image_dir
    what = f"task {task_spec.name!r} (fgvc {a['dataset']})"
    require_dir(root, what, HINT)
    raw: dict[str, tuple[Path, list[tuple[str, int]]]] = {}
    for split, file_name in (("train", a["train_file"]), ("val", "val.json"), ("test", "test.json")):
        path = require_file(root / file_name, what, HINT)
        raw[split] = (path, _read_split(path, what))
    class_ids = sorted({cid for _, cid in raw["train"][1]})
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    prefix = f"{image_dir}/" if image_dir else ""
    splits: dict[str, SplitListing] = {}
    for split, (path, items) in raw.items():
        unknown = sorted({cid for _, cid in items if cid not in label_of})
        if unknown:
            raise UserError(
                f"{what}: {path} has unknown label(s) (class ids {unknown[:5]}) that {raw['train'][0].name} "
                "never uses"
            )
        splits[split] = SplitListing(
            path,
            [prefix + safe_relpath(rel, path, what) for rel, _ in items],
            [label_of[c] for _, c in items],
        )
    names = a["class_names"]
    if names is not None and len(names) != len(class_ids):
        raise UserError(
            f"{what}: class_names has {len(names)} entries but train has {len(class_ids)} classes"
        )
    return TaskListing(
        task=task_spec.name,
        loader="fgvc",
        root=root,
        class_names=[str(c) for c in names] if names is not None else [str(c) for c in class_ids],
        splits=splits,
        meta={"dataset": a["dataset"], "expected_classes": expected, "class_ids": class_ids},
    )


HOW_TO_GET = (
    "the images from each dataset's site and VPT's {train,val,test}.json (links in KMnP/vpt's README)"
)
FORMATS.register("fgvc", disk_format("fgvc", list_fgvc, SCHEMA, check_args, HOW_TO_GET))
