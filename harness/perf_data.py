"""`bench perf --data --images N`: does the data path keep up at real scale?

Writes a generated replica of ``N`` JPEGs of ImageNet-like sizes (an imagefolder layout in a temp
folder, read by the real ``imagefolder`` loader), then times, each in a fresh process so that its
peak memory is its own:

- the first pass: decode every image once into the image cache (``workers`` decode processes, one
  thread each), at the CoOp test transform (shorter side to 224, centre crop, bicubic);
- the second pass: what every later evaluation does before the model, open the cache (a stat of
  every source file) and stream every image batch by batch (``iter_uint8``, prefetched, as
  ``iter_pixels`` reads it), the uint8 batches a device copy takes. The conversion to float pixels
  is left out: ``to_pixels`` does it on the device, after the copy, as part of the model's work.

It prints one JSON line: ``first_pass_s``, ``second_pass_s``, ``images_per_s_first``,
``images_per_s_cached``, ``peak_rss_mib`` (the first pass's process, decode workers included as
the largest one of them) and ``eval_peak_rss_mib`` (the second pass's process), with the worker
count. The replica's JPEGs were just written, so the first pass reads them from the page cache: it
measures decoding, not a cold disk.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from petlbench.errors import UserError

from .pools import spawn_pool

IMAGE_SIZE = 224
CLASSES = 10
EVAL_BATCH = 256
# (width, height, weight): the common shapes of ImageNet validation images (most are 500 px on the
# long side; a few are larger), so decode cost per image is close to the real split's.
SIZES = (
    (500, 375, 0.45),
    (375, 500, 0.15),
    (500, 333, 0.15),
    (500, 500, 0.1),
    (333, 500, 0.05),
    (640, 480, 0.1),
)
GENERATE_CHUNK = 100


def _generate(args: tuple[str, int, int]) -> int:
    """Write images ``start .. stop`` of the replica (smooth colour fields with fine noise: JPEGs of
    realistic size, 50-150 kB, not the few kB of a flat image)."""
    from PIL import Image

    root, start, stop = args
    written = 0
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        w, h, _ = SIZES[int(rng.choice(len(SIZES), p=[s[2] for s in SIZES]))]
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        base = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = base + rng.integers(-12, 13, base.shape, dtype=np.int16)
        path = Path(root) / "test" / f"c{i % CLASSES}" / f"{i:07d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        written += 1
    return written


def write_replica(folder: Path, images: int, workers: int) -> Path:
    """An imagefolder replica under ``folder/replica``: ``images`` test JPEGs over ``CLASSES``
    classes and one train JPEG per class (the loader needs a train split)."""
    root = folder / "replica"
    for split in ("train", "test"):
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
    chunks = [(str(root), s, min(images, s + GENERATE_CHUNK)) for s in range(0, images, GENERATE_CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with spawn_pool(workers) as pool:
            list(pool.map(_generate, chunks))
    else:
        for chunk in chunks:
            _generate(chunk)
    for c in range(CLASSES):  # train: a copy of one test image per class
        shutil.copyfile(root / "test" / f"c{c}" / f"{c:07d}.jpg", root / "train" / f"c{c}" / "0.jpg")
    return root


def _test_split(folder: str) -> Any:
    from petlbench.benchmarks.datasets import load_task
    from petlbench.benchmarks.suites import TaskSpec

    spec = TaskSpec(
        name="replica",
        loader="imagefolder",
        args={"path": "replica", "image_size": IMAGE_SIZE, "resize": "center_crop"},  # bicubic
        templates=("a photo of a {}.",),
    )
    return load_task(spec, Path(folder)).split("test")


def _peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def _first_pass(folder: str, workers: int) -> dict[str, Any]:
    """In a fresh process: decode the replica's test split into an empty cache."""
    import torch

    from .image_cache import ImageCache, source_of

    torch.set_num_threads(1)
    split = _test_split(folder)
    cache = ImageCache(Path(folder) / "cache", workers=workers, progress=lambda *a: None)
    t0 = time.perf_counter()
    source = source_of(split, IMAGE_SIZE)
    assert source is not None  # the replica is an image-file folder
    images, _ = cache.ensure(source)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "decoded": cache.decoded_rows,
        "rows": len(images),
        "peak_rss_mib": _peak_rss_mib(),
        "worker_peak_rss_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN),
    }


def _second_pass(folder: str) -> dict[str, Any]:
    """In a fresh process: open the cache and stream every image, as evaluation does."""
    import torch

    from .data import iter_uint8, materialize
    from .image_cache import ImageCache

    torch.set_num_threads(1)
    split = _test_split(folder)
    cache = ImageCache(Path(folder) / "cache", workers=1)
    baseline = _peak_rss_mib()
    t0 = time.perf_counter()
    data = materialize(split, IMAGE_SIZE, cache=cache, stream=True)
    checksum, seen = 0.0, 0
    for batch in iter_uint8(data, EVAL_BATCH):
        checksum += float(batch[:, :, 0, 0].sum())  # use the batch
        seen += batch.shape[0]
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "decoded": cache.decoded_rows,
        "rows": seen,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _in_fresh_process(fn: Any, *args: Any) -> dict[str, Any]:
    with spawn_pool(1) as pool:
        return pool.submit(fn, *args).result()


def measure_data_path(images: int, workers: int | None = None, folder: Path | None = None) -> dict[str, Any]:
    """The JSON line of `bench perf --data` (see the module docstring)."""
    if images < 1:
        raise UserError(f"bench perf --data: --images must be at least 1, got {images}")
    if workers is not None and workers < 1:
        raise UserError(f"bench perf --data: --workers must be at least 1, got {workers}")
    workers = workers or len(os.sched_getaffinity(0))
    temp = folder is None
    work = Path(tempfile.mkdtemp(prefix="petlbench-perf-data-")) if folder is None else Path(folder)
    if not temp and (work / "replica").exists():
        raise UserError(f"bench perf --data: {work / 'replica'} exists; give an empty or new --dir")
    try:
        t0 = time.perf_counter()
        root = write_replica(work, images, workers)
        generate_s = time.perf_counter() - t0
        source_bytes = sum(p.stat().st_size for p in (root / "test").rglob("*.jpg"))
        first = _in_fresh_process(_first_pass, str(work), workers)
        second = _in_fresh_process(_second_pass, str(work))
        cache_bytes = sum(p.stat().st_size for p in (work / "cache" / "entries").rglob("images.npy"))
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    if second["decoded"] or second["rows"] != images or first["decoded"] != images:
        raise RuntimeError(f"bench perf --data: unexpected decode counts {first} {second}")
    return {
        "images": images,
        "image_size": IMAGE_SIZE,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "generate_s": generate_s,
        "source_mib": source_bytes / 2**20,
        "cache_mib": cache_bytes / 2**20,
        "first_pass_s": first["seconds"],
        "second_pass_s": second["seconds"],
        "images_per_s_first": images / first["seconds"],
        "images_per_s_cached": images / second["seconds"],
        "speedup": first["seconds"] / second["seconds"],
        "peak_rss_mib": max(first["peak_rss_mib"], first["worker_peak_rss_mib"]),
        "first_pass_driver_rss_mib": first["peak_rss_mib"],
        "first_pass_worker_rss_mib": first["worker_peak_rss_mib"],
        "eval_peak_rss_mib": second["peak_rss_mib"],
        "eval_baseline_rss_mib": second["baseline_rss_mib"],
        "eval_batch_size": EVAL_BATCH,
        "second_pass": "open the cache (stat every source file) + stream every image as uint8 batches",
    }
