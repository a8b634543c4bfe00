"""Turn a task's datasets into what training needs: uint8 tensors at the backbone's resolution.

Small (few-shot, smoke) training sets are decoded and resized once and kept as uint8 tensors, so an
epoch costs no image decoding. Conversion to float pixels in [0, 1] happens per batch.

With an image cache (harness/image_cache.py) a split decoded from image files is decoded once per
machine, not once per run: training sets are read from it into memory, evaluation splits
(``stream=True``) stay on disk and are read batch by batch, so evaluation memory does not grow with
the split. The pixels are the same bytes either way.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Sized
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from petlbench.benchmarks.data import TensorImageDataset

from .image_cache import CachedImageDataset, ImageCache, resize_uint8, source_of

PREFETCH = 2  # batches read ahead of the one being computed on (streamed datasets)


def materialize(
    dataset: Dataset,
    image_size: int,
    interpolation: str = "bicubic",
    *,
    cache: ImageCache | None = None,
    stream: bool = False,
) -> TensorImageDataset:
    """Stack a dataset into uint8 tensors resized (once) to ``image_size``. With ``cache``, a split
    of image files is read from the cache (filled on first use); ``stream`` leaves it on disk (a
    :class:`CachedImageDataset`, for evaluation) instead of reading it into memory."""
    size = len(cast(Sized, dataset))
    source = source_of(dataset, image_size, interpolation) if cache is not None and size else None
    if source is not None:
        assert cache is not None
        disk, entry = cache.ensure(source)
        streamed = CachedImageDataset(disk, cast(Any, dataset).labels, entry)
        return streamed if stream else streamed.to_memory()
    if isinstance(dataset, TensorImageDataset):
        images, labels = dataset.images, dataset.labels
    else:
        items = [dataset[i] for i in range(size)]
        images = torch.stack([torch.as_tensor(img) for img, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    if images.shape[-2:] != (image_size, image_size):
        images = resize_uint8(images, image_size, interpolation)
    return TensorImageDataset(images, labels)


def subset(dataset: TensorImageDataset, indices: list[int]) -> TensorImageDataset:
    index = torch.as_tensor(indices, dtype=torch.long)
    return TensorImageDataset(dataset.images[index], dataset.labels[index])


def to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float pixels in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255.0)


def iter_uint8(data: TensorImageDataset, batch_size: int, pin: bool = False) -> Iterator[torch.Tensor]:
    """The images of ``data`` in order, ``batch_size`` at a time, as uint8 (B, 3, H, W). A streamed
    (cached) dataset is read from disk by a background thread ``PREFETCH`` batches ahead, into pinned
    buffers when ``pin`` (so the copy to a GPU is asynchronous); memory is those few batches."""
    n = len(data)
    if not isinstance(data, CachedImageDataset):
        for start in range(0, n, batch_size):
            yield data.images[start : start + batch_size]
        return
    images = data.disk
    starts = list(range(0, n, batch_size))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="petlbench-prefetch") as reader:
        ahead = [reader.submit(images.read, s, s + batch_size, pin) for s in starts[:PREFETCH]]
        for i in range(len(starts)):
            batch = ahead.pop(0).result()
            if i + PREFETCH < len(starts):
                s = starts[i + PREFETCH]
                ahead.append(reader.submit(images.read, s, s + batch_size, pin))
            yield batch


def iter_pixels(data: TensorImageDataset, device: torch.device, batch_size: int) -> Iterator[torch.Tensor]:
    """Float pixels in [0, 1] on ``device``, batch by batch in order (evaluation and feature
    caching): a streamed dataset is prefetched and, on CUDA, copied from pinned memory without
    blocking."""
    pin = device.type == "cuda" and torch.cuda.is_available()
    for batch in iter_uint8(data, batch_size, pin=pin):
        yield to_pixels(batch, device)
