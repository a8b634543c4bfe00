"""``bench data prepare --download``: fetch what public servers hold, into the peers' folder layouts.

Only archives with a stable public address are fetched: the image archives of the CoOp datasets'
original sites (FGVC-Aircraft complete, since its splits ship inside the archive) and Hub datasets of
``hf`` tasks (into the ``datasets`` cache). What sits behind a login or a Drive link (ImageNet,
CoOp's ``split_zhou_*.json`` files, VTAB exports, VPT's FGVC json) is never guessed at: ``prepare``
names it to be fetched by hand.

Each archive is downloaded to ``<data root>/.downloads/`` (a partial file is resumed by restarting
the transfer, never used), its sha256 is recorded beside it, and it is unpacked with leading path
components stripped so its content lands where the loader looks (``dtd/images/...``). Unpacking
refuses members that would leave the destination (absolute paths, ``..``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from petlbench.benchmarks.suites import TaskSpec
from petlbench.errors import UserError

DOWNLOAD_DIR = ".downloads"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    """One public archive and where its content goes."""

    url: str
    dest: str  # folder under the data root
    strip: str = ""  # leading folder inside the archive whose content goes to ``dest`` ("" = none)
    sha256: str | None = None  # pinned when known; otherwise recorded at download

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


VGG = "https://www.robots.ox.ac.uk/~vgg/data"
# CoOp dataset name -> archives of its images from the original site (split json by hand).
COOP_ARCHIVES: dict[str, tuple[Archive, ...]] = {
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
# CoOp datasets whose split file is inside the downloaded content (nothing left to fetch by hand).
COMPLETE_AFTER_DOWNLOAD = frozenset({"FGVCAircraft"})


def archives_for(task: TaskSpec) -> tuple[Archive, ...]:
    """The public archives of a task's data (empty when none can be downloaded)."""
    if task.loader == "coop":
        return COOP_ARCHIVES.get(str(task.args.get("dataset")), ())
    return ()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    digest = sha256_of(target)
    if archive.sha256 is not None and digest != archive.sha256:
        raise UserError(
            f"{target} has sha256 {digest}, expected {archive.sha256}: delete it and download again"
        )
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {archive.filename}\n")
    return target


def _relative(name: str, strip: str) -> PurePosixPath | None:
    """A member's path below ``strip`` (None when it lies outside it); refuses escaping paths."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"archive member {name!r} would be written outside the data folder")
    prefix = PurePosixPath(strip) if strip else None
    if prefix is None:
        return path
    if path == prefix or prefix not in path.parents:
        return None
    return path.relative_to(prefix)


def unpack(archive_file: Path, archive: Archive, data_root: Path) -> Path:
    """Unpack (or copy, for a plain file) into ``data_root / archive.dest``; returns that folder."""
    dest = data_root / archive.dest
    dest.mkdir(parents=True, exist_ok=True)
    name = archive_file.name
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive_file) as tar:
            for member in tar.getmembers():
                rel = _relative(member.name, archive.strip)
                if rel is None or not (member.isfile() or member.isdir()):
                    continue
                out = dest / rel
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, out.open("wb") as fh:
                    shutil.copyfileobj(source, fh)
    elif name.endswith(".zip"):
        with zipfile.ZipFile(archive_file) as zf:
            for info in zf.infolist():
                rel = _relative(info.filename, archive.strip)
                if rel is None or info.is_dir():
                    continue
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, out.open("wb") as fh:
                    shutil.copyfileobj(source, fh)
    else:
        shutil.copyfile(archive_file, dest / name)
    return dest


def can_download(task: TaskSpec) -> bool:
    return bool(archives_for(task)) or (task.loader == "hf" and bool(task.args.get("id")))


def download_task(
    task: TaskSpec, data_root: Path, progress: Callable[[str, int, int | None], None] | None = None
) -> list[str]:
    """Fetch and unpack every public archive of ``task`` (or cache its Hub dataset); returns what was
    done, one line each."""
    if task.loader == "hf" and task.args.get("id"):
        hub_id = str(task.args["id"])
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise UserError(f"{hub_id}: HF_HUB_OFFLINE is set; unset it on a machine with a network")
        try:
            import datasets
        except ImportError:
            raise UserError("a Hub dataset needs the datasets package: pip install datasets") from None
        datasets.load_dataset(hub_id)
        return [f"{hub_id} -> the datasets cache"]
    done = []
    for archive in archives_for(task):
        report = (lambda n, total, a=archive: progress(a.filename, n, total)) if progress else None
        path = fetch(archive, data_root / DOWNLOAD_DIR, report)
        unpack(path, archive, data_root)
        done.append(f"{archive.filename} -> {archive.dest}/")
    return done
