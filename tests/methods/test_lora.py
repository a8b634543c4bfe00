"""LoRA: exact counts on the real architectures, B = 0 start, the update it adds, merging,
what trains, training on the smoke suite, option errors."""

import pytest
import torch
from smoke_training import backbone_unchanged, train_on, trains_all_it_owns

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.lora import LoRA, LoRAConfig
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _attach(backbone, **cfg):
    method = LoRA(LoRAConfig(**cfg))
    method.attach(backbone)
    return method


def _randomise_b(method, std=0.05):
    with torch.no_grad():
        for layers in method.lora.values():
            for module in layers:
                for b in module.lora_B.values():
                    b.normal_(0, std)


def test_registered_under_its_name():
    assert get_method("lora") is LoRA


@pytest.mark.parametrize("targets", ["q,v", "qkv"])
def test_rank8_on_vit_b16_is_294912(vit_b16, targets, cleared):
    try:
        m = _attach(vit_b16, rank=8, targets=targets)
        assert m.num_trainable_parameters() == 294_912 == 12 * 8 * (768 + 2304)
        assert all(s.qkv_delta is not None for s in vit_b16.tower("image").slots)
    finally:
        cleared(vit_b16)


def test_counts_on_clip_b16_both_towers_and_qkv_targets(clip_b16, cleared):
    try:
        m = _attach(clip_b16, rank=8, tower="both")
        assert m.num_trainable_parameters() == 294_912 + 12 * 2 * 2 * 8 * 512  # = 491,520
        cleared(clip_b16)
        m = _attach(clip_b16, rank=4, targets="q,k,v")
        assert m.num_trainable_parameters() == 12 * 3 * 2 * 4 * 768  # 221,184
    finally:
        cleared(clip_b16)


@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-clip"])
@pytest.mark.parametrize("targets", ["q,v", "qkv"])
def test_b_zero_equals_the_backbone_and_merge_keeps_outputs(backbone_name, targets):
    b = build_backbone(backbone_name)
    pixels = torch.rand(3, 3, 32, 32)
    ids = b.tokenize(["a red circle", "two blue squares"]) if b.kind == "clip" else None
    base = b.encode_image(pixels)
    text_base = b.encode_text(ids) if ids is not None else None
    weights = {k: v.clone() for k, v in b.state_dict().items()}
    m = _attach(b, targets=targets, tower="both", alpha=16.0)
    torch.testing.assert_close(b.encode_image(pixels), base, atol=1e-5, rtol=0)
    if ids is not None:
        torch.testing.assert_close(b.encode_text(ids), text_base, atol=1e-5, rtol=0)

    _randomise_b(m)
    adapted = b.encode_image(pixels)
    text_adapted = b.encode_text(ids) if ids is not None else None
    assert not torch.allclose(adapted, base, atol=1e-3)
    m.merge()
    assert m.merged and all(s.qkv_delta is None for t in b.tower_names for s in b.tower(t).slots)
    torch.testing.assert_close(b.encode_image(pixels), adapted, atol=1e-5, rtol=1e-5)
    if ids is not None:
        torch.testing.assert_close(b.encode_text(ids), text_adapted, atol=1e-5, rtol=1e-5)
    assert not b.tower("image").has_trainable_parameters()  # merged: the backbone runs alone
    m.merge()  # idempotent
    m.unmerge()
    assert all(s.qkv_delta is not None for s in b.tower("image").slots)
    torch.testing.assert_close(b.encode_image(pixels), adapted, atol=1e-5, rtol=1e-5)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, weights[k], atol=1e-6, rtol=0)


def test_update_is_scaling_b_a_on_the_chosen_projections_only():
    b = build_backbone("tiny-vit")
    m = _attach(b, rank=2, alpha=6.0, targets="q,v")
    _randomise_b(m, 1.0)
    module = m.lora["image"][0]
    x = torch.randn(2, 5, 64)
    delta = module(x)
    q, k, v = delta.split(64, dim=-1)
    A, B = module.lora_A["q"], module.lora_B["q"]
    torch.testing.assert_close(q, 3.0 * (x @ A.T @ B.T))
    assert torch.count_nonzero(k) == 0 and torch.count_nonzero(v) > 0
    torch.testing.assert_close(delta, x @ module.delta_weight().T)
    assert module.lora_A["q"].shape == (2, 64) and module.lora_B["q"].shape == (64, 2)


def test_merged_flag_travels_with_the_state_and_merge_stage():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    m = _attach(b, merge=True)
    assert [s.name for s in m.stages()] == ["train", "merge"]
    assert not m.stages()[1].train
    _randomise_b(m)
    expected = b.encode_image(pixels)
    m.stages()[1].prepare(None)
    state = m.method_state()
    assert bool(state["merged"])

    fresh = build_backbone("tiny-vit")
    m2 = _attach(fresh, merge=True)
    m2.load_method_state(state)  # e.g. a resumed run whose merge stage had finished
    assert m2.merged
    torch.testing.assert_close(fresh.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)
    assert [s.name for s in LoRA().stages()] == ["train"]


def test_only_lora_parameters_require_grad():
    b = build_backbone("tiny-clip")
    m = _attach(b, tower="text")
    assert not any(p.requires_grad for p in b.parameters())
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.parameters()}
    assert m.num_trainable_parameters() == 2 * 2 * 2 * 8 * 64
    assert b.tower("text").has_trainable_parameters() and not b.tower("image").has_trainable_parameters()


@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-clip"])
def test_trains_on_the_smoke_suite_and_beats_its_untrained_state(colors, backbone_name):
    trained = train_on(colors, "lora", backbone_name, {"targets": "q,k,v", "rank": 8}, epochs=4)
    assert trained.learned(10), (trained.before_acc, trained.after_acc)
    assert backbone_unchanged(trained)
    assert trains_all_it_owns(trained.method)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match=r"rank must be in \[1, "):
        LoRA({"rank": 0})
    with pytest.raises(UserError, match="alpha"):
        LoRA({"alpha": -1})
    with pytest.raises(UserError, match="targets must be a comma-separated subset of q, k, v"):
        LoRA({"targets": "q,o"})
    with pytest.raises(UserError, match="targets"):
        LoRA({"targets": "qkv,q"})
    with pytest.raises(UserError, match="dropout"):
        LoRA({"dropout": 1.5})
    with pytest.raises(UserError, match="tower"):
        LoRA({"tower": "audio"})
    with pytest.raises(UserError, match="has no text tower"):
        LoRA({"tower": "image,text"}).attach(build_backbone("tiny-vit"))
    assert LoRA({"rank": "4", "merge": "yes"}).config == LoRAConfig(rank=4, merge=True)
