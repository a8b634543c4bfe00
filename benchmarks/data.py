"""What a loader hands the harness: a task's class names, prompt templates and split datasets.

Images travel as uint8 tensors (N, 3, H, W): small, exact (hashable bytes), and converted to float
pixels only per batch by the harness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from petlbench.errors import UserError

SPLIT_NAMES = ("train", "val", "test", "trainval")


class TensorImageDataset(Dataset):
    """In-memory images: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,).

    ``__getitem__`` returns ``(uint8 (3, H, W) tensor, int label)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                "images must be a uint8 tensor of shape (N, 3, H, W), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match the images, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        self.images = images
        self.labels = labels.to(torch.long)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def sha256(self) -> str:
        """Hash of the exact image and label bytes (recorded as data provenance)."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()


def _split_labels(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(cast(Sized, dataset)))], dtype=torch.long)


@dataclass
class TaskData:
    """One loaded task. ``splits`` keys are among train / val / test / trainval."""

    name: str
    class_names: list[str]
    templates: list[str]
    splits: Mapping[str, Dataset]
    image_size: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Dataset:
        if name not in self.splits:
            raise UserError(
                f"task {self.name!r} has no split {name!r}; available splits: {', '.join(self.splits)}. "
                "Pick one of these in the suite protocol (train_split / selection_split / eval_split)."
            )
        return self.splits[name]

    def validate(self) -> None:
        """Refuse data a run would silently mis-score: labels outside the class list, empty classes
        in train, templates without a slot for the class name."""
        where = f"task {self.name!r}"
        if not self.class_names:
            raise UserError(f"{where}: no class names; the loader or the suite must provide them")
        if len(set(self.class_names)) != len(self.class_names):
            dupes = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            raise UserError(f"{where}: duplicate class names {dupes}; class names must be unique")
        if not self.templates:
            raise UserError(f"{where}: no prompt templates; give at least one like 'a photo of a {{}}.'")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise UserError(
                    f"{where}: prompt template {t!r} must contain exactly one '{{}}' for the class name"
                )
        unknown = sorted(set(self.splits) - set(SPLIT_NAMES))
        if unknown:
            raise UserError(f"{where}: unknown split names {unknown}; expected some of {list(SPLIT_NAMES)}")
        if "train" not in self.splits:
            raise UserError(f"{where}: no 'train' split; found {', '.join(self.splits) or 'none'}")
        n = len(self.class_names)
        for split_name, dataset in self.splits.items():
            labels = _split_labels(dataset)
            if labels.numel() == 0:
                raise UserError(f"{where}: split {split_name!r} is empty")
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= n:
                raise UserError(
                    f"{where}: split {split_name!r} has labels in [{lo}, {hi}] but only {n} class names "
                    f"(labels must be in 0..{n - 1}); check the class_names list or the label files"
                )
            if split_name == self.meta.get("class_coverage_split", "train"):
                counts = torch.bincount(labels, minlength=n)
                empty = [self.class_names[i] for i in range(n) if counts[i] == 0]
                if empty:
                    raise UserError(
                        f"{where}: classes with no examples in split {split_name!r}: {empty}; "
                        "increase the training set size or drop those classes"
                    )
