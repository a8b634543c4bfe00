"""Bottleneck adapters: exact counts on the real architectures, zero start, placement, what trains,
training on the smoke suite, option errors."""

import pytest
import torch
from smoke_training import backbone_unchanged, train_on, trains_all_it_owns

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.adapter import Adapter, AdapterConfig, BottleneckAdapter
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _attach(backbone, **cfg):
    method = Adapter(AdapterConfig(**cfg))
    method.attach(backbone)
    return method


def test_registered_under_its_name():
    assert get_method("adapter") is Adapter


def test_pfeiffer_dim8_on_vit_b16_is_156768(vit_b16, cleared):
    m = _attach(vit_b16, style="pfeiffer", dim=8)
    try:
        assert m.num_trainable_parameters() == 156_768 == 12 * (2 * 768 * 8 + 8 + 768)
        assert all(s.after_attn is None and s.after_mlp is not None for s in vit_b16.tower("image").slots)
    finally:
        cleared(vit_b16)


def test_houlsby_doubles_and_vpt_reduction_8_gives_dim_96(vit_b16, cleared):
    try:
        assert _attach(vit_b16, style="houlsby", dim=8).num_trainable_parameters() == 313_536
        assert all(s.after_attn is not None for s in vit_b16.tower("image").slots)
        cleared(vit_b16)
        m = _attach(vit_b16, reduction=8)  # KMnP/vpt's Pfeiffer default: 768 / 8 = 96
        assert m.num_trainable_parameters() == 1_779_840
        assert m.describe()["bottleneck"] == {"image": 96}
    finally:
        cleared(vit_b16)


def test_both_clip_towers_on_clip_b16(clip_b16, cleared):
    try:
        m = _attach(clip_b16, dim=8, tower="both")
        # image 12 * (2*768*8 + 8 + 768) + text 12 * (2*512*8 + 8 + 512)
        assert m.num_trainable_parameters() == 156_768 + 104_544
    finally:
        cleared(clip_b16)


@pytest.mark.parametrize("style", ["pfeiffer", "houlsby"])
@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-clip"])
def test_zero_initialised_adapters_equal_the_backbone(style, backbone_name):
    b = build_backbone(backbone_name)
    pixels = torch.rand(3, 3, 32, 32)
    base = b.encode_image(pixels)
    text_base = b.encode_text(b.tokenize(["a red circle", "a cat"])) if b.kind == "clip" else None
    m = _attach(b, style=style, dim=4, tower="both")
    torch.testing.assert_close(b.encode_image(pixels), base, atol=1e-5, rtol=0)
    if text_base is not None:
        torch.testing.assert_close(
            b.encode_text(b.tokenize(["a red circle", "a cat"])), text_base, atol=1e-5, rtol=0
        )
    # not a no-op: a non-zero up projection changes the features
    with torch.no_grad():
        for places in m.adapters.values():
            for adapter in places["mlp"]:
                adapter.up.weight.normal_(0, 0.5)
    assert not torch.allclose(b.encode_image(pixels), base, atol=1e-3)


def test_adapter_is_a_residual_bottleneck():
    a = BottleneckAdapter(16, 4, "relu", 0.5, "xavier")
    with torch.no_grad():
        a.up.weight.normal_()
    h = torch.randn(2, 5, 16)
    expected = h + 0.5 * (torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(a(h), expected)
    assert torch.count_nonzero(a.down.weight) > 0  # only the up projection starts at zero


def test_only_adapter_parameters_require_grad():
    b = build_backbone("tiny-clip")
    m = _attach(b, style="houlsby", tower="image")
    assert not any(p.requires_grad for p in b.parameters())
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.parameters()}
    assert m.num_trainable_parameters() == 2 * 2 * (2 * 64 * 8 + 8 + 64)
    assert b.tower("image").has_trainable_parameters()
    assert not b.tower("text").has_trainable_parameters()  # text features stay cacheable


@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-clip"])
def test_trains_on_the_smoke_suite_and_beats_its_untrained_state(colors, backbone_name):
    trained = train_on(colors, "adapter", backbone_name, {"style": "houlsby", "dim": 16}, epochs=4)
    assert trained.learned(10), (trained.before_acc, trained.after_acc)
    assert backbone_unchanged(trained)
    assert trains_all_it_owns(trained.method)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="style must be one of pfeiffer, houlsby"):
        Adapter({"style": "parallel"})
    with pytest.raises(UserError, match="activation"):
        Adapter({"activation": "swish2"})
    with pytest.raises(UserError, match="dim"):
        Adapter({"dim": 0})
    with pytest.raises(UserError, match="reduction"):
        Adapter({"reduction": 0})
    with pytest.raises(UserError, match="init"):
        Adapter({"init": "ones"})
    with pytest.raises(UserError, match="tower"):
        Adapter({"tower": "audio"})
    with pytest.raises(UserError, match="no option"):
        Adapter({"bottleneck": 8})
    with pytest.raises(UserError, match="has no text tower"):
        Adapter({"tower": "text"}).attach(build_backbone("tiny-vit"))
    assert Adapter({"dim": "16", "style": "houlsby"}).config == AdapterConfig(dim=16, style="houlsby")
