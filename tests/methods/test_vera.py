"""VeRA: exact counts on ViT-B/16, the shared random matrices equal peft's for the same key, the
forward equals peft's VeRA on the same timm ViT with the same weights, zero start."""

import copy

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.methods.vera import VeRA

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("targets", "count"), [("q,v", 12 * 2 * (256 + 768)), ("qkv", 12 * (256 + 2304))])
def test_counts_on_vit_b16(vit_b16, targets, count):
    try:
        m = VeRA({"targets": targets})
        m.attach(vit_b16)
        assert m.num_trainable_parameters() == count  # 24,576 / 30,720
        assert m.vera_A.shape == (256, 768) and not m.vera_A.requires_grad
    finally:
        vit_b16.tower("image").clear_slots()


def test_equals_peft_vera_on_the_same_timm_vit():
    peft = pytest.importorskip("peft", reason="peft is a test dependency (the dev extra)")
    b = build_backbone("tiny-vit")
    vit = b.tower("image").vit
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = vit(pixels)
    config = peft.VeraConfig(r=16, target_modules=["qkv"], projection_prng_key=7, d_initial=0.1)
    reference = peft.get_peft_model(copy.deepcopy(vit), config)
    m = VeRA({"rank": 16, "targets": "qkv", "projection_prng_key": 7})
    m.attach(b)
    torch.testing.assert_close(m.vera_A, reference.base_model.vera_A["default"], atol=0, rtol=0)
    torch.testing.assert_close(m.vera_B, reference.base_model.vera_B["default"], atol=0, rtol=0)
    torch.testing.assert_close(b.encode_image(pixels), plain, atol=0, rtol=0)  # lambda_b = 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, blk in enumerate(reference.base_model.model.blocks):
            qkv, ours = blk.attn.qkv, m.vera["image"][layer]
            torch.testing.assert_close(ours.lambda_d["qkv"], qkv.vera_lambda_d["default"])
            qkv.vera_lambda_b["default"].copy_(torch.randn(192, generator=g))
            qkv.vera_lambda_d["default"].add_(torch.randn(16, generator=g))
            ours.lambda_b["qkv"].copy_(qkv.vera_lambda_b["default"])
            ours.lambda_d["qkv"].copy_(qkv.vera_lambda_d["default"])
        expected = reference(pixels)
        got = b.encode_image(pixels)
    assert not torch.allclose(got, plain, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_q_v_targets_share_one_pair_across_towers_of_different_widths():
    b = build_backbone("tiny-swin")  # widths 32 and 64: A and B sized for 64 and sliced
    m = VeRA({"rank": 8})
    m.attach(b)
    assert m.vera_A.shape == (8, 64) and m.vera_B.shape == (64, 8)
    assert m.num_trainable_parameters() == 4 * 2 * 8 + 2 * 2 * (32 + 64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5)
        pixels = torch.rand(3, 3, 32, 32)
        batch = b.encode_image(pixels)
        alone = torch.cat([b.encode_image(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
