"""DoRA: exact counts on ViT-B/16, equal to peft's DoRA on the same timm ViT with the same weights,
merged equals unmerged, the merged state reloads, only its parameters train."""

import copy

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.methods.dora import DoRA
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("targets", "count"), [("q,v", 294_912 + 12 * 2 * 768), ("qkv", 294_912 + 12 * 2304)]
)
def test_counts_on_vit_b16(vit_b16, targets, count):
    try:
        m = DoRA({"targets": targets})
        m.attach(vit_b16)
        assert m.num_trainable_parameters() == count  # 313,344 / 322,560: LoRA + one magnitude per row
    finally:
        vit_b16.tower("image").clear_slots()


def test_equals_peft_dora_on_the_same_timm_vit():
    peft = pytest.importorskip("peft", reason="peft is a test dependency (the dev extra)")
    b = build_backbone("tiny-vit")
    vit = b.tower("image").vit
    reference = peft.get_peft_model(
        copy.deepcopy(vit),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], use_dora=True, lora_dropout=0.0),
    )
    g = torch.Generator().manual_seed(0)
    m = DoRA({"rank": 4, "alpha": 8.0, "targets": "qkv"})
    m.attach(b)
    with torch.no_grad():
        for layer, blk in enumerate(reference.base_model.model.blocks):
            ours = m.lora["image"][layer]
            # peft's magnitude at init is the row norm of W, as ours
            magnitude = blk.attn.qkv.lora_magnitude_vector["default"].weight
            torch.testing.assert_close(magnitude, ours.magnitude["qkv"])
            ours.lora_A["qkv"].copy_(blk.attn.qkv.lora_A["default"].weight)
            blk.attn.qkv.lora_B["default"].weight.copy_(torch.randn(192, 4, generator=g) * 0.3)
            blk.attn.qkv.lora_magnitude_vector["default"].weight.mul_(1 + 0.2 * torch.randn(192, generator=g))
            ours.lora_B["qkv"].copy_(blk.attn.qkv.lora_B["default"].weight)
            ours.magnitude["qkv"].copy_(blk.attn.qkv.lora_magnitude_vector["default"].weight)
        pixels = torch.rand(3, 3, 32, 32)
        expected = reference(pixels)
        got = b.encode_image(pixels)
    assert not torch.allclose(got, vit(pixels), atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-swin", "tiny-clip"])
def test_merged_equals_unmerged_and_unmerge_restores_the_weights(backbone_name):
    b = build_backbone(backbone_name)
    weights = {k: v.clone() for k, v in b.state_dict().items()}
    m = get_method("dora")({"targets": "q,v", "rank": 4})
    m.attach(b)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        pixels = torch.rand(2, 3, 32, 32)
        unmerged = b.encode_image(pixels)
        m.merge()
        assert all(s.qkv_delta is None for s in b.tower("image").slots)
        torch.testing.assert_close(b.encode_image(pixels), unmerged, atol=1e-5, rtol=1e-5)
        m.unmerge()
        torch.testing.assert_close(b.encode_image(pixels), unmerged, atol=1e-5, rtol=1e-5)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, weights[k], atol=1e-5, rtol=1e-5)


def test_merged_state_reloads_merged():
    b = build_backbone("tiny-vit")
    m = DoRA({"merge": True})
    m.attach(b)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05)
        pixels = torch.rand(2, 3, 32, 32)
        expected = b.encode_image(pixels)
        m.stages()[1].prepare(None)
        fresh = build_backbone("tiny-vit")
        m2 = DoRA({"merge": True})
        m2.attach(fresh)
        m2.load_method_state(m.method_state())
        assert m2.merged
        torch.testing.assert_close(fresh.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)


def test_on_ofa_both_towers_merged_equals_unmerged():
    from ofa_models import ofa_batch, ofa_model

    model, m = ofa_model("dora", method_seed=0)
    assert m.config.tower == "both" and set(m.lora) == {"encoder", "decoder"}
    src, pixels, prev = ofa_batch()
    with torch.no_grad():
        plain = model(src, pixels, prev)
        for p in m.parameters():
            p.add_(0.05)
        unmerged = model(src, pixels, prev)
        m.merge()
        merged = model(src, pixels, prev)
    assert not torch.allclose(unmerged, plain, atol=1e-4)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
