"""`bench data prepare --download`: public archives are fetched (here from a local file:// address),
checked, recorded and unpacked into the loader's layout; failures and unsafe archives get one clear
line; without --download nothing is fetched and prepare says what could be."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.benchmarks.datasets import Archive, coop, load_task
from petlbench.benchmarks.suites import load_suite
from petlbench.cli import main, output
from petlbench.errors import UserError
from petlbench.harness import data_download as dl

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
    real = coop.ARCHIVES["FGVCAircraft"][0]
    monkeypatch.setitem(coop.ARCHIVES, "FGVCAircraft", (Archive(archive.as_uri(), real.dest, real.strip),))
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
    assert record.split()[0] == hashlib.sha256(served.read_bytes()).hexdigest()
    data = load_task(load_suite("fewshot11").task("fgvc_aircraft"), root)
    assert data.class_names == VARIANTS
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    # A second prepare finds it present and fetches nothing.
    served.unlink()
    assert main([*args, "--download"]) == 0


def test_an_unreachable_address_is_one_line_and_the_by_hand_source(tmp_path, monkeypatch, capsys):
    gone = Archive((tmp_path / "nowhere.tar.gz").as_uri(), "fgvc_aircraft", "fgvc-aircraft-2013b/data")
    monkeypatch.setitem(coop.ARCHIVES, "FGVCAircraft", (gone,))
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setattr(output.out, "width", 400)  # one table row per line
    args = ["data", "prepare", "--suite", "fewshot11", "--data-root", str(root), "--tasks", "fgvc_aircraft"]
    code = main([*args, "--download"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and "could not download" in errors[0]
    assert "fgvc-aircraft-2013b.tar.gz" in captured.out  # the table still says where to get it by hand
    assert not list((root / dl.DOWNLOAD_DIR).glob("*.part"))  # no half file left to be mistaken


def test_a_pinned_hash_that_differs_is_refused(tmp_path, served):
    bad = Archive(served.as_uri(), "fgvc_aircraft", "fgvc-aircraft-2013b/data", sha256="0" * 64)
    with pytest.raises(UserError, match="expected 0000"):
        dl.fetch(bad, tmp_path / "downloads")


def test_members_that_would_escape_the_data_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        _add(tar, "../outside.txt", b"x")
    with pytest.raises(UserError, match="outside the data folder"):
        dl.unpack(evil, Archive(evil.as_uri(), "d"), tmp_path / "root")
    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("/etc/passwd", "x")
    with pytest.raises(UserError, match="outside the data folder"):
        dl.unpack(zipped, Archive(zipped.as_uri(), "d"), tmp_path / "root")
    assert not (tmp_path / "outside.txt").exists()


def test_zip_and_plain_files_land_in_the_destination(tmp_path):
    zipped = tmp_path / "EuroSAT.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("2750/Forest/Forest_1.jpg", _jpeg(1))
    dl.unpack(zipped, Archive(zipped.as_uri(), "eurosat"), tmp_path / "root")
    assert (tmp_path / "root" / "eurosat" / "2750" / "Forest" / "Forest_1.jpg").stat().st_size > 0
    labels = tmp_path / "imagelabels.mat"
    labels.write_bytes(b"MATLAB")
    dl.unpack(labels, Archive(labels.as_uri(), "oxford_flowers"), tmp_path / "root")
    assert (tmp_path / "root" / "oxford_flowers" / "imagelabels.mat").read_bytes() == b"MATLAB"


def test_every_listed_source_is_a_fewshot11_dataset_and_hub_tasks_stay_offline(monkeypatch):
    names = {str(t.args.get("dataset")) for t in load_suite("fewshot11").tasks}
    assert set(coop.ARCHIVES) <= names
    task = load_suite("fewshot11").task("fgvc_aircraft")
    assert dl.can_download(task)
    hub = type(task)(name="h", loader="hf", args={"id": "someone/some-set"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        dl.download_task(hub, Path("."))


# ----- damaged and malformed archives: one line naming the archive, nothing half-unpacked -------------


def _tar(path: Path, *members: tarfile.TarInfo | tuple[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                _add(tar, *m)
    return path


def _info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _unpack(path: Path, root: Path, strip: str = "") -> Path:
    return dl.unpack(path, Archive(path.as_uri(), "d", strip), root)


def _noise(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("name", ["garbage.tar.gz", "garbage.tgz", "garbage.tar"])
def test_a_garbage_tar_is_one_line_naming_it(tmp_path, name):
    junk = tmp_path / name
    junk.write_bytes(_noise(5000))
    with pytest.raises(UserError, match=rf"archive .*{name} is not a readable tar archive.*delete it") as err:
        _unpack(junk, tmp_path / "root")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "root" / "d").exists() and not list((tmp_path / "root").iterdir())


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_a_truncated_archive_is_refused_and_leaves_no_file_behind(tmp_path, mode, suffix):
    whole = _tar(
        tmp_path / f"whole{suffix}",
        ("a/first.bin", _noise(20000, 1)),
        ("a/second.bin", _noise(20000, 2)),
        mode=mode,
    )
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    with pytest.raises(UserError, match=rf"archive .*cut{suffix} .*(truncated|corrupt)"):
        _unpack(cut, tmp_path / "root")
    # the first member was read whole before the damage, but nothing was moved in
    assert not (tmp_path / "root" / "d").exists() and not list((tmp_path / "root").iterdir())
    assert (_unpack(whole, tmp_path / "root") / "a" / "second.bin").read_bytes() == _noise(20000, 2)


def test_a_zip_that_is_not_a_zip_and_a_truncated_zip(tmp_path):
    junk = tmp_path / "EuroSAT.zip"
    junk.write_bytes(_noise(3000))
    with pytest.raises(UserError, match=r"archive .*EuroSAT.zip is not a readable zip archive"):
        _unpack(junk, tmp_path / "root")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("x/a.bin", _noise(30000))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(UserError, match=r"archive .*cut.zip is not a readable zip archive"):
        _unpack(cut, tmp_path / "root")
    bad_crc = bytearray(good.read_bytes())
    bad_crc[200] ^= 0xFF  # inside the stored data: the CRC check fails
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(bytes(bad_crc))
    with pytest.raises(UserError, match=r"archive .*flipped.zip .*(truncated or corrupt)"):
        _unpack(flipped, tmp_path / "root")
    assert not (tmp_path / "root" / "d").exists()


def test_a_name_that_is_both_a_file_and_a_folder_is_refused(tmp_path):
    file_then_folder = _tar(tmp_path / "ff.tar.gz", ("img", b"x"), ("img/1.jpg", b"y"))
    with pytest.raises(UserError, match=r"archive .*ff.tar.gz: 'img' is both a file and a folder"):
        _unpack(file_then_folder, tmp_path / "root")
    folder_then_file = _tar(tmp_path / "df.tar.gz", _info("img", tarfile.DIRTYPE), ("img", b"x"))
    with pytest.raises(UserError, match=r"archive .*df.tar.gz: 'img' is both a file and a folder"):
        _unpack(folder_then_file, tmp_path / "root")
    zipped = tmp_path / "ff.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("img/1.jpg", "y")
        zf.writestr("img", "x")
    with pytest.raises(UserError, match=r"archive .*ff.zip: 'img' is both a file and a folder"):
        _unpack(zipped, tmp_path / "root")
    assert not (tmp_path / "root" / "d").exists()


@pytest.mark.parametrize(
    "member",
    [
        _info("a/evil", tarfile.SYMTYPE, "../../outside.txt"),
        _info("a/evil", tarfile.SYMTYPE, "/etc/passwd"),
        _info("a/evil", tarfile.LNKTYPE, "../outside.txt"),
        _info("a/evil", tarfile.LNKTYPE, "/etc/passwd"),
    ],
    ids=["symlink-up", "symlink-absolute", "hardlink-up", "hardlink-absolute"],
)
def test_links_pointing_out_of_the_archive_are_refused(tmp_path, member):
    evil = _tar(tmp_path / "links.tar.gz", ("a/ok.txt", b"ok"), member)
    with pytest.raises(
        UserError, match=r"archive .*links.tar.gz: member 'a/evil' is a link to .*outside the archive"
    ):
        _unpack(evil, tmp_path / "root")
    assert not (tmp_path / "root" / "d").exists()


def test_a_zip_symlink_out_and_a_link_out_of_the_stripped_folder_are_refused(tmp_path):
    zipped = tmp_path / "links.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        info = zipfile.ZipInfo("a/evil")
        info.external_attr = (0o120777) << 16
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(
        UserError, match=r"archive .*links.zip: member 'a/evil' is a link to '../../etc/passwd'"
    ):
        _unpack(zipped, tmp_path / "root")
    out_of_strip = _tar(
        tmp_path / "s.tar.gz", ("top/README", b"r"), _info("top/data/r", tarfile.SYMTYPE, "../README")
    )
    with pytest.raises(UserError, match="outside the folder that is unpacked"):
        _unpack(out_of_strip, tmp_path / "root", strip="top/data")


def test_links_inside_the_archive_are_unpacked_as_copies(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz",
        ("top/data/images/1.jpg", b"one"),
        _info("top/data/images/same.jpg", tarfile.SYMTYPE, "1.jpg"),
        _info("top/data/hard.jpg", tarfile.LNKTYPE, "top/data/images/1.jpg"),
        _info("top/data/alias", tarfile.SYMTYPE, "images"),
    )
    dest = _unpack(archive, tmp_path / "root", strip="top/data")
    for rel in ("images/1.jpg", "images/same.jpg", "hard.jpg", "alias/1.jpg"):
        assert (dest / rel).read_bytes() == b"one" and not (dest / rel).is_symlink()
    dangling = _tar(tmp_path / "dangling.tar.gz", _info("a/b", tarfile.SYMTYPE, "nothing"))
    with pytest.raises(UserError, match="which the archive does not hold"):
        _unpack(dangling, tmp_path / "root")


def test_leftovers_of_a_crashed_unpack_are_discarded(tmp_path, monkeypatch):
    archive = _tar(tmp_path / "a.tar.gz", ("x/1.bin", b"1"), ("x/2.bin", b"2"))
    root = tmp_path / "root"
    stale = root / ".d.a.tar.gz.unpacking"
    (stale / "x").mkdir(parents=True)
    (stale / "x" / "half.bin").write_bytes(b"half")
    # A crash while reading: nothing reaches the destination.
    calls = []
    real = dl.shutil.copyfileobj

    def crash_on_second(src, dst, *a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst, *a)

    monkeypatch.setattr(dl.shutil, "copyfileobj", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _unpack(archive, root)
    assert not (root / "d").exists()
    monkeypatch.setattr(dl.shutil, "copyfileobj", real)
    (stale / "x").mkdir(parents=True)  # as a killed process leaves it
    (stale / "x" / "half.bin").write_bytes(b"half")
    dest = _unpack(archive, root)
    assert sorted(p.name for p in (dest / "x").iterdir()) == ["1.bin", "2.bin"]
    assert not stale.exists()
