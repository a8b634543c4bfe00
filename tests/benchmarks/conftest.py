"""Helpers for the data-layer tests: a task spec from a loader and args, and the background/foreground
split of a synthetic image (the plain background is the median of the image border)."""

import numpy as np
import pytest

from petlbench.benchmarks.suites import TaskSpec


def spec(loader: str, name: str = "t", **args) -> TaskSpec:
    return TaskSpec(name=name, loader=loader, args=args)


def foreground(images: np.ndarray, threshold: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) object masks and (N, 3) background colours of uint8 (N, 3, S, S) synthetic images."""
    border = np.concatenate([images[:, :, 0, :], images[:, :, -1, :]], axis=2)
    bg = np.median(border, axis=2)
    mask = np.abs(images.astype(np.int32) - bg[:, :, None, None]).max(axis=1) > threshold
    return mask, bg


@pytest.fixture
def make_spec():
    return spec


@pytest.fixture
def split_foreground():
    return foreground
