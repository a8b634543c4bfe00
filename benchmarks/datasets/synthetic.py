"""Procedural image classification tasks: offline, seeded, deterministic, fast.

Each task draws coloured shapes on a background with vectorised numpy (about 10 ms per 1,000
32x32 images). Class names are plain words, so CLIP-style methods can put them in prompts.

Kinds (``args.kind``):

- ``colors``   the colour of one shape (red, green, blue, yellow, purple, orange)
- ``shapes``   the shape of one object (circle, square, triangle, cross, ring)
- ``count``    how many objects there are (one .. four): a structured task
- ``position`` which quadrant one shape is in (top left, top right, bottom left, bottom right)

Shifts (``args.shift``) change the *test* split only; train and val stay in distribution, so model
selection never sees the shift:

- ``none``        no shift
- ``noise``       additive Gaussian pixel noise (std ``noise_std``): an input-level corruption
- ``texture``     the plain background becomes random stripes
- ``background``  train/val backgrounds are cool (darker, bluish), test backgrounds warm (lighter,
                  orange-brown)

The test split is drawn from the same random stream whatever the shift, so a shifted test set
holds the same objects as the unshifted one: accuracies under different shifts are paired.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from petlbench.errors import UserError

from ..data import TaskData, TensorImageDataset
from ._args import REQUIRED, check_choice, check_range, read_args
from .registry import FORMATS, DatasetFormat

if TYPE_CHECKING:
    from ..suites import TaskSpec

GENERATOR_VERSION = "synthetic-v1"  # bump when the drawing changes: recorded in every result

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 75, 225),
    "yellow": (235, 215, 40),
    "purple": (140, 45, 175),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
COUNTS = ("one", "two", "three", "four")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "colors": tuple(COLORS),
    "shapes": SHAPES,
    "count": COUNTS,
    "position": POSITIONS,
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colors": ("a {} shape.", "a photo of a {} object."),
    "shapes": ("a {}.", "a photo of a {} shape."),
    "count": ("the number of shapes is {}.", "a picture showing {} shapes."),
    "position": ("a shape in the {} corner.", "an object at the {}."),
}
KINDS = tuple(CLASS_NAMES)
SHIFTS = ("none", "noise", "texture", "background")
SPLITS = ("train", "val", "test")

SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "kind": (str, REQUIRED),
    "n_train": (int, 256),
    "n_val": (int, 128),
    "n_test": (int, 256),
    "image_size": (int, 32),
    "seed": (int, 0),
    "shift": (str, "none"),
    "noise_std": (float, 40.0),
}


def check_args(args: Mapping[str, Any]) -> None:
    a = read_args("synthetic", args, SCHEMA)
    check_choice("synthetic", "kind", a["kind"], KINDS)
    check_choice("synthetic", "shift", a["shift"], SHIFTS)
    n_classes = len(CLASS_NAMES[a["kind"]])
    if a["n_train"] < n_classes:
        raise UserError(
            f"loader 'synthetic': arg 'n_train' must be at least the number of classes ({n_classes} for "
            f"kind {a['kind']!r}) so that no class is empty; got {a['n_train']}"
        )
    check_range("synthetic", "n_val", a["n_val"], 0)
    check_range("synthetic", "n_test", a["n_test"], 0)
    check_range("synthetic", "image_size", a["image_size"], 16, 1024)
    check_range("synthetic", "seed", a["seed"], 0)
    check_range("synthetic", "noise_std", a["noise_std"], 0.0, 255.0)


# ----- drawing ------------------------------------------------------------------------------------


def _shape_masks(
    shape_ids: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks (N, S, S) of one shape per image, centred at (cx, cy) with "radius" r (pixels)."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)
    r = r[:, None, None].astype(np.float32)
    ax, ay = np.abs(dx), np.abs(dy)
    dist2 = dx * dx + dy * dy
    draw: dict[str, Callable[[], np.ndarray]] = {
        "circle": lambda: dist2 <= r * r,
        "square": lambda: np.maximum(ax, ay) <= 0.8 * r,
        # apex up, base down; y grows downwards
        "triangle": lambda: (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r)),
        "cross": lambda: ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r)),
        "ring": lambda: (dist2 <= r * r) & (dist2 >= (0.5 * r) ** 2),
    }
    masks = np.zeros((len(shape_ids), size, size), dtype=bool)
    for sid, name in enumerate(SHAPES):
        sel = shape_ids == sid
        if sel.any():
            masks[sel] = draw[name]()[sel]
    return masks


def _backgrounds(u: np.ndarray, family: str) -> np.ndarray:
    """Per-image background colours (N, 3) from uniforms ``u`` (N, 4): same u, different family, so a
    shifted image keeps everything but its background."""
    if family == "plain":  # mid greys, slightly tinted
        level = 95 + 55 * u[:, :1]
        tint = (u[:, 1:4] - 0.5) * 24
    elif family == "cool":  # darker, bluish
        level = 60 + 40 * u[:, :1]
        tint = np.array([-10.0, 0.0, 30.0]) + (u[:, 1:4] - 0.5) * 16
    elif family == "warm":  # lighter, orange-brown
        level = 100 + 40 * u[:, :1]
        tint = np.array([30.0, 5.0, -30.0]) + (u[:, 1:4] - 0.5) * 16
    else:  # pragma: no cover - internal
        raise ValueError(family)
    return level + tint


def _stripes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Random oriented sinusoidal stripes (N, S, S) in [-1, 1]."""
    grid = np.arange(size, dtype=np.float32) + 0.5
    theta = rng.uniform(0, np.pi, n).astype(np.float32)
    freq = rng.uniform(2.0, 5.0, n).astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    proj = (
        np.cos(theta)[:, None, None] * grid[None, None, :]
        + np.sin(theta)[:, None, None] * grid[None, :, None]
    )
    return np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])


