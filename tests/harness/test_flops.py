"""GFLOPs (GMACs, fvcore convention) pinned on the real ViT-B/16 architectures."""

import torch

from petlbench.harness.flops import count_macs, image_gmacs, text_gmacs_per_prompt
from petlbench.methods.vpt import VPT


def test_pinned_image_tower_gmacs(vit_b16, clip_b16):
    assert round(image_gmacs(vit_b16), 2) == 17.58
    assert round(image_gmacs(clip_b16), 2) == 17.58


def test_pinned_text_prompt_gmacs(clip_b16):
    assert round(text_gmacs_per_prompt(clip_b16), 2) == 2.98


def test_prompts_add_flops(clip_b16):
    base = image_gmacs(clip_b16)
    try:
        shallow_vpt = VPT({"num_tokens": 8, "deep": False})
        shallow_vpt.attach(clip_b16)
        shallow = image_gmacs(clip_b16, shallow_vpt)
        clip_b16.tower("image").clear_slots()
        deep_vpt = VPT({"num_tokens": 8, "deep": True})
        deep_vpt.attach(clip_b16)
        deep = image_gmacs(clip_b16, deep_vpt)
        assert all(p.requires_grad for p in deep_vpt.parameters())  # counting leaves training state alone
    finally:
        clip_b16.tower("image").clear_slots()
    assert shallow > base
    # 8 prompts in every layer: N = 205 tokens instead of 197 (reference table: 18.32 GMACs)
    assert round(deep, 2) == 18.32 and deep == shallow  # deep replaces, so the length is the same


def test_sdpa_is_counted_as_two_matmuls():
    class Attn(torch.nn.Module):
        def forward(self, q):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    total, by_op = count_macs(Attn(), (torch.zeros(2, 3, 5, 4),))
    assert total == 2 * 3 * 5 * 5 * (4 + 4)
    assert by_op == {"scaled_dot_product_attention": total}


def test_adapt_pruned_to_a_lower_target_counts_less(clip_b16):
    from petlbench.methods.adapt import Adapt

    base = image_gmacs(clip_b16)
    try:
        adapt = Adapt({})
        adapt.attach(clip_b16)
        full = image_gmacs(clip_b16, adapt)
        with torch.no_grad():
            adapt.mask_image[:, 4:] = False  # 4 of 16 tokens left per image layer
        pruned = image_gmacs(clip_b16, adapt)
        with torch.no_grad():
            adapt.mask_image[:] = False
        none_left = image_gmacs(clip_b16, adapt)
        clip_b16.tower("image").clear_slots()
        clip_b16.tower("text").clear_slots()
        built_short = Adapt({"image_tokens": 4})  # a model built with the pruned lengths from the start
        built_short.attach(clip_b16)
        short = image_gmacs(clip_b16, built_short)
    finally:
        clip_b16.tower("image").clear_slots()
        clip_b16.tower("text").clear_slots()
    assert full > pruned > base
    assert pruned == short  # a pruned token really leaves the computation
    # key/value prompts cost only their K/V projections and attention columns, never MLP or queries
    assert full - base < 0.05 * base
    assert none_left == base
