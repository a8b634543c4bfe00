"""CLIP-Adapter: the reference's count on CLIP ViT-B/16 and its forward against a transcription of
gaopengcuhk/CLIP-Adapter clip_adapter.py."""

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods import get_method
from petlbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterConfig

NAMES = ["red", "green", "light_blue"]
TEMPLATE = "a photo of a {}."


def _attach(backbone, **cfg):
    torch.manual_seed(0)
    method = CLIPAdapter(cfg)
    method.attach(backbone)
    return method, method.make_head(backbone, NAMES, [TEMPLATE])


def test_registered_with_reference_defaults():
    assert get_method("clip-adapter") is CLIPAdapter
    c = CLIPAdapterConfig()
    assert (c.reduction, c.ratio, c.tower) == (4, 0.2, "image")  # clip_adapter.py L97, L104
    with pytest.raises(UserError, match="clip"):
        CLIPAdapter.check_compatible("tiny-vit", "vit", ("image",))
    with pytest.raises(UserError, match="tower"):
        CLIPAdapter({"tower": "vision"})


def test_parameter_counts_on_clip_b16(clip_b16):
    """Adapter(512, 4) without biases (clip_adapter.py L55-63): 512 x 128 + 128 x 512 = 131,072."""
    method, _ = _attach(clip_b16)
    assert method.num_trainable_parameters() == 131_072
    both, _ = _attach(clip_b16, tower="both")
    assert both.num_trainable_parameters() == 262_144
    assert not any(p.requires_grad for p in clip_b16.parameters())


def test_forward_matches_the_reference():
    backbone = build_backbone("tiny-clip")
    method, head = _attach(backbone)
    pixels = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for p in method.parameters():  # a non-trivial adapter
            p.normal_(0, 0.2)
        features = backbone.encode_image(pixels)
        got = head(features)
        # clip_adapter.py L100-113: x = adapter(f); f = 0.2 x + 0.8 f; normalise both; scale * cos
        x = F.relu(F.relu(features @ method.image_adapter[0].weight.t()) @ method.image_adapter[2].weight.t())
        f = 0.2 * x + 0.8 * features
        ids = backbone.tokenize([TEMPLATE.format(n.replace("_", " ")) for n in NAMES])
        t = F.normalize(backbone.encode_text(ids), dim=-1)
        want = backbone.logit_scale.exp() * F.normalize(f, dim=-1) @ t.t()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    zero = backbone.logit_scale.exp() * F.normalize(features, dim=-1) @ t.t()
    assert not torch.allclose(got, zero, atol=1e-3)  # the adapter changes the logits
