"""VPT: exact parameter counts on the real architectures, placement, and what trains."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.vpt import VPT, VPTConfig


def _attach(backbone, **cfg):
    method = VPT(VPTConfig(**cfg))
    method.attach(backbone)
    return method


def test_vpt_deep_10_tokens_on_vit_b16(vit_b16):
    m = _attach(vit_b16, num_tokens=10, deep=True)
    assert m.num_trainable_parameters() == 92_160
    vit_b16.tower("image").clear_slots()


def test_vpt_8_tokens_12_layers_on_clip_b16_image_tower(clip_b16):
    m = _attach(clip_b16, num_tokens=8, deep=True)
    assert m.num_trainable_parameters() == 73_728
    clip_b16.tower("image").clear_slots()


def test_vpt_shallow_50_tokens(vit_b16):
    m = _attach(vit_b16, num_tokens=50, deep=False)
    assert m.num_trainable_parameters() == 38_400
    vit_b16.tower("image").clear_slots()


def test_init_bound_follows_the_reference():
    b = build_backbone("tiny-vit")
    m = _attach(b, num_tokens=200, deep=True)
    bound = (6.0 / (3 * 16 * 16 + 64)) ** 0.5
    values = torch.cat([p.detach().flatten() for p in m.prompts["image"]])
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.95 * bound  # uniform over the whole interval, not a narrower init


def test_text_tower_prompts_go_after_sos_and_change_text_features():
    b = build_backbone("tiny-clip")
    ids = b.tokenize(["a red circle"])
    before = b.encode_text(ids)
    m = _attach(b, num_tokens=4, deep=True, tower="text")
    assert m.num_trainable_parameters() == 4 * 64 * 2  # 2 text layers, width 64
    after = b.encode_text(ids)
    assert not torch.allclose(before, after)
    tower = b.tower("text")
    x = tower.embed(ids[:, : int(ids.argmax()) + 1])
    out, inserted = tower.run_blocks(x)
    assert inserted.after_first == 4 and out.shape[1] == x.shape[1] + 4


def test_vpt_on_shallow_mode_equals_backbone_when_prompts_removed():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    base = b.encode_image(pixels)
    _attach(b, num_tokens=3)
    assert not torch.allclose(base, b.encode_image(pixels))
    b.tower("image").clear_slots()
    torch.testing.assert_close(base, b.encode_image(pixels))


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="tower"):
        VPT({"tower": "audio"})
    with pytest.raises(UserError, match="no option"):
        VPT({"tokens": 3})
    with pytest.raises(UserError, match="num_tokens"):
        VPT({"num_tokens": "many"})
    assert VPT({"num_tokens": "7", "deep": "true"}).config == VPTConfig(num_tokens=7, deep=True)
