"""scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, 10 classes): a small real
dataset that needs no download.

Images are scaled from 0..16 to 0..255, upscaled to ``image_size`` and replicated to 3 channels.
Splits are stratified and deterministic: per class (in label order) the examples are permuted with
``seed``, then the first ``train_per_class`` go to train, the next ``val_per_class`` to val, and the
next ``test_per_class`` (all the rest when null) to test.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from petlbench.errors import UserError

from ..data import TaskData, TensorImageDataset
from ._args import check_choice, check_range, read_args
from .registry import FORMATS, DatasetFormat

if TYPE_CHECKING:
    from ..suites import TaskSpec

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.")
SMALLEST_CLASS = 174  # examples of digit 8, the rarest class in load_digits

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "train_per_class": (int, 20),
    "val_per_class": (int, 10),
    "test_per_class": ((int, type(None)), None),
    "image_size": (int, 32),
    "seed": (int, 0),
    "interpolation": (str, "nearest"),
}


def check_args(args: Mapping[str, Any]) -> None:
    a = read_args("digits", args, SCHEMA)
    check_range("digits", "train_per_class", a["train_per_class"], 1)
    check_range("digits", "val_per_class", a["val_per_class"], 0)
    if a["test_per_class"] is not None:
        check_range("digits", "test_per_class", a["test_per_class"], 1)
    check_range("digits", "image_size", a["image_size"], 8, 1024)
    check_range("digits", "seed", a["seed"], 0)
    check_choice("digits", "interpolation", a["interpolation"], ("nearest", "bilinear"))
    used = a["train_per_class"] + a["val_per_class"] + (a["test_per_class"] or 1)
    if used > SMALLEST_CLASS:
        raise UserError(
            f"loader 'digits': train_per_class + val_per_class + test_per_class = {used} but the smallest "
            f"class has only {SMALLEST_CLASS} examples; lower the per-class counts"
        )


@functools.lru_cache(maxsize=1)
def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise UserError("the 'digits' loader needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)  # cached: shared by every later load in this process
    labels.setflags(write=False)
    return images, labels


def _to_uint8_rgb(images: np.ndarray, size: int, interpolation: str) -> torch.Tensor:
    x = torch.from_numpy(images * (255.0 / 16.0)).float()[:, None]  # (N, 1, 8, 8) in 0..255
    if size != x.shape[-1]:
        if interpolation == "nearest":
            x = F.interpolate(x, size=(size, size), mode="nearest-exact")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


def split_indices(
    labels: np.ndarray, train: int, val: int, test: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Stratified per-class split; within each split the order is shuffled (no class-sorted batches)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        stop = train + val + (test if test is not None else len(idx))
        parts["train"].append(idx[:train])
        parts["val"].append(idx[train : train + val])
        parts["test"].append(idx[train + val : stop])
    return {k: rng.permutation(np.concatenate(v)) for k, v in parts.items() if sum(map(len, v))}


def load_digits_task(task_spec: TaskSpec, data_root: Path | None) -> TaskData:
    """scikit-learn digits (``data_root`` is not used: the data ships inside scikit-learn)."""
    check_args(task_spec.args)
    a = read_args("digits", task_spec.args, SCHEMA)
    raw, labels = _load_arrays()
    images = _to_uint8_rgb(raw, a["image_size"], a["interpolation"])
    splits: dict[str, TensorImageDataset] = {}
    hashes: dict[str, str] = {}
    index = split_indices(labels, a["train_per_class"], a["val_per_class"], a["test_per_class"], a["seed"])
    for name, idx in index.items():
        ds = TensorImageDataset(images[torch.from_numpy(idx)], torch.from_numpy(labels[idx]))
        splits[name] = ds
        hashes[name] = ds.sha256()
    return TaskData(
        name=task_spec.name,
        class_names=list(CLASS_NAMES),
        templates=list(TEMPLATES),
        splits=splits,
        image_size=a["image_size"],
        meta={
            "loader": "digits",
            "source": "sklearn.datasets.load_digits",
            "args": a,
            "source_sha256": hashlib.sha256(raw.tobytes() + labels.tobytes()).hexdigest(),
            "sha256": hashes,
        },
    )


FORMATS.register("digits", DatasetFormat(load_digits_task, check_args=check_args))
