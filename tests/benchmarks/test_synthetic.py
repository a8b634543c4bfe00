"""The procedural task generator: deterministic, balanced, fast, and drawing what its labels say."""

import json
import time

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.datasets.synthetic import (
    CLASS_NAMES,
    COLORS,
    SHAPES,
    _shape_masks,
    render,
)
from petlbench.errors import UserError

KINDS = ["colors", "shapes", "count", "position"]


def _np(ds):
    return ds.images.numpy(), ds.labels.numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_labels_and_balanced_classes(make_spec, kind):
    data = load_task(make_spec("synthetic", kind=kind, n_train=130, n_val=40, n_test=50, seed=3), None)
    n_classes = len(CLASS_NAMES[kind])
    assert data.class_names == list(CLASS_NAMES[kind]) and data.image_size == 32
    assert set(data.splits) == {"train", "val", "test"}
    for split, n in (("train", 130), ("val", 40), ("test", 50)):
        ds = data.split(split)
        assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (n, 3, 32, 32)
        assert ds.labels.dtype == torch.int64 and tuple(ds.labels.shape) == (n,)
        counts = torch.bincount(ds.labels, minlength=n_classes)
        assert counts.numel() == n_classes  # no label beyond the class list
        assert counts.min() == n // n_classes and counts.max() == -(-n // n_classes)  # balanced
        img, label = ds[0]
        assert img.shape == (3, 32, 32) and isinstance(label, int)
    # the images are not flat: objects are drawn on the background
    assert data.split("train").images.float().std() > 20


def test_same_seed_same_bytes_other_seed_other_bytes(make_spec):
    a = load_task(make_spec("synthetic", kind="count", n_train=64, seed=7, shift="texture"), None)
    b = load_task(make_spec("synthetic", kind="count", n_train=64, seed=7, shift="texture"), None)
    c = load_task(make_spec("synthetic", kind="count", n_train=64, seed=8, shift="texture"), None)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split).images, b.split(split).images)
        assert torch.equal(a.split(split).labels, b.split(split).labels)
        assert not torch.equal(a.split(split).images, c.split(split).images)
    assert a.meta["sha256"] == b.meta["sha256"] and a.meta["sha256"] != c.meta["sha256"]
    # splits come from disjoint random streams: no train image reappears in val or test
    train = {bytes(x) for x in a.split("train").images.numpy()}
    assert not train & {bytes(x) for x in a.split("val").images.numpy()}
    assert not train & {bytes(x) for x in a.split("test").images.numpy()}


def test_meta_is_json_and_records_args_and_hashes(make_spec):
    data = load_task(make_spec("synthetic", kind="colors", n_train=60, n_test=0, shift="noise"), None)
    meta = json.loads(json.dumps(data.meta))
    assert meta["loader"] == "synthetic" and meta["generator"].startswith("synthetic-v")
    assert meta["args"]["kind"] == "colors" and meta["args"]["n_val"] == 128  # defaults are recorded
    assert meta["args"]["image_size"] == 32 and meta["args"]["noise_std"] == 40.0
    assert set(data.splits) == {"train", "val"}  # n_test: 0 leaves the split out
    assert meta["shifted_splits"] == []
    assert meta["sha256"]["train"] == data.split("train").sha256()


def test_image_size_scales_the_drawing(make_spec):
    data = load_task(
        make_spec("synthetic", kind="position", n_train=40, n_val=8, n_test=8, image_size=48), None
    )
    assert data.image_size == 48 and tuple(data.split("train").images.shape) == (40, 3, 48, 48)


def test_a_thousand_images_in_well_under_a_second():
    render("count", 64, 32, 0, "train")  # warm-up (numpy first-call costs)
    start = time.perf_counter()
    images, _ = render("count", 1000, 32, 0, "train")  # count draws four objects: the slowest kind
    assert images.shape == (1000, 3, 32, 32)
    assert time.perf_counter() - start < 1.0


def test_colors_are_the_labelled_palette_colour(split_foreground):
    images, labels = render("colors", 300, 32, 1, "val")
    mask, _ = split_foreground(images)
    palette = np.asarray(list(COLORS.values()), dtype=np.float64)
    predicted = []
    for img, m in zip(images, mask, strict=True):
        mean = img[:, m].mean(axis=1)
        predicted.append(int(np.argmin(((palette - mean) ** 2).sum(axis=1))))
    assert np.mean(np.array(predicted) == labels) > 0.97


def test_position_puts_the_object_in_the_labelled_quadrant(split_foreground):
    images, labels = render("position", 300, 32, 2, "train")
    mask, _ = split_foreground(images)
    quadrant = []
    for m in mask:
        ys, xs = np.nonzero(m)
        quadrant.append(int(xs.mean() + 0.5 > 16) + 2 * int(ys.mean() + 0.5 > 16))
    assert CLASS_NAMES["position"][1] == "top right"
    assert np.mean(np.array(quadrant) == labels) > 0.97


