"""Leakage between splits on a small VTAB-1k replica: an image listed twice in train, a train image
that is also in test by path and another by content (a byte copy under another name). ``bench data
check`` reports both and exits non-zero; ``bench run`` refuses with one line naming the files, and
trains nothing; hashes are read once per process; a clean replica passes both."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.benchmarks.datasets import list_task
from petlbench.benchmarks.suites import TaskSpec
from petlbench.cli import main, output
from petlbench.errors import UserError
from petlbench.harness import leakage
from petlbench.harness.manifest import MANIFEST_NAME

SUITE = """\
name: leaky
version: "1"
description: a VTAB-1k replica for the leakage tests
backbones: [tiny-vit]
seeds: [1]
protocol:
  epochs: 1
  batch_size: 4
  eval_batch_size: 8
  optimizer: sgd
  lr: 0.1
  weight_decay: 0.0
  momentum: 0.9
  warmup_epochs: 0
  grad_clip: null
  selection_split: val
  train_split: train
  eval_split: test
  shots: null
tasks:
  - name: mini
    loader: vtab1k
    args: {task: mini, num_classes: 2, image_size: 32}
"""
TASK = TaskSpec(name="mini", loader="vtab1k", args={"task": "mini", "num_classes": 2, "image_size": 32})


def _png(path: Path, seed: int) -> None:
    """Noise of a size of its own: no two images have the same file size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8 + seed, 12, 3), dtype=np.uint8)).save(path)


