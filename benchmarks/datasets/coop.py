"""Loader ``coop``: the 11 few-shot datasets in the folders CoOp (KaiyangZhou/CoOp, ``DATASETS.md``)
reads, under ``--data-root``:

* nine datasets: ``<folder>/split_zhou_<Name>.json`` = ``{"train"|"val"|"test": [[relpath, label,
  classname], ...]}``, paths relative to the image folder (StanfordCars: to the dataset folder);
* FGVCAircraft: ``fgvc_aircraft/variants.txt`` (class names, label = line order) and
  ``images_variant_{train,val,test}.txt`` (``<image id> <variant name...>``), images in ``images/``;
* ImageNet: ``imagenet/classnames.txt`` (``<wnid> <name...>``), ``images/train/<wnid>/*`` and
  ``images/val/<wnid>/*``; the official val is the test set (CoOp also uses it as val: here there
  is no val split, and a few-shot run selects on held-out training images instead).

Split order is the split file's, so few-shot picks match CoOp's for the same seed (ImageNet images
are listed in sorted order; CoOp lists them in unsorted ``os.listdir`` order, which differs between
file systems). ``subsample: base|new`` keeps the first ceil(n/2) classes (by sorted label) or the rest,
relabelled from 0, after few-shot sampling, as CoCoOp's base-to-new protocol does. A ``base`` task
trains and tests on the base classes; a ``new`` task trains (and selects) on the base classes and
tests on the new ones: its meta carries ``eval_class_names``, and the harness scores the test split
with a head built for those names (so only methods with a CLIP text head can run it).
"""

from __future__ import annotations

import math
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
    read_lines,
    require_dir,
    require_file,
    safe_relpath,
)
from .registry import FORMATS, Archive, Download

if TYPE_CHECKING:
    from ..suites import TaskSpec

# name -> (folder under data root, image folder under it, split file or None)
DATASETS: dict[str, tuple[str, str, str | None]] = {
    "ImageNet": ("imagenet", "images", None),
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "OxfordPets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "StanfordCars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "OxfordFlowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": ("food-101", "images", "split_zhou_Food101.json"),
    "FGVCAircraft": ("fgvc_aircraft", "images", None),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "DescribableTextures": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
HINT = "lay the dataset out as CoOp's DATASETS.md describes (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "dataset": (str, REQUIRED),
    "folder": ((str, type(None)), None),
    "subsample": (str, "all"),
    "fewshot_index": (bool, True),
    **IMAGE_ARGS,
}


def check_args(args: Mapping[str, Any]) -> None:
    a = read_args("coop", args, SCHEMA)
    check_choice("coop", "dataset", a["dataset"], tuple(DATASETS))
    check_choice("coop", "subsample", a["subsample"], ("all", "base", "new"))
    check_image_args("coop", a)


def _json_split(path: Path, image_dir: str, what: str) -> tuple[dict[str, SplitListing], dict[int, str]]:
    data = read_json(path, what)
    if not isinstance(data, dict) or not all(k in data for k in ("train", "val", "test")):
        raise UserError(f"{what}: {path} must be a JSON object with 'train', 'val' and 'test' lists")
    prefix = f"{image_dir}/" if image_dir else ""
    names: dict[int, str] = {}
    splits: dict[str, SplitListing] = {}
    for split in ("train", "val", "test"):
        items = data[split]
        if not isinstance(items, list):
            raise UserError(f"{what}: {path}: {split!r} must be a list of [path, label, classname]")
        rels: list[str] = []
        labels: list[int] = []
        for i, item in enumerate(items):
            ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
            ok = (
                ok and isinstance(item[1], int) and not isinstance(item[1], bool) and isinstance(item[2], str)
            )
            if not ok:
                raise UserError(
                    f"{what}: {path}: {split}[{i}] is {item!r}; "
                    "expected [relative path, int label, class name]"
                )
            rel, label, cname = item
            if split != "train" and label not in names:
                raise UserError(
                    f"{what}: {path}: {split}[{i}] ({rel}) has unknown label {label} "
                    f"({cname!r}); no training image has that label"
                )
            if names.setdefault(label, cname) != cname:
                raise UserError(
                    f"{what}: {path}: {split}[{i}] ({rel}) gives label {label} the class name {cname!r}, but "
                    f"earlier items call it {names[label]!r}"
                )
            rels.append(prefix + safe_relpath(rel, path, what))
            labels.append(label)
        splits[split] = SplitListing(path, rels, labels)
    return splits, names


