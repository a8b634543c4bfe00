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
