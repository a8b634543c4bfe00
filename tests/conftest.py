"""Shared test setup: never touch the network (hub calls otherwise hang before failing)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    two threads on a shared 2-core machine slow the tiny models of the method tests down 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vit_b16():
    from petlbench.backbones import build_backbone

    return build_backbone("vit-b16", pretrained=False)


@pytest.fixture(scope="session")
def clip_b16():
    from petlbench.backbones import build_backbone

    return build_backbone("clip-vit-b16", pretrained=False)


@pytest.fixture(scope="session")
def colors():
    """The smoke suite's ``colors`` task (generated offline): what the method tests train on."""
    from petlbench.benchmarks.datasets import load_task
    from petlbench.benchmarks.suites import load_suite

    return load_task(load_suite("smoke").task("colors"), None)


@pytest.fixture
def cleared():
    """``cleared(backbone)`` empties every slot of ``backbone``: what a test attached to a shared
    session backbone (``vit_b16``) is taken off again, in its ``finally``."""

    def clear(backbone):
        for name in backbone.tower_names:
            backbone.tower(name).clear_slots()

    return clear
