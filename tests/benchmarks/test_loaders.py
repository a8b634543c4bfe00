"""Disk loaders (coop, vtab1k, fgvc, imagefolder, hf) on small replicas of the real layouts written to
a temp dir: counts, labels, class names; CoOp's few-shot sampling and its portable index; one clear
error per kind of broken data; ``bench data check`` / ``prepare``; and ``bench run`` on fewshot11."""

from __future__ import annotations

import json
import random
import shutil
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.datasets._files import FileImageDataset, tf_bilinear_resize
from petlbench.benchmarks.fewshot import few_shot_splits, read_index
from petlbench.benchmarks.suites import TaskSpec, load_suite
from petlbench.cli import main
from petlbench.errors import UserError

PETS = ["Abyssinian", "beagle", "Bengal", "boxer"]


def _seed(*parts: object) -> int:
    """A stable seed per image (no ``hash()``: it changes with PYTHONHASHSEED), distinct per name, so
    no two generated images are equal by chance (the leakage check would rightly flag them)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def _image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _spec(
    loader: str, name: str = "t", templates: tuple[str, ...] = ("a photo of a {}.",), **args
) -> TaskSpec:
    return TaskSpec(name=name, loader=loader, args=args, templates=templates)


def _coop_json(root: Path, folder: str, image_dir: str, split_file: str, counts=(7, 3, 4), classes=PETS):
    """A CoOp dataset folder: images + split_zhou json with [relpath, label, classname] items."""
    base = root / folder
    split: dict[str, list] = {}
    k = 0
    for s, n in zip(("train", "val", "test"), counts, strict=True):
        items = []
        for i in range(n):  # interleaved classes, like the real split files (not grouped)
            for label, cname in enumerate(classes):
                rel = f"{cname}_{s}_{i}.jpg"
                _image(base / image_dir / rel if image_dir else base / rel, k)
                k += 1
                items.append([rel, label, cname])
        split[s] = items
    (base / split_file).write_text(json.dumps(split))
    return base


@pytest.fixture
def coop_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _coop_json(root, "oxford_pets", "images", "split_zhou_OxfordPets.json")
    # StanfordCars: paths relative to the dataset folder itself
    _coop_json(
        root, "stanford_cars", "", "split_zhou_StanfordCars.json", (2, 1, 1), ["AM General Hummer", "Audi R8"]
    )
    # FGVCAircraft: variants.txt + images_variant_*.txt
    air = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    air.mkdir(parents=True)
    (air / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for s, per in (("train", 3), ("val", 1), ("test", 2)):
        lines = []
        for _ in range(per):
            for v in variants:
                image_id = f"{1000000 + n:07d}"
                _image(air / "images" / f"{image_id}.jpg", 100 + n)
                lines.append(f"{image_id} {v}")
                n += 1
        (air / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    # ImageNet: classnames.txt + images/{train,val}/<wnid>/
    inet = root / "imagenet"
    wnids = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    inet.mkdir(parents=True)
    (inet / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in wnids.items()))
    for s, per in (("train", 5), ("val", 2)):
        for w in wnids:
            for i in range(per):
                _image(inet / "images" / s / w / f"{w}_{i}.JPEG", _seed(s, w, i))
    return root


# ----- coop -------------------------------------------------------------------------------------------


def test_coop_json_counts_labels_and_class_names(coop_root: Path) -> None:
    data = load_task(_spec("coop", "pets", dataset="OxfordPets", image_size=16), coop_root)
    assert data.class_names == PETS
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 28, "val": 12, "test": 16}
    assert data.split("train").labels.tolist()[:4] == [0, 1, 2, 3]
    image, label = data.split("test")[5]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 16, 16) and label == 1
    assert data.meta["few_shot_selection"] == "coop" and data.meta["preprocess"]["resize"] == "center_crop"

    cars = load_task(_spec("coop", "cars", dataset="StanfordCars", image_size=16), coop_root)
    assert cars.class_names == ["AM General Hummer", "Audi R8"] and len(cars.split("train")) == 4
    assert cars.split("train").relpaths[0] == "AM General Hummer_train_0.jpg"


def test_coop_aircraft_and_imagenet_layouts(coop_root: Path) -> None:
    air = load_task(_spec("coop", "air", dataset="FGVCAircraft", image_size=16), coop_root)
    assert air.class_names == ["707-320", "A300B4", "Cessna 172"]
    assert [len(air.split(s)) for s in ("train", "val", "test")] == [9, 3, 6]
    assert air.split("train").labels.tolist()[:3] == [0, 1, 2]

    inet = load_task(_spec("coop", "inet", dataset="ImageNet", image_size=16), coop_root)
    assert inet.class_names == ["tench", "goldfish", "great white shark"]
    assert set(inet.splits) == {"train", "test"}  # ImageNet's val is the test set: no val to select on
    assert len(inet.split("train")) == 15 and inet.split("test").labels.tolist() == [0, 0, 1, 1, 2, 2]
    train, selection = few_shot_splits(inet, "train", "val", 2, seed=1)
    picked, held = set(train.relpaths), set(selection.relpaths)
    assert len(picked) == 6 and len(held) == 6 and not picked & held  # held out of train, never test
    train2, selection2 = few_shot_splits(inet, "train", "val", 2, seed=1)  # now read from the index
    assert train2.relpaths == train.relpaths and selection2.relpaths == selection.relpaths


def _reference_fewshot(items: list, shots: int) -> list:
    """Dassl's generate_fewshot_dataset (repeat=False), on the global random, verbatim in spirit."""
    tracker = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    out = []
    for _, group in tracker.items():
        out.extend(random.sample(group, shots) if len(group) >= shots else group)
    return out