def _objects(
    kind: str, labels: np.ndarray, rng: np.random.Generator, size: int
) -> list[dict[str, np.ndarray]]:
    """Object slots to paint, in order: each a dict of per-image arrays (active, shape, colour, cx, cy, r).
    The label fixes the attribute the task asks about; everything else is random."""
    n = len(labels)
    n_colors = len(COLORS)

    def one(r_lo: float, r_hi: float) -> dict[str, np.ndarray]:
        r = rng.uniform(r_lo, r_hi, n) * size
        return {
            "active": np.ones(n, dtype=bool),
            "shape": rng.integers(0, len(SHAPES), n),
            "color": rng.integers(0, n_colors, n),
            "r": r,
            "cx": rng.uniform(r + 1, size - r - 1),
            "cy": rng.uniform(r + 1, size - r - 1),
        }

    if kind == "colors":
        obj = one(0.16, 0.28)
        obj["color"] = labels
        return [obj]
    if kind == "shapes":
        obj = one(0.24, 0.34)
        obj["shape"] = labels
        return [obj]
    if kind == "position":
        obj = one(0.12, 0.18)
        half = size / 2
        qx, qy = labels % 2, labels // 2  # POSITIONS order: tl, tr, bl, br
        r = obj["r"]
        obj["cx"] = qx * half + rng.uniform(r + 1, half - r)
        obj["cy"] = qy * half + rng.uniform(r + 1, half - r)
        return [obj]
    if kind == "count":
        # objects sit in distinct cells of a 3x3 grid, so they never overlap and are all visible
        cells = np.argsort(rng.random((n, 9)), axis=1)
        cell = size / 3
        slots = []
        for k in range(len(COUNTS)):
            r = rng.uniform(0.09, 0.13, n) * size
            row, col = cells[:, k] // 3, cells[:, k] % 3
            slack = np.maximum(cell / 2 - r - 0.5, 0.0)
            slots.append(
                {
                    "active": labels >= k,  # label 0 = "one" object
                    "shape": rng.integers(0, len(SHAPES), n),
                    "color": rng.integers(0, n_colors, n),
                    "r": r,
                    "cx": (col + 0.5) * cell + rng.uniform(-1, 1, n) * slack,
                    "cy": (row + 0.5) * cell + rng.uniform(-1, 1, n) * slack,
                }
            )
        return slots
    raise ValueError(kind)  # pragma: no cover - checked by check_args


def render(
    kind: str,
    n: int,
    size: int,
    seed: int,
    split: str,
    shift: str = "none",
    noise_std: float = 40.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` images of one split: uint8 (N, 3, S, S) and int64 labels (N,), balanced classes."""
    n_classes = len(CLASS_NAMES[kind])
    # One stream per (seed, kind, split): splits never share random numbers, and two tasks with the
    # same seed but different kinds do not either.
    base = np.random.SeedSequence([seed, zlib.crc32(kind.encode()), SPLITS.index(split)])
    content_seq, shift_seq = base.spawn(2)
    rng = np.random.default_rng(content_seq)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)

    shifted = split == "test" and shift != "none"
    bg_u = rng.random((n, 4))
    family = "plain"
    if shift == "background":
        family = "warm" if shifted else "cool"
    canvas = np.broadcast_to(_backgrounds(bg_u, family)[:, :, None, None], (n, 3, size, size)).astype(
        np.float32
    )
    grain = rng.normal(0.0, 3.0, (n, 3, size, size)).astype(np.float32)  # a little sensor noise
    palette = np.asarray(list(COLORS.values()), dtype=np.float32)
    is_bg = np.ones((n, 1, size, size), dtype=bool)
    for obj in _objects(kind, labels, rng, size):
        color = palette[obj["color"]] + rng.uniform(-15, 15, (n, 3)).astype(np.float32)
        mask = _shape_masks(obj["shape"], obj["cx"], obj["cy"], obj["r"], size) & obj["active"][:, None, None]
        canvas = np.where(mask[:, None], color[:, :, None, None], canvas)
        is_bg &= ~mask[:, None]
    canvas = canvas + grain

    if shifted and shift in ("noise", "texture"):
        srng = np.random.default_rng(shift_seq)
        if shift == "noise":
            canvas = canvas + srng.normal(0.0, noise_std, canvas.shape).astype(np.float32)
        else:
            # stripes on the background only; objects stay as they are
            canvas = np.where(is_bg, canvas + 45.0 * _stripes(srng, n, size)[:, None], canvas)
    images = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return images, labels


def load_synthetic(task_spec: TaskSpec, data_root: Path | None) -> TaskData:
    """Generate a task (``data_root`` is not used: nothing is read from disk)."""
    check_args(task_spec.args)
    a = read_args("synthetic", task_spec.args, SCHEMA)
    kind, size = a["kind"], a["image_size"]
    splits: dict[str, TensorImageDataset] = {}
    hashes: dict[str, str] = {}
    for split in SPLITS:
        n = a[f"n_{split}"]
        if n == 0:
            continue
        images, labels = render(kind, n, size, a["seed"], split, a["shift"], a["noise_std"])
        splits[split] = TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels))
        hashes[split] = splits[split].sha256()
    return TaskData(
        name=task_spec.name,
        class_names=list(CLASS_NAMES[kind]),
        templates=list(TEMPLATES[kind]),
        splits=splits,
        image_size=size,
        meta={
            "loader": "synthetic",
            "generator": GENERATOR_VERSION,
            "args": a,
            "shifted_splits": ["test"] if a["shift"] != "none" and "test" in splits else [],
            "sha256": hashes,
        },
    )


FORMATS.register("synthetic", DatasetFormat(load_synthetic, check_args=check_args))
