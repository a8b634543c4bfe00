"""`bench data prepare --download`: public archives are fetched (here from a local file:// address),
checked, recorded and unpacked into the loader's layout; failures and unsafe archives get one clear
line; without --download nothing is fetched and prepare says what could be."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import load_suite
from petlbench.errors import UserError
from petlbench.harness import commands
from petlbench.harness import data_download as dl
from petlbench.harness.cli import main

VARIANTS = ["707-320", "A300B4", "Cessna 172"]


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _aircraft_archive(path: Path) -> Path:
    """fgvc-aircraft-2013b.tar.gz as the original site lays it out (data/ below a top folder)."""
    top = "fgvc-aircraft-2013b/data"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{top}/variants.txt", ("\n".join(VARIANTS) + "\n").encode())
        _add(tar, "fgvc-aircraft-2013b/README.html", b"<html></html>")  # outside data/: not unpacked
        n = 0
        for split, per in (("train", 2), ("val", 1), ("test", 1)):
            lines = []
            for _ in range(per):
                for v in VARIANTS:
                    image_id = f"{1000000 + n:07d}"
                    _add(tar, f"{top}/images/{image_id}.jpg", _jpeg(n))
                    lines.append(f"{image_id} {v}")
                    n += 1
            _add(tar, f"{top}/images_variant_{split}.txt", ("\n".join(lines) + "\n").encode())
    return path


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The Aircraft archive behind a file:// address in place of the original site's."""
    (tmp_path / "served").mkdir()
    archive = _aircraft_archive(tmp_path / "served" / "fgvc-aircraft-2013b.tar.gz")
    real = dl.COOP_ARCHIVES["FGVCAircraft"][0]
    monkeypatch.setitem(
        dl.COOP_ARCHIVES, "FGVCAircraft", (dl.Archive(archive.as_uri(), real.dest, real.strip),)
    )
    return archive


def test_download_unpacks_into_the_coop_layout_and_the_loader_reads_it(tmp_path, served, capsys):
    root = tmp_path / "data"
    root.mkdir()
    args = ["data", "prepare", "--suite", "fewshot11", "--data-root", str(root), "--tasks", "fgvc_aircraft"]
    assert main(args) == 1  # not there, and nothing is fetched without --download
    assert "can be downloaded: add --download" in capsys.readouterr().err
    assert not (root / "fgvc_aircraft").exists()

    assert main([*args, "--download"]) == 0
    assert "downloaded" in capsys.readouterr().out
    assert not (root / "fgvc_aircraft" / "README.html").exists()
    record = (root / dl.DOWNLOAD_DIR / "fgvc-aircraft-2013b.tar.gz.sha256").read_text()
    assert record.split()[0] == dl.sha256_of(served)
    data = load_task(load_suite("fewshot11").task("fgvc_aircraft"), root)
    assert data.class_names == VARIANTS
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    # A second prepare finds it present and fetches nothing.
    served.unlink()
    assert main([*args, "--download"]) == 0


def test_an_unreachable_address_is_one_line_and_the_by_hand_source(tmp_path, monkeypatch, capsys):
    gone = dl.Archive((tmp_path / "nowhere.tar.gz").as_uri(), "fgvc_aircraft", "fgvc-aircraft-2013b/data")
    monkeypatch.setitem(dl.COOP_ARCHIVES, "FGVCAircraft", (gone,))
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setattr(commands.out, "width", 400)  # one table row per line
    args = ["data", "prepare", "--suite", "fewshot11", "--data-root", str(root), "--tasks", "fgvc_aircraft"]
    code = main([*args, "--download"])
    out = capsys.readouterr().out
    assert code == 1 and "could not download" in out and "fgvc-aircraft-2013b.tar.gz" in out
    assert not list((root / dl.DOWNLOAD_DIR).glob("*.part"))  # no half file left to be mistaken


def test_a_pinned_hash_that_differs_is_refused(tmp_path, served):
    bad = dl.Archive(served.as_uri(), "fgvc_aircraft", "fgvc-aircraft-2013b/data", sha256="0" * 64)
    with pytest.raises(UserError, match="expected 0000"):
        dl.fetch(bad, tmp_path / "downloads")


def test_members_that_would_escape_the_data_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        _add(tar, "../outside.txt", b"x")
    with pytest.raises(UserError, match="outside the data folder"):
        dl.unpack(evil, dl.Archive(evil.as_uri(), "d"), tmp_path / "root")
    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("/etc/passwd", "x")
    with pytest.raises(UserError, match="outside the data folder"):
        dl.unpack(zipped, dl.Archive(zipped.as_uri(), "d"), tmp_path / "root")
    assert not (tmp_path / "outside.txt").exists()


def test_zip_and_plain_files_land_in_the_destination(tmp_path):
    zipped = tmp_path / "EuroSAT.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("2750/Forest/Forest_1.jpg", _jpeg(1))
    dl.unpack(zipped, dl.Archive(zipped.as_uri(), "eurosat"), tmp_path / "root")
    assert (tmp_path / "root" / "eurosat" / "2750" / "Forest" / "Forest_1.jpg").stat().st_size > 0
    labels = tmp_path / "imagelabels.mat"
    labels.write_bytes(b"MATLAB")
    dl.unpack(labels, dl.Archive(labels.as_uri(), "oxford_flowers"), tmp_path / "root")
    assert (tmp_path / "root" / "oxford_flowers" / "imagelabels.mat").read_bytes() == b"MATLAB"


def test_every_listed_source_is_a_fewshot11_dataset_and_hub_tasks_stay_offline(monkeypatch):
    names = {str(t.args.get("dataset")) for t in load_suite("fewshot11").tasks}
    assert set(dl.COOP_ARCHIVES) <= names
    task = load_suite("fewshot11").task("fgvc_aircraft")
    assert dl.can_download(task)
    hub = type(task)(name="h", loader="hf", args={"id": "someone/some-set"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        dl.download_task(hub, Path("."))
