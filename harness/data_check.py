"""``bench data check`` and ``bench data prepare``: is a suite's data on disk, complete and intact?

``check_suite`` lists every task through its loader's lister (layout and split files; labels known;
no empty class), then checks every listed image: present, decodes with PIL (a truncated JPEG fails
here), and, with a manifest, has the sha256 it had when the manifest was written; and the splits for
leakage (``leakage.find_leakage``): an image listed twice in a split, or in two splits that must not
share images (test with any other; train with val), by path or by content hash. It also reports
what the decoded-image cache (harness/image_cache.py) holds of each evaluation split, which
``bench data cache`` fills ahead of a sweep (``cache_targets``). The manifest (manifest.py) maps
paths relative to the data root to hashes and sizes; a first check writes it, later checks compare
against it and add files it does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.benchmarks.data import TaskData
from petlbench.benchmarks.datasets import FORMATS, list_task
from petlbench.benchmarks.datasets._files import check_labels
from petlbench.benchmarks.suites import Suite, TaskSpec
from petlbench.errors import UserError

from .image_cache import CacheSource, ImageCache
from .leakage import Duplicate, Leakage, Overlap, file_sha256, find_leakage


@dataclass
class TaskCheck:
    """What ``bench data check`` found for one task."""

    task: str
    loader: str
    root: str = ""
    files: int = 0
    present: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (path, split file naming it)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[Duplicate] = field(default_factory=list)  # an image listed twice in a split
    overlaps: list[Overlap] = field(default_factory=list)  # images in two splits that must not share
    error: str | None = None  # a layout / split-file problem: the task cannot be listed
    skipped: str | None = None  # generated data: nothing on disk to check

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (
            self.error is None and not self.missing and not self.corrupt and not self.leaks
        )

    @property
    def leaks(self) -> bool:
        return bool(self.duplicates or self.overlaps)

    def leakage_lines(self) -> list[str]:
        return Leakage(self.duplicates, self.overlaps).lines()

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "skipped"
        if self.error is not None:
            return "error"
        return "ok" if self.ok else "problems"


def _decodes(path: Path) -> str | None:
    """None when PIL reads the whole image, else the reason it cannot."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as err:  # noqa: BLE001 - any failure to decode is what we report
        return f"does not decode ({err.__class__.__name__}: {err})"
    return None


def check_task(
    task: TaskSpec,
    data_root: Path,
    manifest: dict[str, dict[str, Any]] | None,
    decode: bool = True,
    on_file: Callable[[], None] | None = None,
    leakage: bool = True,
) -> TaskCheck:
    """Check one task's files; ``leakage=False`` leaves out duplicates and overlaps between splits
    (``bench data prepare`` only asks whether the data is there)."""
    result = TaskCheck(task.name, task.loader)
    try:
        listing = list_task(task, data_root)
    except UserError as err:
        result.error = str(err)
        return result
    if listing is None:
        result.skipped = "generated data, nothing on disk"
        return result
    result.root = str(listing.root)
    try:
        check_labels(listing)
    except UserError as err:
        result.error = str(err)
    data_root = Path(data_root).resolve()
    seen: set[str] = set()
    for split in listing.splits.values():
        for rel in split.relpaths:
            if rel in seen:
                continue
            seen.add(rel)
            if on_file is not None:
                on_file()
            path = listing.root / rel
            if not path.is_file():
                result.missing.append((str(path), str(split.source)))
                continue
            result.present += 1
            reason = _decodes(path) if decode else None
            if reason is None and manifest is not None:
                try:
                    key = str(path.resolve().relative_to(data_root))
                except ValueError:
                    key = str(path.resolve())
                digest = file_sha256(path)
                known = manifest.get(key)
                if known is None:
                    manifest[key] = {"sha256": digest, "size": path.stat().st_size}
                elif known.get("sha256") != digest:
                    reason = f"sha256 differs from the manifest ({known.get('sha256', '?')[:12]}...)"
            if reason is not None:
                result.corrupt.append((str(path), reason))
    result.files = len(seen)
    if leakage:
        found = find_leakage(listing)
        result.duplicates, result.overlaps = found.duplicates, found.overlaps
    return result