def _replica(root: Path, leaky: bool) -> Path:
    """vtab-1k/mini/: train800 (6), val200 (2), test (4), every image of its own content; ``leaky``
    adds train's first image listed twice, test's first image listed in train (by path), and a test
    image that is a byte copy of a train image under another name (by content)."""
    base = root / "vtab-1k" / "mini"
    lines: dict[str, list[str]] = {}
    seed = 0
    for split, n in (("train800", 6), ("val200", 2), ("test", 4)):
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}/{i:06d}.png"
            _png(base / rel, seed)
            seed += 1
            lines[split].append(f"{rel} {i % 2}")
    if leaky:
        lines["train800"].append(lines["train800"][0])
        lines["train800"].append(lines["test"][0])
        shutil.copyfile(base / "images/train800/000003.png", base / "images/test/000003.png")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, ls in lines.items():
        (base / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return root


@pytest.fixture(autouse=True)
def _fresh_hashes():
    leakage.clear_cache()
    yield
    leakage.clear_cache()


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "leaky.yaml"
    path.write_text(SUITE)
    return path


def test_find_leakage_reports_duplicates_and_overlaps_by_path_and_content(tmp_path: Path) -> None:
    listing = list_task(TASK, _replica(tmp_path / "data", leaky=True))
    found = leakage.find_leakage(listing)
    dups = {(d.split, d.by, tuple(d.paths)) for d in found.duplicates}
    assert ("train", "path", ("images/train800/000000.png",) * 2) in dups
    overlaps = {(o.split, o.other): o.pairs for o in found.overlaps}
    assert overlaps[("train", "test")] == [
        ("images/test/000000.png", "images/test/000000.png"),
        ("images/train800/000003.png", "images/test/000003.png"),
    ]
    assert ("trainval", "test") in overlaps  # trainval holds train: its overlap with test counts
    assert ("trainval", "train") not in overlaps and ("trainval", "val") not in overlaps  # by design
    assert ("train", "val") not in overlaps and ("val", "test") not in overlaps
    line = next(o for o in found.overlaps if o.split == "train").describe()
    assert line == (
        "2 images of split 'train' are also in 'test' (by path and by content): images/test/000000.png, "
        "images/train800/000003.png = images/test/000003.png"
    )


def test_data_check_reports_the_duplicate_and_the_overlap_and_fails(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(output.out, "width", 400)  # one table row per line
    root = _replica(tmp_path / "data", leaky=True)
    args = ["data", "check", "--suite", str(_suite(tmp_path)), "--data-root", str(root)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "problems" in out
    assert "images/train800/000000.png (listed 2 times)" in out and "more than once in split 'train'" in out
    assert "also in 'test'" in out and "images/train800/000003.png = images/test/000003.png" in out

    assert main([*args, "--json", "--no-manifest"]) == 1
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["status"] == "problems" and not row["missing"] and not row["corrupt"]
    assert {"split": "train", "by": "path", "paths": ["images/train800/000000.png"] * 2} in row["duplicates"]
    train_test = next(o for o in row["overlaps"] if (o["split"], o["other"]) == ("train", "test"))
    assert train_test["by"] == ["content", "path"]
    assert ["images/train800/000003.png", "images/test/000003.png"] in train_test["pairs"]


def test_run_refuses_an_overlap_with_one_line_and_trains_nothing(tmp_path: Path, capsys) -> None:
    from petlbench.harness.store import Store

    root = _replica(tmp_path / "data", leaky=True)
    store = tmp_path / "runs" / "s.sqlite"
    args = ["run", "--method", "linear", "--suite", str(_suite(tmp_path)), "--data-root", str(root)]
    args += ["--backbone", "tiny-vit", "--random-init", "--no-fgsm", "--seeds", "1", "--store", str(store)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: task 'mini': 2 images of split 'train' are also in 'test'")
    assert (
        "images/test/000000.png" in err[0] and "images/train800/000003.png = images/test/000003.png" in err[0]
    )
    assert err[0].endswith("fix the split files")
    if store.exists():
        with Store(store) as s:
            assert not [r for r in s.records() if r.status == "finished"]


def test_a_clean_replica_checks_ok_and_runs(tmp_path: Path, capsys) -> None:
    from petlbench.harness.store import Store

    root = _replica(tmp_path / "data", leaky=False)
    suite = str(_suite(tmp_path))
    assert main(["data", "check", "--suite", suite, "--data-root", str(root)]) == 0
    store = tmp_path / "s.sqlite"
    args = ["run", "--method", "linear", "--suite", suite, "--data-root", str(root), "--backbone", "tiny-vit"]
    args += ["--random-init", "--no-fgsm", "--seeds", "1", "--store", str(store)]
    assert main(args) == 0, capsys.readouterr().err
    with Store(store) as s:
        (rec,) = s.records()
    assert rec.status == "finished"


def test_duplicates_within_train_alone_do_not_stop_a_run(tmp_path: Path) -> None:
    root = _replica(tmp_path / "data", leaky=False)
    base = root / "vtab-1k" / "mini"
    shutil.copyfile(base / "images/train800/000001.png", base / "images/train800/000005.png")
    found = leakage.find_leakage(list_task(TASK, root))
    assert [(d.split, d.by) for d in found.duplicates] == [("train", "content"), ("trainval", "content")]
    assert not found.overlaps
    leakage.refuse_leakage(TASK, root, ("train", "val"), "test")  # no error


def test_hashes_are_read_once_per_process_and_a_manifest_is_used(tmp_path: Path, monkeypatch) -> None:
    root = _replica(tmp_path / "data", leaky=True)
    old = time.time() - 3600  # older than the racy window: hashes are kept
    for path in root.rglob("*.png"):
        os.utime(path, (old, old))
    opened: list[str] = []
    real_open = Path.open

    def counting_open(self, *a, **k):
        if self.suffix == ".png":
            opened.append(self.name)
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", counting_open)
    with pytest.raises(UserError, match="also in 'test'"):
        leakage.refuse_leakage(TASK, root, ("train", "val"), "test")
    first = len(opened)
    assert sorted(opened) == ["000003.png", "000003.png"]  # only files of a size another split has
    for _ in range(3):  # more seeds of the same task
        with pytest.raises(UserError):
            leakage.refuse_leakage(TASK, root, ("train", "val"), "test")
    assert len(opened) == first

    # A fresh process with a manifest (as `bench data check` writes it) reads no image at all.
    assert main(["data", "check", "--suite", str(_suite(tmp_path)), "--data-root", str(root)]) == 1
    assert (root / MANIFEST_NAME).is_file()
    leakage.clear_cache()
    opened.clear()
    with pytest.raises(UserError, match="images/train800/000003.png = images/test/000003.png"):
        leakage.refuse_leakage(TASK, root, ("train", "val"), "test")
    assert opened == []


def test_generated_data_and_no_data_root_are_not_checked() -> None:
    leakage.refuse_leakage(
        TaskSpec(name="c", loader="synthetic", args={}), Path("."), ("train", "val"), "test"
    )
    leakage.refuse_leakage(TASK, None, ("train", "val"), "test")
