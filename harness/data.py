"""Turn a task's datasets into what training needs: uint8 tensors at the backbone's resolution.

Small (few-shot, smoke) training sets are decoded and resized once and kept as uint8 tensors, so an
epoch costs no image decoding. Conversion to float pixels in [0, 1] happens per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from petlbench.benchmarks.data import TensorImageDataset


def materialize(dataset: Dataset, image_size: int, interpolation: str = "bicubic") -> TensorImageDataset:
    """Stack a dataset into uint8 tensors resized (once) to ``image_size``."""
    if isinstance(dataset, TensorImageDataset):
        images, labels = dataset.images, dataset.labels
    else:
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([torch.as_tensor(img) for img, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    if images.shape[-2:] != (image_size, image_size):
        images = resize_uint8(images, image_size, interpolation)
    return TensorImageDataset(images, labels)


def resize_uint8(
    images: torch.Tensor, size: int, interpolation: str = "bicubic", chunk: int = 512
) -> torch.Tensor:
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def subset(dataset: TensorImageDataset, indices: list[int]) -> TensorImageDataset:
    index = torch.as_tensor(indices, dtype=torch.long)
    return TensorImageDataset(dataset.images[index], dataset.labels[index])


def to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float pixels in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255.0)
