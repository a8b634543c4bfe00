"""The decoded-image cache (harness/image_cache.py): cached pixels are the decoded pixels byte for
byte, a changed source file is decoded again, a killed fill is never read as whole, two processes
filling one cache do not corrupt it, evaluation streams from it, and a run's metrics do not depend
on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import TaskSpec
from petlbench.cli import main
from petlbench.errors import UserError
from petlbench.harness import image_cache as ic
from petlbench.harness.data import iter_pixels, materialize
from petlbench.harness.image_cache import CachedImageDataset, ImageCache, source_of

REPO = Path(__file__).resolve().parents[2]


def _folder(root: Path, n_test: int = 40, classes: int = 3) -> Path:
    """An imagefolder task of odd-sized JPEGs (so decoding resizes and crops)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", classes), ("val", classes), ("test", n_test)):
        for i in range(n):
            path = root / "d" / split / f"c{i % classes}" / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 255, (37 + i % 5, 45 + i % 3, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path, quality=90)
    return root


def _split(root: Path, **args):
    args = {"path": "d", "image_size": 32, **args}
    spec = TaskSpec(name="t", loader="imagefolder", args=args, templates=("{}",))
    return load_task(spec, root).split("test")


@pytest.mark.parametrize(
    "args, out",
    [
        ({}, 32),  # decoded at the backbone's side
        ({}, 24),  # decoded at 32, then resized to 24 (bicubic), as materialize does
        ({"resize": "square", "interpolation": "bilinear"}, 32),
        ({"resize": "resize_crop", "interpolation": "tf_bilinear"}, 16),
    ],
)
def test_cached_pixels_are_byte_identical_to_decoding(tmp_path: Path, args, out) -> None:
    root = _folder(tmp_path)
    split = _split(root, **args)
    plain = materialize(split, out)
    cache = ImageCache(tmp_path / "cache")
    streamed = materialize(split, out, cache=cache, stream=True)
    assert isinstance(streamed, CachedImageDataset) and cache.decoded_rows == 40
    assert torch.equal(streamed.images[:], plain.images) and torch.equal(streamed.labels, plain.labels)
    assert streamed.sha256() == plain.sha256()
    in_memory = materialize(split, out, cache=cache)  # a training set: read into memory, not decoded
    assert type(in_memory).__name__ == "TensorImageDataset" and torch.equal(in_memory.images, plain.images)
    assert cache.decoded_rows == 40
    # every way the harness indexes images reads the same rows
    idx = torch.tensor([5, 1, 2, 3, 9, 9, 0, 39])
    assert torch.equal(streamed.images[idx], plain.images[idx])
    assert torch.equal(streamed.images[3], plain.images[3])
    assert torch.equal(streamed.images[-1], plain.images[-1])
    assert torch.equal(streamed.images[1:30:4], plain.images[1:30:4])
    batches = list(iter_pixels(streamed, torch.device("cpu"), 7))
    assert [b.shape[0] for b in batches] == [7] * 5 + [5]
    assert torch.equal(torch.cat(batches), plain.images.float() / 255)
    # np.load maps the entry as an ordinary .npy array
    mapped = np.load(streamed.entry / "images.npy", mmap_mode="r")
    assert mapped.shape == (40, 3, out, out) and np.array_equal(mapped, plain.images.numpy())


