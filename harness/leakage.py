"""Leakage between a task's splits: the same image listed twice, or train/val images that are also
in the evaluation split (by path and by content hash). ``bench data check`` reports it; ``bench run``
refuses a run whose training or selection split overlaps its evaluation split.

Two images are the same *by path* when a split file lists the same path (relative to the dataset
folder) twice, and *by content* when two different paths hold files with the same sha256 (of the
file bytes; nothing is decoded). Only files of equal size can have equal content, so a file is hashed
only when another file of the splits compared has its size. Hashes are kept for the process, keyed by
the file's identity, size and mtime (device, inode, size, mtime_ns: the resolved file, so one image
reached under two paths is hashed once), so the seeds of one task hash nothing again; a file modified
in the last few seconds is not kept, as a later change in the same mtime tick would go unseen. With
the data root's manifest (``bench data check`` writes it) a file whose size matches its entry takes
the manifest's hash instead of being read.

Which pairs of splits count: every pair, except ``trainval`` with ``train`` or ``val``: VTAB's
train800val200 is by design the union of train800 and val200.

What stops a run: an image of the training or the selection split that is also in the evaluation
split (the score would be measured on images the model trained or was selected on). A duplicate
*within* a split does not: it only weights that image twice in training or in the selection score,
and real datasets ship a few such duplicates; ``bench data check`` reports it (and overlap between
train and val, which biases selection) as a problem to fix in the split files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.benchmarks.datasets import list_task
from petlbench.benchmarks.datasets._files import TaskListing
from petlbench.benchmarks.suites import TaskSpec
from petlbench.errors import UserError

from .manifest import MANIFEST_NAME, read_manifest

# Pairs of splits that share images by design (VTAB's train800val200 = train800 + val200).
EXPECTED_OVERLAP = frozenset({frozenset({"trainval", "train"}), frozenset({"trainval", "val"})})
MAX_NAMED = 5  # how many files a message names
RACY_NS = 3 * 10**9  # a file modified this recently is hashed but its hash is not kept

_HASHES: dict[tuple[int, int, int, int], str] = {}
_MANIFESTS: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}


# ----- hashing ------------------------------------------------------------------------------------


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_sha256(path: Path, st: os.stat_result | None = None, known: str | None = None) -> str:
    """The sha256 of ``path``'s bytes, from the process cache when the file has not changed.

    ``known`` (a manifest's hash of a file of this size) is taken instead of reading the file."""
    st = st if st is not None else path.stat()
    key = _stat_key(st)
    digest = _HASHES.get(key)
    if digest is not None:
        return digest
    if known is not None:  # not kept: `bench data check` must compare the bytes with the manifest
        return known
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > RACY_NS:
        _HASHES[key] = digest
    return digest


def clear_cache() -> None:
    _HASHES.clear()
    _MANIFESTS.clear()


class _Files:
    """Stats and hashes of one listing's files, each looked at once."""

    def __init__(
        self, listing: TaskListing, manifest: dict[str, dict[str, Any]] | None, data_root: Path | None
    ):
        self.root = listing.root
        self.manifest = manifest or None
        self.data_root = Path(data_root).resolve() if data_root is not None and manifest else None
        self._stats: dict[str, os.stat_result | None] = {}
        self._digests: dict[str, str | None] = {}

    def stat(self, rel: str) -> os.stat_result | None:
        if rel not in self._stats:
            try:
                st = (self.root / rel).stat()
            except OSError:
                st = None
            self._stats[rel] = st if st is not None and stat.S_ISREG(st.st_mode) else None
        return self._stats[rel]

    def size(self, rel: str) -> int | None:
        st = self.stat(rel)
        return None if st is None else st.st_size

    def digest(self, rel: str) -> str | None:
        """None for a file that is missing or cannot be read (data check reports those)."""
        if rel not in self._digests:
            st = self.stat(rel)
            digest = None
            if st is not None:
                try:
                    digest = file_sha256(self.root / rel, st, self._from_manifest(rel, st))
                except OSError:
                    digest = None
            self._digests[rel] = digest
        return self._digests[rel]

    def _from_manifest(self, rel: str, st: os.stat_result) -> str | None:
        if self.manifest is None or self.data_root is None or _stat_key(st) in _HASHES:
            return None
        path = (self.root / rel).resolve()
        try:
            key = str(path.relative_to(self.data_root))
        except ValueError:
            key = str(path)
        entry = self.manifest.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and isinstance(entry.get("sha256"), str)
        ):
            return entry["sha256"]
        return None


# ----- findings -----------------------------------------------------------------------------------


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_NAMED else "")


def _by(kinds: Iterable[str]) -> str:
    kinds = set(kinds)
    return "by path and by content" if len(kinds) == 2 else f"by {next(iter(kinds))}"


@dataclass
class Duplicate:
    """One image listed more than once in a split: the same path again, or the same content under
    other paths (``paths`` in split-file order)."""

    split: str
    by: str  # "path" | "content"
    paths: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "by": self.by, "paths": list(self.paths)}


@dataclass
class Overlap:
    """Images of ``split`` that are also in ``other``: ``pairs`` of (path in split, path in other);
    the two paths are equal for an overlap by path."""

    split: str
    other: str
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {"path" if a == b else "content" for a, b in self.pairs}

    def describe(self) -> str:
        n = len(self.pairs)
        images = "1 image" if n == 1 else f"{n} images"
        verb = "is" if n == 1 else "are"
        shown = [a if a == b else f"{a} = {b}" for a, b in self.pairs]
        where = f"{images} of split {self.split!r} {verb} also in {self.other!r}"
        return f"{where} ({_by(self.kinds)}): {_named(shown)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "other": self.other,
            "by": sorted(self.kinds),
            "pairs": [list(p) for p in self.pairs],
        }