def _class_list(names: dict[int, str], source: Path, what: str) -> list[str]:
    n = max(names) + 1 if names else 0
    missing = [i for i in range(n) if i not in names]
    if missing or min(names, default=0) < 0:
        raise UserError(
            f"{what}: {source}: label(s) {missing[:5] or sorted(y for y in names if y < 0)} have no training "
            "images (labels must run 0..n-1 and every class needs training images)"
        )
    return [names[i] for i in range(n)]


def _aircraft(root: Path, what: str) -> tuple[dict[str, SplitListing], list[str]]:
    variants = require_file(root / "variants.txt", what, HINT)
    class_names = read_lines(variants, what)
    label_of = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, SplitListing] = {}
    for split in ("train", "val", "test"):
        path = require_file(root / f"images_variant_{split}.txt", what, HINT)
        rels: list[str] = []
        labels: list[int] = []
        for n, line in enumerate(read_lines(path, what), 1):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise UserError(
                    f"{what}: {path} line {n}: unknown label (variant {variant!r} is not in {variants.name})"
                )
            rels.append(f"images/{safe_relpath(image_id, path, what)}.jpg")
            labels.append(label_of[variant])
        splits[split] = SplitListing(path, rels, labels)
    return splits, class_names


def _list_images(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _imagenet(root: Path, what: str) -> tuple[dict[str, SplitListing], list[str]]:
    names_file = require_file(
        root / "classnames.txt", what, HINT + " (classnames.txt: '<wnid> <class name>')"
    )
    wnid_name: dict[str, str] = {}
    for line in read_lines(names_file, what):
        wnid, _, name = line.partition(" ")
        wnid_name[wnid] = name.strip()
    train_dir = require_dir(root / "images" / "train", what, HINT)
    val_dir = require_dir(root / "images" / "val", what, HINT)
    folders = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f for f in folders if f not in wnid_name]
    if unknown:
        raise UserError(f"{what}: {train_dir} has class folder(s) {unknown[:5]} not listed in {names_file}")
    label_of = {f: i for i, f in enumerate(folders)}
    splits: dict[str, SplitListing] = {}
    for split, folder in (("train", train_dir), ("test", val_dir)):
        sub = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        extra = [f for f in sub if f not in label_of]
        if extra:
            raise UserError(
                f"{what}: {folder} has class folder(s) {extra[:5]} (unknown labels) that {train_dir} lacks"
            )
        rels: list[str] = []
        labels: list[int] = []
        for f in sub:
            for name in _list_images(folder / f):
                rels.append(f"images/{folder.name}/{f}/{name}")
                labels.append(label_of[f])
        splits[split] = SplitListing(folder, rels, labels)
    return splits, [wnid_name[f] for f in folders]