def test_a_second_process_reads_without_decoding(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path)
    split = _split(root)
    first = materialize(split, 32, cache=ImageCache(tmp_path / "cache"), stream=True)
    from petlbench.benchmarks.datasets import _files

    monkeypatch.setattr(_files, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    again = ImageCache(tmp_path / "cache")
    second = materialize(_split(root), 32, cache=again, stream=True)
    assert again.decoded_rows == 0 and second.entry == first.entry
    assert again.state(source_of(split, 32)).state == "cached"
    assert again.summary()["entries"] == 1 and again.summary()["bytes"] > 40 * 3 * 32 * 32


def test_a_changed_source_file_is_decoded_again_and_only_it(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    materialize(_split(root), 32, cache=cache, stream=True)
    path = root / "d" / "test" / "c1" / "0004.jpg"
    # touched, same bytes: not decoded, and the new mtime is recorded (the next open hashes nothing)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert cache.state(source_of(_split(root), 32)).state == "cached"
    materialize(_split(root), 32, cache=cache, stream=True)
    assert cache.decoded_rows == 40
    index = json.loads(next((tmp_path / "cache" / "entries").glob("*/index.json")).read_text())
    (row,) = [f for f in index["files"] if f[0].endswith("c1/0004.jpg")]
    assert row[2] == 1_000_000_000
    # new content: the entry is stale, and exactly that image is decoded again
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(path)
    state = cache.state(source_of(_split(root), 32))
    assert (state.state, state.changed) == ("stale", 1)
    repaired = materialize(_split(root), 32, cache=cache, stream=True)
    assert cache.decoded_rows == 41
    assert torch.equal(repaired.images[:], materialize(_split(root), 32).images)
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 1  # replaced, not added beside
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_a_failed_fill_leaves_no_entry(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path, n_test=80)
    calls = {"n": 0}
    real = ic._decode_job

    def failing(job):
        calls["n"] += 1
        if calls["n"] == 2:
            raise UserError("image x is corrupt")
        return real(job)

    monkeypatch.setattr(ic, "_decode_job", failing)
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(UserError, match="corrupt"):
        materialize(_split(root), 32, cache=cache, stream=True)
    assert cache.state(source_of(_split(root), 32)).state == "absent"
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


FILL = """
    import os, signal, sys, time
    from pathlib import Path
    from petlbench.benchmarks.datasets import load_task
    from petlbench.benchmarks.suites import TaskSpec
    from petlbench.harness.image_cache import ImageCache, source_of

    root, mode = Path(sys.argv[1]), sys.argv[2]
    spec = TaskSpec(name="t", loader="imagefolder", args={"path": "d", "image_size": 32}, templates=("{}",))
    split = load_task(spec, root).split("test")

    def progress(label, done, total, elapsed):
        if mode == "kill" and done >= 64:
            os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of the fill, nothing cleaned up
        time.sleep(0.05)  # a slower fill, so two processes overlap

    cache = ImageCache(root / "cache", workers=1, progress=progress)
    cache.ensure(source_of(split, 32))
    print(cache.decoded_rows)
"""


def test_a_killed_fill_is_never_read_as_complete(tmp_path: Path) -> None:
    root = _folder(tmp_path, n_test=160)
    proc = _python(FILL, str(root), "kill")
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert list((root / "cache" / "tmp").iterdir())  # the half-written entry is there ...
    assert not (root / "cache" / "entries").exists()  # ... but not as an entry
    cache = ImageCache(root / "cache")
    assert cache.state(source_of(_split(root), 32)).state == "absent"
    filled = materialize(_split(root), 32, cache=cache, stream=True)
    assert cache.decoded_rows == 160 and torch.equal(filled.images[:], materialize(_split(root), 32).images)
    assert not list((root / "cache" / "tmp").iterdir())  # the dead fill's leftovers are removed


def test_two_fillers_in_one_process_decode_once(tmp_path: Path) -> None:
    """The lock is per open file (flock), so two threads with their own ImageCache exclude each other
    as two processes do (the slow test below runs two processes)."""
    import threading

    root = _folder(tmp_path, n_test=160)
    caches = [ImageCache(root / "cache", workers=1) for _ in range(2)]
    results: list[torch.Tensor] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.ensure(source_of(_split(root), 32))[0][:]))
        for c in caches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.decoded_rows for c in caches) == [0, 160]
    expected = materialize(_split(root), 32).images
    assert len(results) == 2 and all(torch.equal(r, expected) for r in results)


