"""``bench data prepare --download``: fetch what public servers hold, into the peers' folder layouts.

Only what a task's dataset format names is fetched (``DatasetFormat.download``): archives with a
stable public address, such as the image archives of the CoOp datasets' original sites
(FGVC-Aircraft complete, since its splits ship inside the archive), and Hub datasets of ``hf`` tasks
(into the ``datasets`` cache). What sits behind a login or a Drive link (ImageNet,
CoOp's ``split_zhou_*.json`` files, VTAB exports, VPT's FGVC json) is never guessed at: ``prepare``
names it to be fetched by hand.

Each archive is downloaded to ``<data root>/.downloads/`` (a partial file is resumed by restarting
the transfer, never used), its sha256 is recorded beside it, and it is unpacked with leading path
components stripped so its content lands where the loader looks (``dtd/images/...``). Unpacking
refuses members that would leave the destination (absolute paths, ``..``, links pointing out) and
damaged or malformed archives, with one line naming the archive; it unpacks into a hidden folder
beside the destination and moves the files in only when the whole archive has been read.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from petlbench.benchmarks.datasets import FORMATS, Archive
from petlbench.benchmarks.suites import TaskSpec
from petlbench.errors import UserError

from .leakage import file_sha256

DOWNLOAD_DIR = ".downloads"
TIMEOUT_S = 60


def fetch(
    archive: Archive, downloads: Path, progress: Callable[[int, int | None], None] | None = None
) -> Path:
    """Download ``archive`` into ``downloads`` (kept and reused when complete); check its hash."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / archive.filename
    if not target.exists():
        partial = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(archive.url, timeout=TIMEOUT_S) as response, partial.open("wb") as fh:
                total = response.headers.get("Content-Length")
                done = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, int(total) if total else None)
        except OSError as exc:  # URLError, timeouts, refused connections
            partial.unlink(missing_ok=True)
            raise UserError(f"could not download {archive.url}: {getattr(exc, 'reason', exc)}") from None
        os.replace(partial, target)
    digest = file_sha256(target)
    if archive.sha256 is not None and digest != archive.sha256:
        raise UserError(
            f"{target} has sha256 {digest}, expected {archive.sha256}: delete it and download again"
        )
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {archive.filename}\n")
    return target


