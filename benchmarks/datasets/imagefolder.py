"""Loaders ``imagefolder`` and ``hf``.

``imagefolder`` reads ``<data root>/<path>/<split>/<class name>/<image>`` (torchvision / HF
``imagefolder`` layout). Split folders ``train``, ``val`` (or ``validation``) and ``test``; class
names are train's sub-folders in sorted order, and val/test may only use those.

``hf`` reads a HuggingFace dataset: a local folder (``path``, relative to ``--data-root``) holding
either an imagefolder layout or parquet files ``<split>-*.parquet`` / ``<split>/*.parquet`` with an
image column (``{"bytes", "path"}`` structs, as ``datasets`` writes them) and an integer label
column; or, only when online, a Hub ``id`` through the ``datasets`` package. Parquet needs
``pyarrow``; a Hub id needs ``datasets`` and a network (``HF_HUB_OFFLINE=1`` refuses it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from petlbench.errors import UserError

from ..data import TaskData
from ._args import read_args
from ._files import (
    IMAGE_ARGS,
    SplitListing,
    TaskListing,
    _resize,
    build_task,
    check_image_args,
    disk_format,
    image_args_of,
    require_dir,
)
from .registry import FORMATS, DatasetFormat, Download

if TYPE_CHECKING:
    from ..suites import TaskSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {"path": (str, "."), **IMAGE_ARGS}
HF_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "id": ((str, type(None)), None),
    "path": ((str, type(None)), None),
    "image_column": (str, "image"),
    "label_column": (str, "label"),
    "class_names": ((list, type(None)), None),
    **IMAGE_ARGS,
}


def check_args(args: Mapping[str, Any]) -> None:
    check_image_args("imagefolder", read_args("imagefolder", args, SCHEMA))


def check_hf_args(args: Mapping[str, Any]) -> None:
    a = read_args("hf", args, HF_SCHEMA)
    check_image_args("hf", a)
    if (a["id"] is None) == (a["path"] is None):
        raise UserError("loader 'hf': give exactly one of 'id' (a Hub dataset) or 'path' (a local folder)")


def _list_folder(task: str, root: Path, what: str) -> TaskListing:
    require_dir(root, what, "expected <split>/<class name>/<image> folders")
    found: dict[str, Path] = {}
    for split, names in SPLIT_DIRS.items():
        for n in names:
            if (root / n).is_dir():
                found[split] = root / n
                break
    if "train" not in found:
        raise UserError(f"{what}: expected a folder {root / 'train'} with one sub-folder per class")
    class_names = sorted(
        p.name for p in found["train"].iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_names:
        raise UserError(f"{what}: {found['train']} has no class folders")
    label_of = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, SplitListing] = {}
    for split, folder in found.items():
        rels: list[str] = []
        labels: list[int] = []
        for cdir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if cdir.name not in label_of:
                raise UserError(
                    f"{what}: {cdir} is an unknown label: class {cdir.name!r} "
                    f"has no folder in {found['train']}"
                )
            images = sorted(
                p.name
                for p in cdir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not images and split == "train":
                raise UserError(
                    f"{what}: class folder {cdir} is empty (an empty class); add images or remove it"
                )
            for name in images:
                rels.append(f"{folder.name}/{cdir.name}/{name}")
                labels.append(label_of[cdir.name])
        splits[split] = SplitListing(folder, rels, labels)
    return TaskListing(task=task, loader="imagefolder", root=root, class_names=class_names, splits=splits)


def list_imagefolder(task_spec: TaskSpec, data_root: Path) -> TaskListing:
    a = read_args("imagefolder", task_spec.args, SCHEMA)
    return _list_folder(task_spec.name, Path(data_root) / a["path"], f"task {task_spec.name!r} (imagefolder)")


# ----- hf ---------------------------------------------------------------------------------------


class _RowImageDataset(Dataset):
    """Rows of (image, label) from parquet or a ``datasets`` split, decoded on access."""

    def __init__(self, images: Any, labels: list[int], image_args: dict[str, Any], where: str) -> None:
        self.images = images
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.image_args = image_args
        self.where = where

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        value = self.images[index]
        try:
            if isinstance(value, dict):
                im = (
                    Image.open(io.BytesIO(value["bytes"]))
                    if value.get("bytes")
                    else Image.open(value["path"])
                )
            else:
                im = value
            im.load()
            rgb = im.convert("RGB")
        except (OSError, SyntaxError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{self.where}: row {index} holds an unreadable image ({err})") from None
        a = self.image_args
        return _resize(rgb, a["image_size"], a["resize"], a["interpolation"]), int(self.labels[index])


def _parquet_splits(root: Path, a: Mapping[str, Any], what: str) -> dict[str, tuple[Any, list[int]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{what}: reading parquet needs pyarrow: pip install pyarrow") from None
    out: dict[str, tuple[Any, list[int]]] = {}
    for split, names in SPLIT_DIRS.items():
        files: list[Path] = []
        for n in names:
            files += sorted(root.glob(f"{n}-*.parquet")) + sorted(root.glob(f"{n}/*.parquet"))
            files += sorted(root.glob(f"data/{n}-*.parquet"))
        if not files:
            continue
        images: list[Any] = []
        labels: list[int] = []
        for f in files:
            try:
                table = pq.read_table(f, columns=[a["image_column"], a["label_column"]])
            except Exception as err:  # noqa: BLE001 - pyarrow raises many types
                raise UserError(
                    f"{what}: cannot read {f} ({err}); expected columns {a['image_column']!r}, "
                    f"{a['label_column']!r}"
                ) from None
            images += table.column(a["image_column"]).to_pylist()
            labels += [int(y) for y in table.column(a["label_column"]).to_pylist()]
        out[split] = (images, labels)
    if "train" not in out:
        raise UserError(f"{what}: no train parquet files in {root} (train-*.parquet or train/*.parquet)")
    return out


def _hub_splits(a: Mapping[str, Any], what: str) -> tuple[dict[str, tuple[Any, list[int]]], list[str] | None]:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise UserError(
            f"{what}: the Hub dataset {a['id']!r} cannot be loaded offline (HF_HUB_OFFLINE is set); download "
            "it where a network is available (`datasets` save_to_disk or the parquet files) and give 'path'"
        )
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{what}: loading a Hub id needs the datasets package: pip install datasets"
        ) from None
    ds = datasets.load_dataset(a["id"])
    out: dict[str, tuple[Any, list[int]]] = {}
    names = None
    for split, keys in SPLIT_DIRS.items():
        for key in keys:
            if key in ds:
                part = ds[key]
                out[split] = (part[a["image_column"]], [int(y) for y in part[a["label_column"]]])
                feature = part.features.get(a["label_column"])
                names = names or list(getattr(feature, "names", None) or []) or None
                break
    return out, names


def load_hf_task(task_spec: TaskSpec, data_root: Path | None) -> TaskData:
    a = read_args("hf", task_spec.args, HF_SCHEMA)
    what = f"task {task_spec.name!r} (hf)"
    names: list[str] | None = None
    if a["path"] is not None:
        if data_root is None:
            raise UserError(f"{what}: 'path' is relative to --data-root: pass --data-root FOLDER")
        root = Path(data_root) / a["path"]
        require_dir(root, what, "expected parquet files or an imagefolder layout")
        if not any(root.rglob("*.parquet")):
            listing = _list_folder(task_spec.name, root, what)
            listing.loader = "hf"
            return build_task(listing, image_args_of(a), task_spec.templates)
        rows = _parquet_splits(root, a, what)
    else:
        rows, names = _hub_splits(a, what)
    if a["class_names"] is not None:
        names = [str(c) for c in a["class_names"]]
    if names is None:
        n = 1 + max(max(labels) for _, labels in rows.values())
        names = [str(i) for i in range(n)]
    splits = {
        s: _RowImageDataset(imgs, labels, image_args_of(a), f"{what} split {s}")
        for s, (imgs, labels) in rows.items()
    }
    return TaskData(
        name=task_spec.name,
        class_names=names,
        templates=list(task_spec.templates),
        splits=splits,
        image_size=a["image_size"],
        meta={"loader": "hf", "source": a["id"] or a["path"], "preprocess": image_args_of(a)},
    )


HOW_TO_GET = "a <split>/<class>/<image> folder tree"
FORMATS.register("imagefolder", disk_format("imagefolder", list_imagefolder, SCHEMA, check_args, HOW_TO_GET))


def _cache_hub_dataset(hub_id: str) -> list[str]:
    """Fetch a Hub dataset into the ``datasets`` cache, where the ``hf`` loader reads it."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise UserError(f"{hub_id}: HF_HUB_OFFLINE is set; unset it on a machine with a network")
    try:
        import datasets
    except ImportError:
        raise UserError("a Hub dataset needs the datasets package: pip install datasets") from None
    datasets.load_dataset(hub_id)
    return [f"{hub_id} -> the datasets cache"]


def _download_hf(task_spec: TaskSpec) -> Download | None:
    hub_id = task_spec.args.get("id")
    return Download(fetch=lambda: _cache_hub_dataset(str(hub_id))) if hub_id else None


FORMATS.register(
    "hf",
    DatasetFormat(
        load_hf_task,
        check_args=check_hf_args,
        download=_download_hf,
        how_to_get="a HuggingFace dataset: set HF_HUB_OFFLINE=0 with a network, "
        "or save it locally and give 'path'",
    ),
)
