"""CLIP-LoRA: the reference's count on CLIP ViT-B/16 and both towers' outputs against open_clip's
own forward with the reference's update ``W + alpha / sqrt(r) * B A`` written into q, k, v."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods import get_method
from petlbench.methods.clip_lora import CLIPLoRA, CLIPLoRAConfig


def test_registered_with_reference_defaults():
    assert get_method("clip-lora") is CLIPLoRA
    c = CLIPLoRAConfig()
    # MaxZanella/CLIP-LoRA run_utils.py L33-37
    assert (c.rank, c.alpha, c.dropout, c.targets, c.tower) == (2, 1.0, 0.25, "q,k,v", "both")
    assert CLIPLoRA().scaling == pytest.approx(1 / math.sqrt(2))  # loralib/layers.py L42
    assert CLIPLoRA.suggested_protocol["lr"] == 2e-4
    with pytest.raises(UserError, match="clip"):
        CLIPLoRA.check_compatible("tiny-vit", "vit", ("image",))


def test_parameter_count_on_clip_b16(clip_b16):
    """12 layers x (q, k, v) x (A + B) x r 2 x width: 110,592 (768) + 73,728 (512) = 184,320."""
    method = CLIPLoRA()
    method.attach(clip_b16)
    try:
        assert method.num_trainable_parameters() == 184_320
    finally:
        for t in clip_b16.towers.values():
            t.clear_slots()


def test_forward_matches_open_clip_with_the_merged_update():
    backbone = build_backbone("tiny-clip")
    reference_visual = copy.deepcopy(backbone.tower("image").visual)
    text = backbone.tower("text")
    reference_text = copy.deepcopy(text.transformer)
    torch.manual_seed(0)
    method = CLIPLoRA()
    method.attach(backbone)
    method.eval()
    s = 1 / math.sqrt(2)
    with torch.no_grad():
        for layers in method.lora.values():
            for m in layers:
                for b in m.lora_B.values():
                    b.normal_(0, 0.5)
        towers = (("image", reference_visual.transformer.resblocks), ("text", reference_text.resblocks))
        for tower, blocks in towers:
            for blk, m in zip(blocks, method.lora[tower], strict=True):
                delta = torch.cat([m.lora_B[t] @ m.lora_A[t] for t in ("q", "k", "v")]) * s
                blk.attn.in_proj_weight += delta
        pixels = torch.rand(3, 3, 32, 32)
        mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
        normed = (pixels - mean) / std
        got = backbone.encode_image(normed)
        torch.testing.assert_close(got, reference_visual(normed), atol=1e-5, rtol=1e-5)
        ids = backbone.tokenize(["a photo of a red.", "a green square"])
        got_text = backbone.encode_text(ids)
        x = text.token_embedding(ids) + text.positional_embedding
        mask = torch.full((77, 77), float("-inf")).triu(1)
        x = reference_text(x, attn_mask=mask)
        x = text.ln_final(x)[torch.arange(2), ids.argmax(-1)] @ text.text_projection
        torch.testing.assert_close(got_text, x, atol=1e-5, rtol=1e-5)
        method.lora["image"][0].lora_B["q"].zero_()
        assert not torch.allclose(F.normalize(backbone.encode_image(normed)), F.normalize(got), atol=1e-5)