def test_count_draws_label_plus_one_separate_objects(split_foreground):
    images, labels = render("count", 300, 32, 4, "train")
    mask, _ = split_foreground(images)
    components = np.array([ndimage.label(m, structure=np.ones((3, 3)))[1] for m in mask])
    assert CLASS_NAMES["count"] == ("one", "two", "three", "four")
    assert np.mean(components == labels + 1) > 0.97


def test_shape_masks_are_the_named_shapes():
    n, size = len(SHAPES), 41
    c = np.full(n, 20.5)
    masks = _shape_masks(np.arange(n), c, c, np.full(n, 15.0), size)
    area = dict(zip(SHAPES, masks.sum(axis=(1, 2)), strict=True))
    assert abs(area["circle"] - np.pi * 15**2) / (np.pi * 15**2) < 0.05
    assert abs(area["square"] - 24**2) / 24**2 < 0.1
    centre, corner = (20, 20), (20 - 9, 20 - 9)
    m = dict(zip(SHAPES, masks, strict=True))
    assert m["circle"][centre] and not m["ring"][centre] and m["ring"][20, 20 + 12]
    assert m["cross"][centre] and not m["cross"][corner] and m["square"][corner]
    assert m["triangle"][20 + 10, 20 + 10] and not m["triangle"][20 - 12, 20 + 5]  # wide base, narrow apex
    assert len({mk.tobytes() for mk in masks}) == n


def test_noise_shift_changes_only_the_test_pixels(make_spec):
    args = {"kind": "shapes", "n_train": 50, "n_val": 20, "n_test": 100, "seed": 5}
    plain = load_task(make_spec("synthetic", **args, shift="none"), None)
    noisy = load_task(make_spec("synthetic", **args, shift="noise", noise_std=30.0), None)
    for split in ("train", "val"):
        assert torch.equal(plain.split(split).images, noisy.split(split).images)
    assert torch.equal(plain.split("test").labels, noisy.split("test").labels)  # paired test sets
    diff = noisy.split("test").images.float() - plain.split("test").images.float()
    assert 25 < float(diff.std()) < 31  # the asked-for std, a little less where clipping bites
    assert noisy.meta["shifted_splits"] == ["test"]


def test_texture_shift_stripes_the_background_and_keeps_objects(make_spec, split_foreground):
    args = {"kind": "colors", "n_train": 30, "n_val": 6, "n_test": 60, "seed": 2}
    plain = load_task(make_spec("synthetic", **args), None).split("test").images.numpy()
    striped = load_task(make_spec("synthetic", **args, shift="texture"), None).split("test").images.numpy()
    objects, _ = split_foreground(plain)
    same = (plain == striped).all(axis=1)
    assert same[objects].all()  # object pixels untouched
    background_change = np.abs(plain.astype(int) - striped.astype(int)).max(axis=1)[~objects]
    assert background_change.mean() > 15


def test_background_shift_moves_test_backgrounds_from_cool_to_warm(make_spec, split_foreground):
    data = load_task(
        make_spec("synthetic", kind="position", n_train=100, n_val=50, n_test=100, shift="background"), None
    )
    for split, warm in (("train", False), ("val", False), ("test", True)):
        _, bg = split_foreground(data.split(split).images.numpy())
        red_minus_blue = bg[:, 0] - bg[:, 2]
        assert (red_minus_blue > 0).all() if warm else (red_minus_blue < 0).all(), split


def _probe(data, split="test", c=0.01):
    tr, te = data.split("train"), data.split(split)
    x_tr = tr.images.reshape(len(tr), -1).numpy() / 255.0
    x_te = te.images.reshape(len(te), -1).numpy() / 255.0
    clf = LogisticRegression(max_iter=300, C=c).fit(x_tr, tr.labels.numpy())
    return clf.score(x_te, te.labels.numpy())


def test_linear_probe_on_pixels_learns_colors_and_position(make_spec):
    colors = load_task(
        make_spec("synthetic", kind="colors", n_train=384, n_val=128, n_test=256, seed=0), None
    )
    assert _probe(colors) > 0.6  # chance 1/6
    position = load_task(make_spec("synthetic", kind="position", n_train=384, n_val=256, n_test=8), None)
    assert _probe(position, "val") > 0.45  # chance 1/4


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({}, ["missing", "'kind'"]),
        ({"kind": "hexagons"}, ["'kind'", "colors, shapes, count, position", "hexagons"]),
        ({"kind": "colors", "shift": "fog"}, ["'shift'", "noise", "fog"]),
        ({"kind": "colors", "n_train": "many"}, ["'n_train'", "int", "many"]),
        ({"kind": "colors", "n_train": True}, ["'n_train'", "int"]),
        ({"kind": "colors", "n_train": 5}, ["'n_train'", "6", "no class is empty"]),
        ({"kind": "colors", "image_size": 4}, ["'image_size'", "16"]),
        ({"kind": "colors", "sede": 1}, ["unknown args", "'sede'", "seed"]),
    ],
)
def test_bad_args_are_user_errors_naming_the_arg(make_spec, args, words):
    with pytest.raises(UserError) as info:
        load_task(make_spec("synthetic", name="mytask", **args), None)
    message = str(info.value)
    assert "mytask" in message and "synthetic" in message
    for word in words:
        assert word in message
