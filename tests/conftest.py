"""Shared test setup: never touch the network (hub calls otherwise hang before failing)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def vit_b16():
    from petlbench.backbones import build_backbone

    return build_backbone("vit-b16", pretrained=False)


@pytest.fixture(scope="session")
def clip_b16():
    from petlbench.backbones import build_backbone

    return build_backbone("clip-vit-b16", pretrained=False)
