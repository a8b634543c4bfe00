"""Scenes of coloured shapes with attributes, rendered with numpy, and captions that describe them.

A scene is either one object (shape, colour, size, quadrant) or 2-4 identical objects (count).
Attributes pretraining uses: 5 shapes, 6 colours, 2 sizes, 4 quadrants, counts 1-4, plain grey-ish
backgrounds. Held out of pretraining: the colours ``pink`` and ``cyan`` (their words are in the
vocabulary, never in a caption) and striped backgrounds. Captions follow a small grammar that drops
attributes at random, so text and image align per attribute:
``"a large red circle in the top left."``, ``"a blue shape."``, ``"three yellow squares."``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petlbench.benchmarks.datasets.synthetic import (
    COLORS,
    COUNTS,
    POSITIONS,
    SHAPES,
    _backgrounds,
    _shape_masks,
    _stripes,
)

WORLD_VERSION = "world-v1"  # bump when drawing or grammar change: recorded with weights and results

HELD_OUT_COLORS: dict[str, tuple[int, int, int]] = {"pink": (250, 130, 200), "cyan": (40, 215, 225)}
ALL_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, **HELD_OUT_COLORS}
PRETRAIN_COLORS = tuple(COLORS)  # the six colours pretraining sees
SIZES = ("small", "large")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
    "ring": "rings",
}
TEMPLATE_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "at",
    "photo",
    "picture",
    "image",
    "shape",
    "shapes",
    "object",
    "objects",
    "corner",
    "number",
    "is",
    "showing",
    "there",
    "are",
]


def vocabulary() -> list[str]:
    """Every word a caption or a ``mini`` prompt template may use, in a fixed order."""
    words: list[str] = []
    for group in (
        TEMPLATE_WORDS,
        SIZES,
        list(ALL_COLORS),
        SHAPES,
        list(PLURALS.values()),
        COUNTS,
        " ".join(POSITIONS).split(),
        ["digit", "handwritten", "striped", "plain", "background", "with", "on"],
    ):
        for w in group:
            if w not in words:
                words.append(w)
    return words


@dataclass
class Scenes:
    """Attributes of ``n`` scenes (arrays of length n); -1 where an attribute does not apply."""

    shape: np.ndarray
    color: np.ndarray  # index into ALL_COLORS
    size: np.ndarray  # index into SIZES; -1 for multi-object scenes
    position: np.ndarray  # index into POSITIONS; -1 for multi-object scenes
    count: np.ndarray  # 1..4
    striped: np.ndarray  # bool


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    *,
    colors: tuple[str, ...] = PRETRAIN_COLORS,
    multi_fraction: float = 0.3,
    striped_fraction: float = 0.0,
) -> Scenes:
    names = list(ALL_COLORS)
    color_ids = np.array([names.index(c) for c in colors])
    multi = rng.random(n) < multi_fraction
    count = np.where(multi, rng.integers(2, 5, n), 1)
    return Scenes(
        shape=rng.integers(0, len(SHAPES), n),
        color=color_ids[rng.integers(0, len(color_ids), n)],
        size=np.where(multi, -1, rng.integers(0, 2, n)),
        position=np.where(multi, -1, rng.integers(0, 4, n)),
        count=count,
        striped=rng.random(n) < striped_fraction,
    )


def render_scenes(scenes: Scenes, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, 3, S, S) of the scenes."""
    n = len(scenes.shape)
    canvas = np.broadcast_to(
        _backgrounds(rng.random((n, 4)), "plain")[:, :, None, None], (n, 3, size, size)
    ).astype(np.float32)
    stripes = _stripes(rng, n, size)[:, None]
    canvas = np.where(scenes.striped[:, None, None, None], canvas + 45.0 * stripes, canvas)
    palette = np.asarray(list(ALL_COLORS.values()), dtype=np.float32)
    color = palette[scenes.color] + rng.uniform(-15, 15, (n, 3)).astype(np.float32)
    single = scenes.count == 1
    # single objects: size class and quadrant
    radius = np.where(scenes.size == 1, rng.uniform(0.17, 0.22, n), rng.uniform(0.09, 0.12, n)) * size
    half = size / 2
    qx, qy = scenes.position % 2, scenes.position // 2
    cx = qx * half + rng.uniform(radius + 1, np.maximum(half - radius, radius + 1.01))
    cy = qy * half + rng.uniform(radius + 1, np.maximum(half - radius, radius + 1.01))
    mask = _shape_masks(scenes.shape, cx, cy, radius, size) & single[:, None, None]
    # multi-object scenes: identical objects in distinct cells of a 3x3 grid
    cells = np.argsort(rng.random((n, 9)), axis=1)
    cell = size / 3
    for k in range(4):
        r = rng.uniform(0.09, 0.12, n) * size
        row, col = cells[:, k] // 3, cells[:, k] % 3
        slack = np.maximum(cell / 2 - r - 0.5, 0.0)
        mx = (col + 0.5) * cell + rng.uniform(-1, 1, n) * slack
        my = (row + 0.5) * cell + rng.uniform(-1, 1, n) * slack
        active = ~single & (scenes.count > k)
        mask |= _shape_masks(scenes.shape, mx, my, r, size) & active[:, None, None]
    canvas = np.where(mask[:, None], color[:, :, None, None], canvas)
    canvas = canvas + rng.normal(0.0, 3.0, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def captions(scenes: Scenes, rng: np.random.Generator, keep: float = 0.7) -> list[str]:
    """One caption per scene; each attribute is mentioned with probability ``keep`` (the shape noun
    falls back to "shape"/"object"), so every attribute is learned on its own and in combination."""
    names = list(ALL_COLORS)
    out = []
    draws = rng.random((len(scenes.shape), 5))
    nouns = rng.integers(0, 2, len(scenes.shape))
    for i in range(len(scenes.shape)):
        u = draws[i]
        shape = SHAPES[scenes.shape[i]]
        color = names[scenes.color[i]] if u[0] < keep else None
        if scenes.count[i] > 1:
            noun = PLURALS[shape] if u[1] < keep else ("shapes", "objects")[nouns[i]]
            words = [COUNTS[scenes.count[i] - 1], color, noun]
        else:
            noun = shape if u[1] < keep else ("shape", "object")[nouns[i]]
            size = SIZES[scenes.size[i]] if u[2] < keep else None
            words = ["a", size, color, noun]
            if u[3] < keep:
                words += ["in", "the", POSITIONS[scenes.position[i]]]
        if scenes.striped[i]:
            words += ["on", "a", "striped", "background"]
        out.append(" ".join(w for w in words if w) + ".")
    return out