@pytest.mark.parametrize(("shots", "seed"), [(1, 1), (2, 2), (4, 3), (16, 1)])
def test_coop_few_shot_matches_reference_and_index_is_portable(coop_root: Path, tmp_path: Path, shots, seed):
    split = json.loads((coop_root / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    random.seed(seed)
    ref_train = [f"images/{p}" for p, _, _ in _reference_fewshot(split["train"], shots)]
    ref_val = [f"images/{p}" for p, _, _ in _reference_fewshot(split["val"], min(shots, 4))]

    spec = _spec("coop", "pets", dataset="OxfordPets", image_size=16)
    data = load_task(spec, coop_root)
    train, val = few_shot_splits(data, "train", "val", shots, seed)
    assert train.relpaths == ref_train and val.relpaths == ref_val
    index = coop_root / "oxford_pets" / "split_fewshot" / f"shot_{shots}-seed_{seed}.json"
    assert read_index(index) == {
        "train": [(p, PETS.index(p.split("/")[1].rsplit("_", 2)[0])) for p in ref_train],
        "val": [(p, PETS.index(p.split("/")[1].rsplit("_", 2)[0])) for p in ref_val],
    }
    # Portable: the same index read from a copy of the data at another place gives the same images.
    moved = tmp_path / "elsewhere"
    shutil.copytree(coop_root, moved)
    assert str(coop_root) not in index.read_text()
    train2, val2 = few_shot_splits(load_task(spec, moved), "train", "val", shots, seed)
    assert train2.relpaths == ref_train and val2.relpaths == ref_val


def test_few_shot_index_is_reused_and_stale_one_replaced(coop_root: Path) -> None:
    spec = _spec("coop", "pets", dataset="OxfordPets", image_size=16)
    data = load_task(spec, coop_root)
    train, _ = few_shot_splits(data, "train", "val", 2, 5)
    index = coop_root / "oxford_pets" / "split_fewshot" / "shot_2-seed_5.json"
    doc = json.loads(index.read_text())
    doc["train"] = doc["train"][::-1]  # a valid but different pick list: it is what gets used
    index.write_text(json.dumps(doc))
    again, _ = few_shot_splits(data, "train", "val", 2, 5)
    assert again.relpaths == train.relpaths[::-1]
    doc["train_sha256"] = "0" * 64  # from another split file: resampled and rewritten
    index.write_text(json.dumps(doc))
    fresh, _ = few_shot_splits(data, "train", "val", 2, 5)
    assert fresh.relpaths == train.relpaths
    assert json.loads(index.read_text())["train_sha256"] != "0" * 64


def test_few_shot_set_is_decoded_once_and_kept_as_uint8(coop_root: Path, monkeypatch) -> None:
    from petlbench.benchmarks.datasets import _files
    from petlbench.harness.data import materialize

    data = load_task(_spec("coop", "pets", dataset="OxfordPets", image_size=16), coop_root)
    calls = []
    real = _files.decode_image
    monkeypatch.setattr(_files, "decode_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    train, _ = few_shot_splits(data, "train", "val", 2, 1)
    first = materialize(train, 16)
    assert first.images.dtype == torch.uint8 and len(calls) == 8
    again, _ = few_shot_splits(data, "train", "val", 2, 1)  # another run of the same process
    second = materialize(again, 16)
    assert len(calls) == 8 and torch.equal(first.images, second.images)


def test_base_to_new_split_after_sampling(coop_root: Path) -> None:
    base = load_task(_spec("coop", "b", dataset="OxfordPets", subsample="base", image_size=16), coop_root)
    new = load_task(_spec("coop", "n", dataset="OxfordPets", subsample="new", image_size=16), coop_root)
    assert base.class_names == PETS[:2] and set(base.split("test").labels.tolist()) == {0, 1}
    # a new-class task trains on the base classes and tests on the new ones, named for the harness
    assert new.class_names == PETS[:2] and new.meta["eval_class_names"] == PETS[2:]
    assert new.split("train").relpaths == base.split("train").relpaths
    assert set(new.split("test").labels.tolist()) == {0, 1} and len(new.split("test")) == 8
    assert all(p.split("/")[1].rsplit("_", 2)[0] in PETS[2:] for p in new.split("test").relpaths)
    full = load_task(_spec("coop", "a", dataset="OxfordPets", image_size=16), coop_root)
    all_train, _ = few_shot_splits(full, "train", "val", 2, 3)
    base_train, _ = few_shot_splits(base, "train", "val", 2, 3)
    # CoCoOp subsamples classes after sampling the full split: the base picks are the full picks' base part
    assert base_train.relpaths == [
        p for p in all_train.relpaths if p.split("/")[1].rsplit("_", 2)[0] in PETS[:2]
    ]


# ----- vtab1k, fgvc, imagefolder, hf ------------------------------------------------------------------


def _vtab(root: Path, task: str = "eurosat", n_cls: int = 10) -> Path:
    base = root / "vtab-1k" / task
    sizes = {"train800": 2 * n_cls, "val200": n_cls, "test": n_cls}
    lines: dict[str, list[str]] = {}
    for s, n in sizes.items():
        lines[s] = []
        for i in range(n):
            rel = f"images/{s}/{i:06d}.jpg"
            _image(base / rel, _seed(task, s, i))
            lines[s].append(f"{rel} {i % n_cls}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for s, ls in lines.items():
        (base / f"{s}.txt").write_text("\n".join(ls) + "\n")
    return base


def test_vtab1k_layout(tmp_path: Path) -> None:
    _vtab(tmp_path)
    data = load_task(_spec("vtab1k", "eurosat", task="eurosat", image_size=16), tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 10, "trainval": 30, "test": 10}
    assert data.class_names == [str(i) for i in range(10)]
    assert data.split("test").labels.tolist() == list(range(10))
    assert data.meta["preprocess"]["resize"] == "square" and data.meta["group"] == "Specialized"
    assert data.split("train")[0][0].shape == (3, 16, 16)


def _legacy_tf_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """An independent float64 reference of TF1's ResizeBilinear (align_corners=False,
    half_pixel_centers=False): output pixel i samples input coordinate i * in / out, no antialias."""
    h, w = img.shape[:2]
    out = np.zeros((out_h, out_w, img.shape[2]))
    for i in range(out_h):
        sy = i * h / out_h
        y0 = int(np.floor(sy))
        y1, dy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * w / out_w
            x0 = int(np.floor(sx))
            x1, dx = min(x0 + 1, w - 1), sx - x0
            out[i, j] = (1 - dy) * ((1 - dx) * img[y0, x0] + dx * img[y0, x1]) + dy * (
                (1 - dx) * img[y1, x0] + dx * img[y1, x1]
            )
    return out


@pytest.mark.parametrize("shape, out", [((10, 12), (16, 16)), ((23, 17), (7, 9)), ((5, 5), (5, 5))])
def test_tf_bilinear_equals_an_independent_legacy_tf_resize(shape, out) -> None:
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    ours = tf_bilinear_resize(torch.from_numpy(img).permute(2, 0, 1), *out).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, _legacy_tf_bilinear(img.astype(np.float64), *out), atol=1e-3, rtol=0)


def test_tf_bilinear_is_tf1s_grid_not_half_pixel() -> None:
    """tf.compat.v1.image.resize maps output i to input i * in / out (TF2's resize is half-pixel)."""
    row = torch.tensor([[[0.0, 10.0]]])
    assert tf_bilinear_resize(row, 1, 4).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    half_pixel = torch.nn.functional.interpolate(row[None], size=(1, 4), mode="bilinear", align_corners=False)
    assert half_pixel.flatten().tolist() == [0.0, 2.5, 7.5, 10.0]
    ramp = torch.tensor([[[0.0, 10.0, 20.0, 30.0]]])
    assert tf_bilinear_resize(ramp, 1, 2).flatten().tolist() == [0.0, 20.0]  # inputs 0 and 2, no antialias


def test_vtab1k_default_resize_is_vpts_tf_bilinear(tmp_path: Path) -> None:
    base = _vtab(tmp_path)
    data = load_task(_spec("vtab1k", "eurosat", task="eurosat", image_size=16), tmp_path)
    assert data.meta["preprocess"] == {"image_size": 16, "resize": "square", "interpolation": "tf_bilinear"}
    image, _ = data.split("test")[3]
    with Image.open(base / "images/test/000003.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    expected = np.round(_legacy_tf_bilinear(rgb.astype(np.float64), 16, 16))
    diff = np.abs(image.permute(1, 2, 0).numpy().astype(np.int64) - expected)
    assert image.dtype == torch.uint8 and diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_fgvc_layout_remaps_class_ids(tmp_path: Path) -> None:
    base = tmp_path / "CUB_200_2011"
    ids = [3, 17, 200]
    for s, per in (("train", 3), ("val", 1), ("test", 2)):
        doc = {}
        for i in range(per):
            for cid in ids:
                rel = f"{cid:03d}.Bird/{s}_{i}.jpg"
                _image(base / "images" / rel, _seed(rel, cid, i))
                doc[rel] = cid
        (base / f"{s}.json").write_text(json.dumps(doc))
    data = load_task(_spec("fgvc", "cub", dataset="CUB", image_size=16), tmp_path)
    assert data.class_names == ["3", "17", "200"]
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [9, 3, 6]
    assert data.split("test").labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.meta["preprocess"] == {"image_size": 16, "resize": "resize_crop", "interpolation": "bilinear"}
    # VPT's eval transform, torchvision on PIL: Resize(int(16 * 256 / 224)) then CenterCrop(16)
    import torchvision.transforms as tv

    with Image.open(base / "images" / data.split("test").relpaths[0].removeprefix("images/")) as im:
        ref = tv.Compose([tv.Resize(18), tv.CenterCrop(16), tv.PILToTensor()])(im.convert("RGB"))
    assert torch.equal(data.split("test")[0][0], ref)
    tf = load_task(_spec("fgvc", "cub", dataset="CUB", image_size=16, interpolation="tf_bilinear"), tmp_path)
    assert tf.split("test")[0][0].shape == (3, 16, 16)


def _imagefolder(root: Path) -> Path:
    for s, per in (("train", 3), ("validation", 1), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(per):
                _image(root / s / c / f"{i}.png", _seed(s, c, i))
    return root


def test_imagefolder_and_hf_local_folder(tmp_path: Path, monkeypatch) -> None:
    _imagefolder(tmp_path / "pets")
    data = load_task(_spec("imagefolder", "if", path="pets", image_size=16), tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 2, "test": 4}
    hf = load_task(_spec("hf", "hf", path="pets", image_size=16), tmp_path)
    assert hf.class_names == ["cat", "dog"] and len(hf.split("train")) == 6
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot be loaded offline"):
        load_task(_spec("hf", "hub", id="timm/oxford-iiit-pet"), None)


def test_hf_parquet_export_reads_image_bytes_and_labels(tmp_path: Path) -> None:
    """The layout `datasets` pushes to the Hub: data/<split>-*.parquet with {'bytes', 'path'} images."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    root = tmp_path / "pets_parquet"
    (root / "data").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4)):
        images, labels = [], []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
            labels.append(i % 3)
        table = pa.table({"image": images, "label": labels})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    data = load_task(
        _spec("hf", "pq", path="pets_parquet", image_size=16, class_names=["a", "b", "c"]), tmp_path
    )
    assert data.class_names == ["a", "b", "c"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "test": 4}
    image, label = data.split("test")[2]
    assert image.shape == (3, 16, 16) and label == 2
    # bad bytes: the row and the task are named
    bad = pa.table({"image": [{"bytes": b"not an image", "path": None}] + images[1:3], "label": [0, 1, 2]})
    pq.write_table(bad, root / "data" / "train-00000-of-00001.parquet")
    broken = load_task(_spec("hf", "pq", path="pets_parquet", image_size=16), tmp_path)
    with pytest.raises(UserError, match="row 0 holds an unreadable image"):
        broken.split("train")[0]


# ----- errors -----------------------------------------------------------------------------------------


def test_missing_image_and_split_file_naming_absent_file(coop_root: Path) -> None:
    (coop_root / "oxford_pets" / "images" / "beagle_val_1.jpg").unlink()
    with pytest.raises(
        UserError, match=r"split_zhou_OxfordPets\.json.*do not exist.*images/beagle_val_1\.jpg"
    ):
        load_task(_spec("coop", "pets", dataset="OxfordPets"), coop_root)
    (coop_root / "fgvc_aircraft" / "images_variant_test.txt").write_text("9999999 A300B4\n")
    with pytest.raises(UserError, match=r"images_variant_test\.txt.*images/9999999\.jpg"):
        load_task(_spec("coop", "air", dataset="FGVCAircraft"), coop_root)


def test_truncated_jpeg_names_the_file_and_task(coop_root: Path) -> None:
    from petlbench.harness.data import materialize

    path = coop_root / "oxford_pets" / "images" / "boxer_test_2.jpg"
    _image(path, 3, size=(96, 96))
    path.write_bytes(path.read_bytes()[:400])
    data = load_task(_spec("coop", "pets", dataset="OxfordPets", image_size=16), coop_root)
    with pytest.raises(UserError, match=r"task 'pets'.*boxer_test_2\.jpg is corrupt or truncated"):
        materialize(data.split("test"), 16)


def test_unknown_labels(coop_root: Path, tmp_path: Path) -> None:
    path = coop_root / "oxford_pets" / "split_zhou_OxfordPets.json"
    doc = json.loads(path.read_text())
    doc["test"][0][1] = 9
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"split_zhou_OxfordPets\.json: test\[0\].*unknown label 9"):
        load_task(_spec("coop", "pets", dataset="OxfordPets"), coop_root)
    (coop_root / "fgvc_aircraft" / "images_variant_val.txt").write_text("1000000 Boeing 999\n")
    with pytest.raises(UserError, match=r"images_variant_val\.txt line 1: unknown label"):
        load_task(_spec("coop", "air", dataset="FGVCAircraft"), coop_root)
    base = _vtab(tmp_path / "v")
    (base / "test.txt").write_text("images/test/000000.jpg 10\n")
    with pytest.raises(UserError, match=r"test\.txt line 1: unknown label 10"):
        load_task(_spec("vtab1k", "e", task="eurosat"), tmp_path / "v")


def test_empty_class(coop_root: Path, tmp_path: Path) -> None:
    path = coop_root / "oxford_pets" / "split_zhou_OxfordPets.json"
    doc = json.loads(path.read_text())
    doc["train"] = [item for item in doc["train"] if item[1] != 1]
    doc["val"] = [item for item in doc["val"] if item[1] != 1]
    doc["test"] = [item for item in doc["test"] if item[1] != 1]
    path.write_text(json.dumps(doc))
    with pytest.raises(
        UserError, match=r"split_zhou_OxfordPets\.json: label\(s\) \[1\] have no training images"
    ):
        load_task(_spec("coop", "pets", dataset="OxfordPets"), coop_root)
    root = _imagefolder(tmp_path / "f")
    (root / "train" / "bird").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/bird is empty"):
        load_task(_spec("imagefolder", "f", path="."), root)


def test_missing_layout_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"task 'pets' \(coop OxfordPets\): expected a folder at .*oxford_pets"
    ):
        load_task(_spec("coop", "pets", dataset="OxfordPets"), tmp_path)
    (tmp_path / "oxford_pets").mkdir()
    with pytest.raises(UserError, match=r"split_zhou_OxfordPets\.json.*DATASETS\.md"):
        load_task(_spec("coop", "pets", dataset="OxfordPets"), tmp_path)


# ----- suites -----------------------------------------------------------------------------------------


def test_real_suites() -> None:
    few = load_suite("fewshot11")
    assert (
        len(few.tasks) == 11 and few.seeds == (1, 2, 3) and few.protocol.shots == 16 and few.needs_data_root
    )
    assert few.protocol.epochs == 200 and few.protocol_for(few.task("imagenet"), "coop").epochs == 50
    assert few.task("eurosat").templates == ("a centered satellite photo of {}.",)
    vtab = load_suite("vtab1k")
    groups = [t.group for t in vtab.tasks]
    assert len(vtab.tasks) == 19 and [groups.count(g) for g in ("Natural", "Specialized", "Structured")] == [
        7,
        4,
        8,
    ]
    assert (vtab.protocol.train_split, vtab.protocol.selection_split) == ("trainval", "val")
    assert len(load_suite("fgvc").tasks) == 5 and len(load_suite("base2new").tasks) == 22
    for name in ("fewshot11", "base2new", "vtab1k", "fgvc"):
        suite = load_suite(name)
        assert suite.version and all(suite.protocol_for(t).selection_split != "test" for t in suite.tasks)


# ----- CLI --------------------------------------------------------------------------------------------


def test_data_check_table_manifest_and_exit_status(coop_root: Path, capsys) -> None:
    args = ["data", "check", "--suite", "fewshot11", "--data-root", str(coop_root)]
    tasks = ["--tasks", "oxford_pets,stanford_cars,fgvc_aircraft,imagenet"]
    assert main([*args, *tasks]) == 0
    manifest = json.loads((coop_root / "petlbench-manifest.json").read_text())
    assert "oxford_pets/images/beagle_val_1.jpg" in manifest["files"]
    assert "ok" in capsys.readouterr().out

    images = coop_root / "oxford_pets" / "images"
    (images / "beagle_val_1.jpg").unlink()
    _image(images / "boxer_test_2.jpg", 3, size=(96, 96))
    (images / "boxer_test_2.jpg").write_bytes((images / "boxer_test_2.jpg").read_bytes()[:400])
    _image(images / "Bengal_train_0.jpg", 4242)  # a valid image, but not the one the manifest knows
    assert main([*args, "--tasks", "oxford_pets,caltech101"]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "beagle_val_1.jpg (listed in" in out and "split_zhou_OxfordPets.json" in out
    assert "boxer_test_2.jpg: does not decode" in out
    assert "Bengal_train_0.jpg: sha256 differs from the manifest" in out
    assert "caltech101" in out and "expected a folder" in out

    assert main([*args, "--tasks", "oxford_pets", "--json", "--no-manifest"]) == 1
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["status"] == "problems" and len(row["missing"]) == 1 and len(row["corrupt"]) == 1


def test_data_prepare_lists_what_to_fetch(coop_root: Path, capsys) -> None:
    code = main(["data", "prepare", "--suite", "fewshot11", "--data-root", str(coop_root)])
    out = capsys.readouterr().out
    assert code == 1 and "present" in out and "food-101.tar.gz" in out.replace("\n", "")


def test_run_coop_fewshot11_end_to_end(coop_root: Path, tmp_path: Path, capsys) -> None:
    from petlbench.harness.store import Store

    store = tmp_path / "runs" / "s.sqlite"
    base = ["run", "--method", "coop", "--suite", "fewshot11", "--data-root", str(coop_root)]
    opts = ["--backbone", "tiny-clip", "--seeds", "1", "--store", str(store), "--no-fgsm"]
    code = main([*base, *opts, "--tasks", "oxford_pets", "--protocol", "epochs=1"])
    assert code == 0, capsys.readouterr().err
    with Store(store) as s:
        (rec,) = s.records()
    assert rec.status == "finished" and rec.spec.task == "oxford_pets"
    assert rec.result["train"]["train_examples"] == 28  # 16 shots > 7 per class: all of train
    assert rec.provenance["data"]["loader"] == "coop"
    assert (coop_root / "oxford_pets" / "split_fewshot" / "shot_16-seed_1.json").is_file()
    # A task whose data is missing says which task failed.
    assert main([*base, *opts, "--tasks", "caltech101", "--protocol", "epochs=1"]) == 2
    assert "task 'caltech101'" in capsys.readouterr().err


def test_file_dataset_labels_need_no_decoding(coop_root: Path, monkeypatch) -> None:
    from petlbench.benchmarks.datasets import _files

    monkeypatch.setattr(_files, "decode_image", lambda *a, **k: pytest.fail("decoded"))
    data = load_task(_spec("coop", "pets", dataset="OxfordPets"), coop_root)
    assert isinstance(data.split("train"), FileImageDataset)
    few_shot_splits(data, "train", "val", 1, 1)


def test_run_base_to_new_tests_new_classes_with_the_base_trained_prompt(
    coop_root: Path, tmp_path: Path
) -> None:
    from petlbench.harness.store import Store

    store = tmp_path / "b2n.sqlite"
    code = main(
        ["run", "--method", "coop", "--suite", "base2new", "--data-root", str(coop_root), "--backbone"]
        + ["tiny-clip", "--seeds", "1", "--store", str(store), "--no-fgsm", "--tasks", "oxford_pets-new"]
        + ["--protocol", "epochs=1", "--protocol", "batch_size=8"]
    )
    assert code == 0
    with Store(store) as s:
        (rec,) = s.records()
    assert rec.status == "finished" and rec.result["eval"]["examples"] == 8
    assert rec.result["train"]["train_examples"] == 14  # base classes only


def test_vtab_final_trains_on_train800val200_and_search_on_train800(tmp_path: Path) -> None:
    from petlbench.harness.store import Store

    _vtab(tmp_path / "data")
    store = tmp_path / "v.sqlite"
    common = ["--suite", "vtab1k", "--data-root", str(tmp_path / "data"), "--backbone", "tiny-vit"]
    common += ["--tasks", "eurosat", "--seeds", "1", "--store", str(store), "--no-fgsm"]
    args = ["sweep", "--methods", "linear", *common, "--protocol", "epochs=1", "--grid", "lr=0.1,0.01"]
    assert main(args) == 0
    with Store(store) as s:
        records = s.records()
    search = [r for r in records if r.spec.stage == "search"]
    final = [r for r in records if r.spec.stage != "search"]
    assert len(search) == 2 and len(final) == 1
    assert all(r.result["train"]["train_examples"] == 20 for r in search)  # train800, scored on val200
    assert all(r.result["eval"]["split"] == "val" for r in search)
    assert final[0].result["train"]["train_examples"] == 30 and final[0].result["eval"]["split"] == "test"