def _relative(name: str, strip: str, where: str = "") -> PurePosixPath | None:
    """A member's path below ``strip`` (None when it lies outside it); refuses escaping paths."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        label = f"archive {where}: member" if where else "archive member"
        raise UserError(f"{label} {name!r} would be written outside the data folder")
    prefix = PurePosixPath(strip) if strip else None
    if prefix is None:
        return path
    if path == prefix or prefix not in path.parents:
        return None
    return path.relative_to(prefix)


# What a damaged archive raises while it is read (gzip's BadGzipFile is an OSError).
CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile, lzma.LZMAError)


class _Staging:
    """One archive unpacked into a fresh folder: every member checked (no escape, no name that is both
    a file and a folder, links only to members inside), links copied from their targets at the end."""

    def __init__(self, root: Path, archive_file: Path, strip: str) -> None:
        self.root = root
        self.where = str(archive_file)
        self.strip = strip
        self.kinds: dict[PurePosixPath, str] = {}  # "file" | "dir"
        self.links: list[tuple[PurePosixPath, PurePosixPath, str, str]] = []  # rel, target, name, link

    def fail(self, problem: str) -> UserError:
        return UserError(f"archive {self.where}: {problem}; the archive is malformed or unsafe, not unpacked")

    def relative(self, name: str) -> PurePosixPath | None:
        rel = _relative(name, self.strip, self.where)
        return None if rel is None or not rel.parts else rel

    def claim(self, rel: PurePosixPath, kind: str, name: str) -> Path:
        for parent in list(rel.parents)[:-1]:
            if self.kinds.get(parent) == "file":
                raise self.fail(f"{str(parent)!r} is both a file and a folder (member {name!r})")
            self.kinds[parent] = "dir"
        if self.kinds.get(rel, kind) != kind:
            raise self.fail(f"{str(rel)!r} is both a file and a folder (member {name!r})")
        self.kinds[rel] = kind
        out = self.root / rel
        if kind == "dir":
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def write(self, rel: PurePosixPath, name: str, source: Any) -> None:
        with source, self.claim(rel, "file", name).open("wb") as fh:
            shutil.copyfileobj(source, fh)

    def link(self, rel: PurePosixPath, name: str, link: str, symbolic: bool) -> None:
        """A hard link names a member; a symbolic one a path relative to its own folder."""
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link) if symbolic else link)
        if link.startswith("/") or target == ".." or target.startswith("../"):
            raise self.fail(f"member {name!r} is a link to {link!r}, outside the archive")
        target_rel = _relative(target, self.strip, self.where)
        if target_rel is None or not target_rel.parts:
            raise self.fail(f"member {name!r} is a link to {link!r}, outside the folder that is unpacked")
        self.links.append((rel, target_rel, name, link))

    def resolve_links(self) -> None:
        """A link inside the archive is unpacked as a copy of its target (no link is ever written)."""
        for rel, target, name, link in self.links:
            source = self.root / target
            if self.kinds.get(target) == "file" and source.is_file():
                shutil.copyfile(source, self.claim(rel, "file", name))
            elif self.kinds.get(target) == "dir" and source.is_dir():
                shutil.copytree(source, self.claim(rel, "dir", name), dirs_exist_ok=True)
            else:
                raise self.fail(f"member {name!r} is a link to {link!r}, which the archive does not hold")


def _unpack_tar(archive_file: Path, staging: _Staging) -> None:
    # Members are read in order (a .tar.gz is never sought backwards): links are resolved at the end.
    with tarfile.open(archive_file) as tar:
        for member in tar:
            rel = staging.relative(member.name)
            if rel is None:
                continue
            if member.isdir():
                staging.claim(rel, "dir", member.name)
            elif member.issym() or member.islnk():
                staging.link(rel, member.name, member.linkname, symbolic=member.issym())
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                staging.write(rel, member.name, source)
            # devices and fifos are never unpacked


def _unpack_zip(archive_file: Path, staging: _Staging) -> None:
    with zipfile.ZipFile(archive_file) as zf:
        for info in zf.infolist():
            rel = staging.relative(info.filename)
            if rel is None:
                continue
            if info.is_dir():
                staging.claim(rel, "dir", info.filename)
            elif stat.S_ISLNK(info.external_attr >> 16):  # a symbolic link: its target is the content
                staging.link(rel, info.filename, zf.read(info).decode("utf-8", "replace"), symbolic=True)
            else:
                staging.write(rel, info.filename, zf.open(info))


def _merge(staging: Path, dest: Path, archive_file: Path) -> None:
    """Move the unpacked files into ``dest``, each by one rename (no file there is ever half written)."""
    for folder, _, files in os.walk(staging):
        target = dest / Path(folder).relative_to(staging)
        if target.exists() and not target.is_dir():
            raise UserError(
                f"cannot unpack {archive_file}: {target} is a file where the archive has a folder; "
                "move it away"
            )
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if (target / name).is_dir():
                raise UserError(
                    f"cannot unpack {archive_file}: {target / name} is a folder where the archive has a "
                    "file; move it away"
                )
            os.replace(Path(folder) / name, target / name)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def unpack(archive_file: Path, archive: Archive, data_root: Path) -> Path:
    """Unpack (or copy, for a plain file) into ``data_root / archive.dest``; returns that folder.

    The archive is unpacked whole into a hidden folder beside the destination and only then moved in,
    file by file, so a crash or a damaged archive never leaves a half-written file where the loader
    looks (a crash during the move leaves some files missing, which ``bench data check`` reports, and
    the next ``prepare --download`` unpacks again). A damaged archive (not an archive, truncated, a
    bad checksum), a member escaping the destination, a link out of the archive or a name that is
    both a file and a folder is one UserError naming the archive."""
    dest = data_root / archive.dest
    name = archive_file.name
    staging_dir = dest.parent / f".{dest.name}.{name}.unpacking"
    shutil.rmtree(staging_dir, ignore_errors=True)  # what a crashed unpack left
    staging_dir.mkdir(parents=True)
    staging = _Staging(staging_dir, archive_file, archive.strip)
    try:
        try:
            if name.endswith((".tar.gz", ".tgz", ".tar")):
                _unpack_tar(archive_file, staging)
            elif name.endswith(".zip"):
                _unpack_zip(archive_file, staging)
            else:
                shutil.copyfile(archive_file, staging_dir / name)
            staging.resolve_links()
        except CORRUPT as exc:
            kind = "zip" if name.endswith(".zip") else "tar"
            detail = f"{exc.__class__.__name__}: {_one_line(exc)}"
            if isinstance(exc, tarfile.ReadError) and "could not be opened" in str(exc):
                detail = "not a gzip, bzip2, xz or plain tar file"  # tarfile lists every method it tried
            raise UserError(
                f"archive {archive_file} is not a readable {kind} archive, or is truncated or corrupt "
                f"({detail}); delete it and download again"
            ) from None
        except (NotImplementedError, RuntimeError) as exc:  # zip: unknown compression, encrypted member
            raise UserError(f"archive {archive_file} cannot be unpacked here ({_one_line(exc)})") from None
        _merge(staging_dir, dest, archive_file)
    except OSError as exc:  # the disk: full, read-only, a name the file system refuses
        raise UserError(f"could not unpack {archive_file} into {dest}: {_one_line(exc)}") from None
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return dest


def can_download(task: TaskSpec) -> bool:
    return FORMATS.get(task.loader).download_of(task) is not None


def download_task(
    task: TaskSpec, data_root: Path, progress: Callable[[str, int, int | None], None] | None = None
) -> list[str]:
    """Fetch what the task's format says can be fetched: unpack every public archive under the data
    root, or run the format's own fetch (a Hub dataset into its cache); returns what was done, one
    line each."""
    download = FORMATS.get(task.loader).download_of(task)
    if download is None:
        return []
    if download.fetch is not None:
        return download.fetch()
    done = []
    for archive in download.archives:
        report = (lambda n, total, a=archive: progress(a.filename, n, total)) if progress else None
        path = fetch(archive, data_root / DOWNLOAD_DIR, report)
        unpack(path, archive, data_root)
        done.append(f"{archive.filename} -> {archive.dest}/")
    return done
