"""Seeded construction (backbones/seeding.py): a seeded backbone's weights are what the seed alone
gives, the same on every build, and building one leaves the caller's random stream where it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from petlbench.backbones.clip import build_tiny_clip
from petlbench.backbones.micro import micro_clip_model, micro_vit_model
from petlbench.backbones.ofa.backbone import OFABackbone, build_ofa_backbone
from petlbench.backbones.ofa.config import size_config
from petlbench.backbones.seeding import seeded
from petlbench.backbones.swin import build_tiny_swin, tiny_swin_model
from petlbench.backbones.vit import build_tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> build(seed): the micro architectures (raw models) and the tiny random-feature backbones
BUILDS: dict[str, Callable[[int], nn.Module]] = {
    "micro-vit": lambda seed: micro_vit_model(seed=seed),
    "micro-clip": lambda seed: micro_clip_model(seed=seed),
    "tiny-vit": lambda seed: build_tiny_vit("tiny-vit", seed),
    "tiny-clip": lambda seed: build_tiny_clip("tiny-clip", seed),
    "tiny-swin": lambda seed: build_tiny_swin("tiny-swin", seed),
}


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_draws_from_the_seed_and_restores_the_cpu_generator():
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    with seeded(3):
        inside = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(3)
    assert torch.equal(inside, torch.rand(4))


def test_seeded_restores_the_generator_when_the_block_raises():
    torch.manual_seed(12)
    before = torch.random.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"), seeded(0):
        torch.rand(3)
        raise RuntimeError("boom")
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_a_seeded_build_is_reproducible_and_leaves_the_global_stream_alone(name):
    build = BUILDS[name]
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    first = build(1)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(99)  # another global state: the weights do not depend on it
    assert _same(first, build(1))
    assert not _same(first, build(2))


def test_the_weights_are_what_seeding_the_global_generator_gives():
    """The seed is applied as before the context manager (``torch.manual_seed`` then construction):
    the same weights as building under a plain ``torch.manual_seed``."""
    from open_clip.model import CLIP
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    from petlbench.backbones.micro import MICRO_CLIP, MICRO_VIT, micro_tokenizer
    from petlbench.backbones.random_features import random_feature_init
    from petlbench.backbones.swin import TINY_SWIN

    torch.manual_seed(4)
    assert _same(micro_vit_model(num_classes=3, seed=4), VisionTransformer(**MICRO_VIT, num_classes=3))
    torch.manual_seed(4)
    vocab = micro_tokenizer().vocab_size
    reference = CLIP(
        embed_dim=MICRO_CLIP["embed_dim"],
        vision_cfg=dict(MICRO_CLIP["vision"]),
        text_cfg={**MICRO_CLIP["text"], "vocab_size": vocab},
    )
    assert _same(micro_clip_model(seed=4), reference)
    torch.manual_seed(4)
    swin = SwinTransformer(**TINY_SWIN, num_classes=0, drop_path_rate=0.0)
    random_feature_init(swin, 4)
    assert _same(tiny_swin_model(4), swin)


def test_ofa_random_init_is_seeded_and_leaves_the_stream_as_building_the_modules_does():
    """OFA builds its module tree on the caller's stream (as before) and only the init is seeded:
    after the build the global state is what constructing the modules alone leaves."""
    torch.manual_seed(6)
    first = build_ofa_backbone("ofa-test", pretrained=False, vocab_size=300, seed=1)
    after_build = torch.random.get_rng_state()
    torch.manual_seed(6)
    OFABackbone("ofa-test", size_config("test", vocab_size=300))
    assert torch.equal(after_build, torch.random.get_rng_state())
    torch.manual_seed(0)
    assert _same(first, build_ofa_backbone("ofa-test", pretrained=False, vocab_size=300, seed=1))
    assert not _same(first, build_ofa_backbone("ofa-test", pretrained=False, vocab_size=300, seed=2))
