"""A decoded-image cache on disk, shared by every run and process of a machine.

Decoding is the slow part of the data path at real scale: ImageNet's 50,000-image evaluation split
is minutes of single-threaded JPEG decoding and about 7.5 GB of uint8 at 224 px, and a sweep touches
it once per run. So each list of source images, decoded with one preprocessing (image size, resize
rule, interpolation, and the resize to the backbone's side when that differs), is decoded once into
one uint8 ``(N, 3, H, W)`` array on disk; later runs and other processes read it without decoding.

Layout under the cache folder (``--cache-dir``, default ``<store folder>/image-cache``)::

    entries/<key>/images.npy    the pixels, a plain .npy file (``np.load(path, mmap_mode="r")`` maps it)
    entries/<key>/index.json    what they are: source, preprocessing, and per row the source file's
                                path, size, mtime and sha256
    locks/<key>.lock            held (fcntl) by the one process filling or repairing that entry
    tmp/<key>.<pid>.<token>/    an entry being written

Why it is safe:

- An entry is written in ``tmp/`` and renamed into ``entries/`` only after its pixels and then its
  index are on disk (fsync), so a killed fill leaves a ``tmp/`` folder that is never read (the next
  filler of that key removes it) and never a half entry that looks whole.
- Two processes that need the same entry take its lock in turn; the second finds the entry done.
- The key names the sources (root and ordered file list) and the preprocessing, with the Pillow
  (and, when a resize follows, torch) version, so a library that decodes differently never reads old
  pixels. Each open compares every source file's size and mtime with the index; a file that differs
  is hashed, and one whose content changed is decoded again (only that row: the other rows are
  copied from the old entry into a new one, which replaces it atomically).

Reading: :class:`DiskImages` reads rows with ``pread`` into fresh (optionally pinned) buffers, not
through a long-lived memory map, so evaluation memory is a few batches whatever the split's size
(pages of a map stay counted in the process's RSS once touched; the page cache does not).

Datasets without source files (synthetic, generated, rows of a parquet file) are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from petlbench.benchmarks.data import TensorImageDataset
from petlbench.errors import UserError

try:  # POSIX; elsewhere fills are still crash-safe (atomic rename), only not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = "petlbench.image-cache/1"
CACHE_DIR_NAME = "image-cache"
CHUNK_ROWS = 32  # rows per decode job: small enough for an even spread and a smooth progress line
IN_PROCESS_BELOW = 1000  # fewer rows are decoded in this process: a spawned worker imports torch (seconds)
PROGRESS_MIN_ROWS = 500  # fills this small print no progress lines

#: ``progress(label, done, total, elapsed_s)``, told after each decoded chunk
FillProgress = Callable[[str, int, int, float], None]


def default_cache_dir(store: Path) -> Path:
    """The cache beside the results store: ``<store folder>/image-cache``."""
    return Path(store).parent / CACHE_DIR_NAME


# ----- what an entry holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSource:
    """The pixels of ``relpaths`` (in this order) under ``root``, decoded by the loader's
    preprocessing ``image_args`` and then, when ``out_size`` differs from the decoded side, resized
    to it by ``out_mode`` (what :func:`petlbench.harness.data.materialize` does)."""

    task: str
    split: str
    root: Path
    relpaths: tuple[str, ...]
    image_args: tuple[tuple[str, Any], ...]
    out_size: int
    out_mode: str | None  # None: no resize after decoding

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.image_args)

    @property
    def decode_size(self) -> int:
        return int(self.args["image_size"])

    @property
    def label(self) -> str:
        return f"{self.task} {self.split} ({len(self.relpaths)} images, {self.out_size} px)"

    def versions(self) -> dict[str, str]:
        """The libraries whose arithmetic the pixels depend on."""
        import PIL

        out = {"pillow": PIL.__version__}
        if self.out_mode is not None:
            out["torch"] = torch.__version__.split("+")[0]
        return out

    def identity(self) -> dict[str, Any]:
        files = hashlib.sha256("\n".join(self.relpaths).encode()).hexdigest()
        return {
            "format": CACHE_FORMAT,
            "root": str(self.root),
            "files_sha256": files,
            "rows": len(self.relpaths),
            "image_args": self.args,
            "out_size": self.out_size,
            "out_mode": self.out_mode,
            "versions": self.versions(),
        }

    def key(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _resize_mode(interpolation: str) -> str:
    return "bicubic" if interpolation == "bicubic" else "bilinear"  # as data.resize_uint8 maps it


def source_of(dataset: Any, image_size: int, interpolation: str = "bicubic") -> CacheSource | None:
    """The cache source of a split decoded from image files (the disk loaders' datasets), or None
    for data with no source file per image (generated, in memory, parquet rows)."""
    from petlbench.benchmarks.datasets._files import FileImageDataset

    if not isinstance(dataset, FileImageDataset):
        return None
    args = dataset.image_args
    decoded = int(args["image_size"])
    return CacheSource(
        task=dataset.listing.task,
        split=dataset.split_name,
        root=Path(dataset.listing.root).resolve(),
        relpaths=tuple(dataset.relpaths),
        image_args=tuple(sorted((k, args[k]) for k in ("image_size", "resize", "interpolation"))),
        out_size=int(image_size),
        out_mode=None if decoded == int(image_size) else _resize_mode(interpolation),
    )


# ----- reading --------------------------------------------------------------------------------------


class DiskImages:
    """uint8 rows ``(N, 3, H, W)`` of a .npy file, read on indexing (``images[a:b]``, ``images[idx]``,
    ``images[i]``) into a new tensor, so the consumers of an in-memory image tensor read it unchanged.
    ``read(a, b, pin=True)`` fills a pinned buffer for a non-blocking copy to a GPU."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, path: Path, offset: int, shape: Sequence[int]) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.shape = torch.Size(int(s) for s in shape)
        self.row_shape = tuple(self.shape[1:])
        self.row_bytes = int(math.prod(self.row_shape))
        self._fd: int | None = None
        self._file()  # opened now: an entry replaced later (a repair) stays readable through this fd

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a worker reopens the file by path

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __len__(self) -> int:
        return int(self.shape[0])

    def _read_into(self, out: np.ndarray, start: int) -> None:
        view = memoryview(cast(Any, out)).cast("B")
        pos, want, fd = self.offset + start * self.row_bytes, view.nbytes, self._file()
        got = 0
        while got < want:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[got:]], pos + got)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, want - got, pos + got)
                view[got : got + len(chunk)] = chunk
                n = len(chunk)
            if n <= 0:
                raise UserError(f"image cache file {self.path} is shorter than its index says; delete it")
            got += n

    def read(self, start: int, stop: int, pin: bool = False) -> torch.Tensor:
        start, stop = max(0, start), min(len(self), stop)
        n = max(0, stop - start)
        out = torch.empty((n, *self.row_shape), dtype=torch.uint8, pin_memory=pin and n > 0)
        if n:
            self._read_into(out.numpy(), start)
        return out

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self.read(start, stop)
            return self.gather(range(start, stop, step))
        if isinstance(index, int | np.integer):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} images")
            return self.read(i, i + 1)[0]
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            return self[int(index)]
        return self.gather(index)

    def gather(self, index: Any) -> torch.Tensor:
        """Rows in the order given; consecutive rows are read in one call."""
        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else list(index), dtype=np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} images")
        out = torch.empty((rows.size, *self.row_shape), dtype=torch.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        arr = out.numpy()
        i = 0
        while i < sorted_rows.size:
            j = i
            while j + 1 < sorted_rows.size and sorted_rows[j + 1] == sorted_rows[j] + 1:
                j += 1
            block = np.empty((j - i + 1, *self.row_shape), dtype=np.uint8)
            self._read_into(block, int(sorted_rows[i]))
            arr[order[i : j + 1]] = block
            i = j + 1
        return out


class CachedImageDataset(TensorImageDataset):
    """A split read from the image cache batch by batch: ``images`` is a :class:`DiskImages` (slicing
    it reads those rows), ``labels`` an in-memory tensor. Its ``sha256`` equals the in-memory
    dataset's of the same pixels."""

    def __init__(self, images: DiskImages, labels: torch.Tensor, entry: Path | None = None) -> None:
        labels = torch.as_tensor(labels).to(torch.long)
        if labels.ndim != 1 or labels.shape[0] != len(images):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.disk = images
        self.images = images  # type: ignore[assignment]
        self.labels = labels
        self.entry = entry

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def to_memory(self) -> TensorImageDataset:
        return TensorImageDataset(self.disk.read(0, len(self)), self.labels)

    def sha256(self, chunk: int = 1024) -> str:
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        for start in range(0, len(self), chunk):
            h.update(self.disk.read(start, start + chunk).numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()


# ----- filling --------------------------------------------------------------------------------------


def _file_facts(path: Path) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256) of a source file; the stat is taken first, so a file changed while
    it is read shows a newer mtime on the next open and is checked again."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return st.st_size, st.st_mtime_ns, h.hexdigest()


def _create_array(path: Path, shape: Sequence[int]) -> int:
    """An all-zero (sparse) .npy file of uint8 ``shape``; returns the header's length in bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)}
        )
        header = f.tell()
        f.truncate(header + int(math.prod(shape)))
    return header


@dataclass
class _Job:
    """Decode ``rows`` (row index, relpath) and write them into the array file at their offsets."""

    array: str
    header: int
    row_bytes: int
    root: str
    rows: list[tuple[int, str]]
    image_args: dict[str, Any]
    out_size: int
    out_mode: str | None
    where: str


def _decode_job(job: _Job) -> list[tuple[int, int, int, str]]:
    """Runs in a decode worker (or in this process): the pixels go straight to the file, only the
    source files' facts come back."""
    from petlbench.benchmarks.datasets._files import decode_image

    facts, images = [], []
    for row, rel in job.rows:
        path = Path(job.root) / rel
        try:
            size, mtime, digest = _file_facts(path)
        except FileNotFoundError:
            raise UserError(f"{job.where}: image {path} does not exist") from None
        a = job.image_args
        images.append(decode_image(path, a["image_size"], a["resize"], a["interpolation"], where=job.where))
        facts.append((row, size, mtime, digest))
    stack = torch.stack(images)
    if job.out_mode is not None:
        stack = resize_uint8(stack, job.out_size, job.out_mode)
    fd = os.open(job.array, os.O_WRONLY)
    try:
        data = stack.contiguous().numpy()
        for k, (row, *_rest) in enumerate(facts):
            buf = memoryview(data[k]).cast("B")
            pos, done = job.header + row * job.row_bytes, 0
            while done < buf.nbytes:
                done += os.pwrite(fd, buf[done:], pos + done)
    finally:
        os.close(fd)
    return facts


def plain_progress(stream: Any = None, every_s: float = 30.0) -> FillProgress:
    """A few plain lines per fill (start, about every 10% or ``every_s``, end) with time left: what
    a fill prints off a terminal and inside a run (a terminal's ``bench data cache`` draws a bar)."""
    last: dict[str, tuple[float, int]] = {}
    first: dict[str, tuple[float, int]] = {}  # the first chunk's time: workers' start-up is not the rate

    def report(label: str, done: int, total: int, elapsed: float) -> None:
        out = stream or sys.stderr
        if done == 0:
            last[label] = (0.0, 0)
            first.pop(label, None)
            print(f"image cache: decoding {label} once ...", file=out, flush=True)
            return
        t0, d0 = first.setdefault(label, (elapsed, done))
        t, step = last.get(label, (-1e9, -1))
        tenth = int(10 * done / max(1, total))
        if done < total and tenth == step and elapsed - t < every_s:
            return
        last[label] = (elapsed, tenth)
        rate = (done - d0) / (elapsed - t0) if done > d0 and elapsed > t0 else done / max(elapsed, 1e-9)
        tail = "done" if done >= total else f"about {(total - done) / max(rate, 1e-9):.0f} s left"
        print(
            f"image cache: {label}: {done}/{total} ({100 * done / total:.0f}%), {elapsed:.0f} s, "
            f"{rate:.0f} images/s, {tail}",
            file=out,
            flush=True,
        )

    return report


@dataclass
class EntryState:
    """What the cache holds for one source: ``state`` is ``cached`` (valid as it stands), ``stale``
    (``changed`` source files differ from the pixels: they are decoded again on first use) or
    ``absent``."""

    state: str
    key: str
    rows: int
    bytes: int = 0
    changed: int = 0


class ImageCache:
    """The cache under ``root``. ``workers`` decode processes fill it (spawned, one thread each;
    default: this machine's usable cores); ``progress`` is told about every fill."""

    def __init__(self, root: Path, workers: int | None = None, progress: FillProgress | None = None) -> None:
        self.root = Path(root)
        self.workers = workers
        self.progress = progress
        self.decoded_rows = 0  # rows this object decoded (tests and `bench perf --data` read it)

    # paths
    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        path = self._lock_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 - held across the yield
        except OSError as err:
            raise UserError(f"image cache {self.root} is not writable ({err}); pass --cache-dir") from None
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    # index
    def _read_index(self, key: str) -> dict[str, Any] | None:
        """The entry's index when the entry is whole (renamed into place after it was written)."""
        entry = self.entry_dir(key)
        try:
            index = json.loads((entry / "index.json").read_text(encoding="utf-8"))
            size = (entry / "images.npy").stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT or index.get("key") != key:
            return None
        rows = int(index.get("rows", -1))
        if size != int(index["header_bytes"]) + rows * int(math.prod(index["shape"][1:])):
            return None
        if not isinstance(index.get("files"), list) or len(index["files"]) != rows:
            return None
        return index

    @staticmethod
    def _changed_rows(source: CacheSource, index: dict[str, Any]) -> tuple[list[int], list[int]]:
        """(rows whose file changed content or is gone, rows whose file was only touched)."""
        changed: list[int] = []
        touched: list[int] = []
        pairs = zip(source.relpaths, index["files"], strict=True)
        for row, (rel, (_, size, mtime, digest)) in enumerate(pairs):
            path = source.root / rel
            try:
                st = os.stat(path)
            except OSError:
                changed.append(row)
                continue
            if st.st_size == size and st.st_mtime_ns == mtime:
                continue
            try:
                same = st.st_size == size and _file_facts(path)[2] == digest
            except OSError:
                same = False
            (touched if same else changed).append(row)
        return changed, touched

    def state(self, source: CacheSource) -> EntryState:
        key = source.key()
        index = self._read_index(key)
        if index is None:
            return EntryState("absent", key, len(source.relpaths))
        changed, _ = self._changed_rows(source, index)
        size = (self.entry_dir(key) / "images.npy").stat().st_size
        return EntryState("stale" if changed else "cached", key, len(source.relpaths), size, len(changed))

    def _images(self, key: str, index: dict[str, Any]) -> DiskImages:
        return DiskImages(self.entry_dir(key) / "images.npy", index["header_bytes"], index["shape"])

    # the one way in
    def ensure(self, source: CacheSource) -> tuple[DiskImages, Path]:
        """The source's pixels, decoding (all of them, or only the rows whose file changed) when the
        cache does not hold them as they are."""
        if not source.relpaths:
            raise ValueError("an empty split has nothing to cache")
        key = source.key()
        index = self._read_index(key)
        if index is not None and not any(self._changed_rows(source, index)):
            return self._images(key, index), self.entry_dir(key)
        with self._locked(key):
            index = self._read_index(key)  # another process may have filled it while we waited
            changed: list[int] | None = None
            if index is not None:
                changed, touched = self._changed_rows(source, index)
                if not changed and not touched:
                    return self._images(key, index), self.entry_dir(key)
                if not changed:  # content unchanged: record the new stats, keep the pixels
                    self._refresh_stats(source, key, index, touched)
                    return self._images(key, index), self.entry_dir(key)
            self._fill(source, key, index, changed)
            index = self._read_index(key)
            assert index is not None
            return self._images(key, index), self.entry_dir(key)

    def _refresh_stats(self, source: CacheSource, key: str, index: dict[str, Any], rows: list[int]) -> None:
        for row in rows:
            size, mtime, digest = _file_facts(source.root / source.relpaths[row])
            index["files"][row] = [source.relpaths[row], size, mtime, digest]
        path = self.entry_dir(key) / "index.json"
        tmp = path.with_name(f"index.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp, path)

    def _fill(
        self, source: CacheSource, key: str, old: dict[str, Any] | None, changed: list[int] | None
    ) -> None:
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        for stale in tmp_root.glob(f"{key}.*"):  # a killed fill's leftovers (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tmp_root / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.mkdir()
        array = tmp / "images.npy"
        n = len(source.relpaths)
        shape = (n, 3, source.out_size, source.out_size)
        try:
            if old is not None and changed is not None:  # repair: keep the unchanged rows' pixels
                shutil.copyfile(self.entry_dir(key) / "images.npy", array)
                header = int(old["header_bytes"])
                files = list(old["files"])
                rows = changed
            else:
                header = _create_array(array, shape)
                files = [None] * n
                rows = list(range(n))
            started = time.perf_counter()
            workers = self._decode(source, array, header, rows, files)
            with open(array, "rb+") as f:
                os.fsync(f.fileno())
            index = {
                "format": CACHE_FORMAT,
                "key": key,
                "source": {**source.identity(), "task": source.task, "split": source.split},
                "rows": n,
                "shape": list(shape),
                "dtype": "uint8",
                "header_bytes": header,
                "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "decoded_rows": len(rows),
                "decode_s": time.perf_counter() - started,
                "workers": workers,
            }
            with open(tmp / "index.json", "w", encoding="utf-8") as f:
                json.dump(index, f)
                f.flush()
                os.fsync(f.fileno())
            self._swap_in(tmp, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _swap_in(self, tmp: Path, key: str) -> None:
        entry = self.entry_dir(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if entry.exists():  # a repaired entry replaces the old one; open readers keep their file
            trash = self.root / "tmp" / f"{key}.old.{secrets.token_hex(4)}"
            os.rename(entry, trash)
        os.rename(tmp, entry)
        with contextlib.suppress(OSError):  # make the rename durable (POSIX)
            fd = os.open(entry.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _worker_count(self, rows: int) -> int:
        if self.workers is not None:
            wanted = self.workers
        else:
            try:
                wanted = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - macOS
                wanted = os.cpu_count() or 1
        if rows < IN_PROCESS_BELOW:
            return 1
        return max(1, min(wanted, math.ceil(rows / CHUNK_ROWS)))

    def _decode(
        self, source: CacheSource, array: Path, header: int, rows: list[int], files: list[Any]
    ) -> int:
        """Decode ``rows`` into ``array``; ``files`` gets their source facts. Returns the worker count."""
        row_bytes = 3 * source.out_size * source.out_size
        where = f"task {source.task!r} ({source.split})"
        jobs = [
            _Job(
                str(array),
                header,
                row_bytes,
                str(source.root),
                [(r, source.relpaths[r]) for r in rows[i : i + CHUNK_ROWS]],
                source.args,
                source.out_size,
                source.out_mode,
                where,
            )
            for i in range(0, len(rows), CHUNK_ROWS)
        ]
        total, done = len(rows), 0
        progress = self.progress
        if progress is None and total >= PROGRESS_MIN_ROWS:
            progress = plain_progress()
        started = time.perf_counter()

        def finished(facts: list[tuple[int, int, int, str]]) -> None:
            nonlocal done
            for row, size, mtime, digest in facts:
                files[row] = [source.relpaths[row], size, mtime, digest]
            done += len(facts)
            self.decoded_rows += len(facts)
            if progress is not None:
                progress(source.label, done, total, time.perf_counter() - started)

        if progress is not None:
            progress(source.label, 0, total, 0.0)
        workers = self._worker_count(total)
        if workers == 1:
            for job in jobs:
                finished(_decode_job(job))
            return 1
        import concurrent.futures

        from .pools import spawn_pool

        with spawn_pool(workers) as pool:
            futures = [pool.submit(_decode_job, job) for job in jobs]
            try:
                for future in concurrent.futures.as_completed(futures):
                    finished(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return workers

    # what is there
    def summary(self) -> dict[str, Any]:
        """Entries and bytes in the cache folder (``bench data check``)."""
        entries = sorted((self.root / "entries").glob("*/index.json")) if self.root.is_dir() else []
        size = 0
        for index in entries:
            with contextlib.suppress(OSError):
                size += (index.parent / "images.npy").stat().st_size
        return {"root": str(self.root), "entries": len(entries), "bytes": size}


def resize_uint8(
    images: torch.Tensor, size: int, interpolation: str = "bicubic", chunk: int = 512
) -> torch.Tensor:
    """Resize uint8 images (antialiased, rounded back to uint8) as decoding for a run does: here, below
    ``harness/data.py``, so the cache fill and ``materialize`` share it without an import circle."""
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