# ----- image cache -----------------------------------------------------------------------------------


@dataclass
class CacheTarget:
    """One evaluation split as one backbone reads it: its cache source, or why it is not cached."""

    task: str
    backbone: str
    split: str
    source: CacheSource | None = None
    reason: str | None = None  # not cacheable, or the task cannot be loaded


def _backbone_input(name: str, decoded: int, known: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """A backbone's input side and interpolation: the declared side when the split is decoded at it
    (the interpolation is then unused), else built with random weights to learn both."""
    from petlbench.backbones.registry import backbone_entry, build_backbone

    entry = backbone_entry(name)
    if entry.image_size == decoded:
        return decoded, "bicubic"
    if name not in known:
        backbone = build_backbone(name, pretrained=False)
        known[name] = (int(backbone.image_size), str(backbone.interpolation))
    return known[name]


def cache_targets(
    suite: Suite, data_root: Path, tasks: Iterable[TaskSpec], backbones: Sequence[str] | None = None
) -> list[CacheTarget]:
    """The evaluation split of every task (the suite protocol's ``eval_split``) for every backbone:
    what `bench data cache` fills and `bench data check` reports. Generated data, sequence-to-sequence
    data and rows without a source file per image are not cached (``reason`` says which)."""
    from petlbench.benchmarks.datasets import load_task

    from .image_cache import source_of

    known: dict[str, tuple[int, str]] = {}
    names = list(backbones or suite.backbones)
    out: list[CacheTarget] = []
    for task in tasks:
        split = suite.protocol_for(task).eval_split
        skip = None
        fmt = FORMATS.get(task.loader)
        if fmt.generative:
            skip = "sequence-to-sequence data: not cached"
        elif fmt.lister is None:
            skip = "generated data: not cached"
        if skip is not None:
            out += [CacheTarget(task.name, b, split, reason=skip) for b in names]
            continue
        try:
            data = load_task(task, data_root)
            dataset = data.split(split)
        except UserError as err:
            out += [CacheTarget(task.name, b, split, reason=f"cannot load: {err}") for b in names]
            continue
        assert isinstance(data, TaskData)  # sequence-to-sequence formats were skipped above
        decoded = int(getattr(dataset, "image_args", {}).get("image_size", data.image_size))
        for name in names:
            size, interpolation = _backbone_input(name, decoded, known)
            source = source_of(dataset, size, interpolation)
            reason = None if source is not None else "no source file per image: not cached"
            out.append(CacheTarget(task.name, name, split, source, reason))
    return out


def cache_column(targets: Sequence[CacheTarget], cache: ImageCache) -> dict[str, str]:
    """Task -> the state of its evaluation split in the cache, for `bench data check`'s table:
    ``cached 2/2`` (backbones whose input size is decoded), ``stale`` (source files changed since),
    or why it is not cached."""
    by_task: dict[str, list[CacheTarget]] = {}
    for t in targets:
        by_task.setdefault(t.task, []).append(t)
    column = {}
    for task, items in by_task.items():
        cacheable = {t.source.key(): t.source for t in items if t.source is not None}
        if not cacheable:
            column[task] = items[0].reason or "not cached"
            continue
        states = [cache.state(source) for source in cacheable.values()]
        done = sum(st.state == "cached" for st in states)
        stale = sum(st.changed for st in states)
        text = f"cached {done}/{len(states)}"
        column[task] = text + (f", {stale} changed file(s) to re-decode" if stale else "")
    return column


def count_files(suite: Suite, data_root: Path, tasks: Iterable[TaskSpec]) -> int:
    total = 0
    for task in tasks:
        try:
            listing = list_task(task, data_root)
        except UserError:
            continue
        if listing is not None:
            total += len({rel for s in listing.splits.values() for rel in s.relpaths})
    return total


def how_to_get(task: TaskSpec) -> str:
    """Where ``bench data prepare`` tells the user to get a task's data from, as its format says."""
    return FORMATS.get(task.loader).source_of(task)
