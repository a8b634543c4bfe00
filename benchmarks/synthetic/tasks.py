"""Downstream tasks drawn from the synthetic world (loader ``world``, suite ``mini``).

Each task asks about one attribute; everything else in the scene is random. Some tasks sit inside
what pretraining saw, others mirror the paper suites' shifts: ``world-new-colors`` adds colours no
caption ever named (new classes, like base-to-new), ``world-shapes-striped`` draws on striped
backgrounds pretraining never showed (an input-level shift), counting and position are the
structured tasks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from petlbench.benchmarks.datasets.synthetic import COUNTS, POSITIONS, SHAPES

from . import world

SPLITS = ("train", "val", "test", "eval")


@dataclass(frozen=True)
class WorldTask:
    name: str
    attribute: str  # shape | color | count | position | size
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    colors: tuple[str, ...] = world.PRETRAIN_COLORS
    striped: bool = False
    description: str = ""


def _task(*args: object, **kwargs: object) -> tuple[str, WorldTask]:
    task = WorldTask(*args, **kwargs)  # type: ignore[arg-type]
    return task.name, task


TASKS: dict[str, WorldTask] = dict(
    [
        _task(
            "world-colors",
            "color",
            world.PRETRAIN_COLORS,
            ("a {} object.", "a photo of a {} shape."),
            description="colour of one object (in distribution)",
        ),
        _task(
            "world-shapes",
            "shape",
            SHAPES,
            ("a {}.", "a photo of a {}."),
            description="shape of one object (in distribution)",
        ),
        _task(
            "world-size",
            "size",
            world.SIZES,
            ("a {} shape.", "a photo of a {} object."),
            description="small or large (in distribution)",
        ),
        _task(
            "world-count",
            "count",
            COUNTS,
            ("{} objects.", "a picture of {} shapes."),
            description="how many objects, 1-4 (structured)",
        ),
        _task(
            "world-position",
            "position",
            POSITIONS,
            ("a shape in the {}.", "an object in the {} corner."),
            description="which quadrant (structured)",
        ),
        _task(
            "world-new-colors",
            "color",
            tuple(world.ALL_COLORS),
            ("a {} object.", "a photo of a {} shape."),
            colors=tuple(world.ALL_COLORS),
            description="colour with two colours pretraining never named (new classes)",
        ),
        _task(
            "world-shapes-striped",
            "shape",
            SHAPES,
            ("a {}.", "a photo of a {}."),
            striped=True,
            description="shape on striped backgrounds pretraining never showed (input shift)",
        ),
    ]
)


def make_task_split(name: str, n: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, N x 3 x 32 x 32) and balanced labels of one split of a world task."""
    task = TASKS[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % len(task.class_names)).astype(np.int64)
    scenes = world.sample_scenes(rng, n, colors=task.colors, multi_fraction=0.0)
    names = list(world.ALL_COLORS)
    if task.attribute == "color":
        scenes.color = np.array([names.index(task.class_names[i]) for i in labels])
    elif task.attribute == "count":
        scenes.count = labels + 1
        scenes.size = np.where(scenes.count > 1, -1, scenes.size)
        scenes.position = np.where(scenes.count > 1, -1, scenes.position)
    else:
        setattr(scenes, task.attribute, labels.copy())
    scenes.striped = np.full(n, task.striped)
    return world.render_scenes(scenes, 32, rng), labels