def describe_duplicates(split: str, dups: Sequence[Duplicate]) -> str:
    """One line for the duplicates of one split."""
    shown = [
        f"{d.paths[0]} (listed {len(d.paths)} times)" if d.by == "path" else " = ".join(d.paths) for d in dups
    ]
    n = len(dups)
    what = "1 image is" if n == 1 else f"{n} images are"
    return f"{what} listed more than once in split {split!r} ({_by(d.by for d in dups)}): {_named(shown)}"


@dataclass
class Leakage:
    duplicates: list[Duplicate] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.duplicates or self.overlaps)

    def lines(self) -> list[str]:
        """One line per split with duplicates and per overlapping pair of splits."""
        by_split: dict[str, list[Duplicate]] = defaultdict(list)
        for d in self.duplicates:
            by_split[d.split].append(d)
        return [describe_duplicates(s, ds) for s, ds in by_split.items()] + [
            o.describe() for o in self.overlaps
        ]


def checked_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of these splits except those that share images by design."""
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if frozenset({a, b}) not in EXPECTED_OVERLAP
    ]


def _duplicates(name: str, rels: list[str], files: _Files) -> list[Duplicate]:
    out: list[Duplicate] = []
    positions: dict[str, int] = defaultdict(int)
    for rel in rels:
        positions[rel] += 1
    out += [Duplicate(name, "path", [rel] * n) for rel, n in positions.items() if n > 1]
    by_size: dict[int, list[str]] = defaultdict(list)
    for rel in positions:  # distinct paths, split-file order
        size = files.size(rel)
        if size is not None:
            by_size[size].append(rel)
    by_hash: dict[str, list[str]] = defaultdict(list)
    for same in by_size.values():
        if len(same) > 1:
            for rel in same:
                digest = files.digest(rel)
                if digest is not None:
                    by_hash[digest].append(rel)
    out += [Duplicate(name, "content", group) for group in by_hash.values() if len(group) > 1]
    return out


def _overlap(name: str, rels: list[str], other: str, other_rels: list[str], files: _Files) -> Overlap | None:
    theirs = set(other_rels)
    found = Overlap(name, other)
    mine = list(dict.fromkeys(rels))
    found.pairs += [(rel, rel) for rel in mine if rel in theirs]
    shared = {a for a, _ in found.pairs}
    sizes: dict[int, list[str]] = defaultdict(list)
    for rel in dict.fromkeys(other_rels):
        size = files.size(rel)
        if size is not None:
            sizes[size].append(rel)
    hashes: dict[str, str] = {}
    for rel in mine:
        if rel in shared:
            continue
        size = files.size(rel)
        if size is None or size not in sizes:
            continue
        digest = files.digest(rel)
        if digest is None:
            continue
        for candidate in sizes[size]:
            if candidate not in hashes:
                d = files.digest(candidate)
                hashes[candidate] = d or ""
            if hashes[candidate] == digest and candidate != rel:
                found.pairs.append((rel, candidate))
                break
    return found if found.pairs else None


def find_leakage(
    listing: TaskListing,
    splits: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    manifest: dict[str, dict[str, Any]] | None = None,
    data_root: Path | None = None,
) -> Leakage:
    """Duplicates within each of ``splits`` (all by default) and overlaps of each of ``pairs`` (all
    pairs of the listing's splits but the by-design ones, by default). Splits the listing does not
    have are left out; missing files are only compared by path."""
    files = _Files(listing, manifest, data_root)
    names = list(listing.splits)
    found = Leakage()
    for name in names if splits is None else [s for s in splits if s in listing.splits]:
        found.duplicates += _duplicates(name, listing.splits[name].relpaths, files)
    for a, b in checked_pairs(names) if pairs is None else pairs:
        if a == b or a not in listing.splits or b not in listing.splits:
            continue
        overlap = _overlap(a, listing.splits[a].relpaths, b, listing.splits[b].relpaths, files)
        if overlap is not None:
            found.overlaps.append(overlap)
    return found


# ----- the run's check ------------------------------------------------------------------------------


def _manifest(data_root: Path) -> dict[str, dict[str, Any]] | None:
    path = Path(data_root) / MANIFEST_NAME
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MANIFESTS:
        try:
            _MANIFESTS[key] = read_manifest(path)
        except UserError:  # a broken manifest only costs reading the files
            _MANIFESTS[key] = {}
    return _MANIFESTS[key] or None


def refuse_leakage(task: TaskSpec, data_root: Path | None, used: Sequence[str], eval_split: str) -> None:
    """Raise a UserError naming the files when a split in ``used`` (train, selection) shares an image
    with ``eval_split``. Tasks whose data is generated, not listed on disk, are not checked.

    Duplicates within a split, and train/val overlap, do not stop a run (``bench data check`` reports
    them): see the module docstring."""
    if data_root is None:
        return
    listing = list_task(task, Path(data_root))
    if listing is None or eval_split not in listing.splits:
        return
    pairs = [(s, eval_split) for s in dict.fromkeys(used) if s != eval_split and s in listing.splits]
    found = find_leakage(listing, splits=(), pairs=pairs, manifest=_manifest(data_root), data_root=data_root)
    if found.overlaps:
        raise UserError(
            f"task {task.name!r}: "
            + "; ".join(o.describe() for o in found.overlaps)
            + f" (paths under {listing.root}); fix the split files"
        )