def list_coop(task_spec: TaskSpec, data_root: Path) -> TaskListing:
    a = read_args("coop", task_spec.args, SCHEMA)
    name = a["dataset"]
    default_folder, image_dir, split_file = DATASETS[name]
    root = Path(data_root) / (a["folder"] or default_folder)
    what = f"task {task_spec.name!r} (coop {name})"
    require_dir(root, what, HINT)
    selection: str | None = "coop"
    if name == "ImageNet":
        splits, class_names = _imagenet(root, what)
        selection = "heldout"
    elif name == "FGVCAircraft":
        splits, class_names = _aircraft(root, what)
    else:
        assert split_file is not None
        path = require_file(
            root / split_file, what, f"download {split_file} from the links in CoOp's DATASETS.md"
        )
        splits, names = _json_split(path, image_dir, what)
        class_names = _class_list(names, path, what)
    label_map = test_label_map = None
    if a["subsample"] != "all":
        labels = sorted(set(splits["train"].labels))
        m = math.ceil(len(labels) / 2)
        label_map = {y: i for i, y in enumerate(labels[:m])}
        if a["subsample"] == "new":  # train (and select) on base classes, test on the new ones
            test_label_map = {y: i for i, y in enumerate(labels[m:])}
    return TaskListing(
        task=task_spec.name,
        loader="coop",
        root=root,
        class_names=class_names,
        splits=splits,
        label_map=label_map,
        test_label_map=test_label_map,
        meta={"dataset": name, "subsample": a["subsample"]},
        few_shot_selection=selection,
        index_dir=root / "split_fewshot" if a["fewshot_index"] else None,
    )


COOP_DOCS = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
SOURCES: dict[str, str] = {
    "ImageNet": "ILSVRC-2012 train + val from https://image-net.org (login); classnames.txt from "
    + COOP_DOCS,
    "Caltech101": "101_ObjectCategories from https://data.caltech.edu/records/mzrjq-6wc02; split json: "
    + COOP_DOCS,
    "OxfordPets": "images.tar.gz + annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/; "
    "split json: " + COOP_DOCS,
    "StanfordCars": "cars_train, cars_test, devkit (the original Stanford site is gone; mirrors are "
    "listed in the CoOp issues); split json: " + COOP_DOCS,
    "OxfordFlowers": "102flowers.tgz, imagelabels.mat from "
    "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/; cat_to_name.json + split json: " + COOP_DOCS,
    "Food101": "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/; "
    "split json: " + COOP_DOCS,
    "FGVCAircraft": "fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
    "(use its data/ folder as fgvc_aircraft/)",
    "SUN397": "SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/; split json: " + COOP_DOCS,
    "DescribableTextures": "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/; split json: "
    + COOP_DOCS,
    "EuroSAT": "EuroSAT.zip (RGB, folder 2750/) from https://github.com/phelber/EuroSAT; split json: "
    + COOP_DOCS,
    "UCF101": "UCF-101-midframes.zip (middle frames) + split json from " + COOP_DOCS,
}

VGG = "https://www.robots.ox.ac.uk/~vgg/data"
# Dataset name -> archives of its images from the original site (CoOp's split json by hand; the
# FGVCAircraft archive holds its splits, so nothing is left to fetch by hand).
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "FGVCAircraft": (
        Archive(
            f"{VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
            "fgvc_aircraft",
            "fgvc-aircraft-2013b/data",
        ),
    ),
    "DescribableTextures": (Archive(f"{VGG}/dtd/download/dtd-r1.0.1.tar.gz", "dtd", "dtd"),),
    "OxfordPets": (
        Archive(f"{VGG}/pets/data/images.tar.gz", "oxford_pets"),
        Archive(f"{VGG}/pets/data/annotations.tar.gz", "oxford_pets"),
    ),
    "OxfordFlowers": (
        Archive(f"{VGG}/flowers/102/102flowers.tgz", "oxford_flowers"),
        Archive(f"{VGG}/flowers/102/imagelabels.mat", "oxford_flowers"),
    ),
    "Food101": (Archive("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101", "food-101"),),
    "EuroSAT": (Archive("https://madm.dfki.de/files/sentinel/EuroSAT.zip", "eurosat"),),
    "SUN397": (Archive("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "sun397"),),
}


def _download(task_spec: TaskSpec) -> Download | None:
    archives = ARCHIVES.get(str(task_spec.args.get("dataset")), ())
    return Download(archives) if archives else None


def _how_to_get(task_spec: TaskSpec) -> str:
    return SOURCES.get(str(task_spec.args.get("dataset")), COOP_DOCS)


FORMATS.register("coop", disk_format("coop", list_coop, SCHEMA, check_args, _how_to_get, _download))