@pytest.mark.slow
def test_two_processes_filling_one_cache_decode_once(tmp_path: Path) -> None:
    root = _folder(tmp_path, n_test=160)
    procs = [_python(FILL, str(root), "fill") for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert sorted(int(out.strip()) for out, _ in outs) == [0, 160]  # one decoded, the other waited
    cache = ImageCache(root / "cache")
    got = materialize(_split(root), 32, cache=cache, stream=True)
    assert cache.decoded_rows == 0 and torch.equal(got.images[:], materialize(_split(root), 32).images)


def test_generated_data_is_not_cached(tmp_path: Path) -> None:
    args = {"kind": "colors", "n_train": 8, "n_val": 4, "n_test": 4}
    spec = TaskSpec(name="c", loader="synthetic", args=args)
    split = load_task(spec, None).split("test")
    assert source_of(split, 32) is None
    cache = ImageCache(tmp_path / "cache")
    assert torch.equal(materialize(split, 32, cache=cache).images, materialize(split, 32).images)
    assert not (tmp_path / "cache").exists()


SUITE = """
name: cached
version: "1"
description: an imagefolder task for the image-cache tests
backbones: [tiny-vit]
seeds: [1]
protocol:
  epochs: 2
  batch_size: 8
  eval_batch_size: 16
  optimizer: sgd
  lr: 0.1
  selection_split: val
  train_split: train
  eval_split: test
tasks:
  - name: folder
    loader: imagefolder
    args: {path: d, image_size: 40}
    templates: ["a {}."]
"""


def test_run_metrics_are_identical_with_and_without_the_cache(tmp_path: Path, capsys) -> None:
    _run_with_and_without_cache(tmp_path, capsys, ["--no-fgsm"])


@pytest.mark.slow
def test_run_metrics_and_fgsm_are_identical_with_and_without_the_cache(tmp_path: Path, capsys) -> None:
    fgsm = ["--fgsm-examples", "24", "--fgsm-eps", "0,2/255,8/255"]
    plain, _ = _run_with_and_without_cache(tmp_path, capsys, fgsm)
    assert plain.result["robustness"]["fgsm"]["examples"] == 24


def _run_with_and_without_cache(tmp_path: Path, capsys, options: list[str]):
    from petlbench.harness.store import Store

    root = _folder(tmp_path / "data", n_test=40)
    for i in range(12):  # a training split worth training on
        path = root / "d" / "train" / f"c{i % 3}" / f"extra{i}.jpg"
        pixels = np.random.default_rng(100 + i).integers(0, 255, (30, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    suite = tmp_path / "cached.yaml"
    suite.write_text(SUITE)
    base = ["run", "--method", "linear", "--suite", str(suite), "--data-root", str(root), "--json"]
    base += options
    records = {}
    for name, extra in (("plain", ["--no-image-cache"]), ("cached", [])):
        store = tmp_path / name / "s.sqlite"
        assert main([*base, "--store", str(store), *extra]) == 0, capsys.readouterr().err
        with Store(store) as s:
            (records[name],) = s.records()
    assert not (tmp_path / "plain" / "image-cache").exists()
    assert len(list((tmp_path / "cached" / "image-cache" / "entries").iterdir())) == 3  # train, val, test
    plain, cached = records["plain"], records["cached"]
    assert plain.metrics == cached.metrics
    assert plain.result.get("robustness") == cached.result.get("robustness")
    assert plain.result["history"] == cached.result["history"]
    assert cached.result["eval"]["examples"] == 40
    return plain, cached


def test_fgsm_in_chunks_equals_one_pass(monkeypatch) -> None:
    from petlbench.backbones import build_backbone
    from petlbench.backbones.classifier import ImageClassifier
    from petlbench.backbones.heads import LinearHead
    from petlbench.benchmarks.data import TensorImageDataset
    from petlbench.harness import robustness
    from petlbench.methods.linear import LinearProbe

    torch.manual_seed(0)
    backbone = build_backbone("tiny-vit")
    method = LinearProbe()
    method.attach(backbone)
    model = ImageClassifier(backbone, LinearHead(backbone.feature_dim, 3), method)
    g = torch.Generator().manual_seed(1)
    data = TensorImageDataset(
        torch.randint(0, 256, (37, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(0, 3, (37,), generator=g),
    )
    chunked = robustness.fgsm(model, data, 3, batch_size=4, epsilons=(0.0, 4 / 255, 0.5))  # chunks of 16
    monkeypatch.setattr(robustness, "CHUNK_BATCHES", 1000)
    whole = robustness.fgsm(model, data, 3, batch_size=4, epsilons=(0.0, 4 / 255, 0.5))
    assert chunked == whole and chunked["examples"] == 37


def test_bench_data_cache_then_check_reports_it(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "data", n_test=20)
    suite = tmp_path / "cached.yaml"
    suite.write_text(SUITE)
    cache = tmp_path / "cache"
    args = ["--suite", str(suite), "--data-root", str(root), "--cache-dir", str(cache)]
    assert main(["data", "check", *args, "--json", "--no-manifest"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "cached 0/1"
    assert main(["data", "cache", *args]) == 0
    out = capsys.readouterr().out
    assert "decoded" in out and "20 x 32px" in out.replace("\n", "")  # tiny-vit reads 32 px
    assert main(["data", "cache", *args]) == 0
    assert "already cached" in capsys.readouterr().out
    assert main(["data", "check", *args, "--json", "--no-manifest"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "cached 1/1"
    assert main(["data", "cache", *args, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_perf_data_prints_one_json_line(tmp_path: Path, capsys) -> None:
    assert main(["perf", "--data", "--images", "30", "--workers", "1", "--dir", str(tmp_path / "p")]) == 0
    line = json.loads(capsys.readouterr().out)
    for key in ("first_pass_s", "second_pass_s", "images_per_s_first", "images_per_s_cached"):
        assert line[key] > 0
    assert line["images"] == 30 and line["workers"] == 1 and line["eval_peak_rss_mib"] > 0
    assert line["cache_mib"] == pytest.approx(30 * 3 * 224 * 224 / 2**20, rel=0.01)
    assert main(["perf", "--data", "--images", "0"]) == 2
