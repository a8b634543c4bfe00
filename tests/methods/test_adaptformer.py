"""AdaptFormer: the exact count on ViT-B/16, zero start, equal to a transcription of
ShoufaChen/AdaptFormer's parallel block, on Swin and the CLIP image tower, option errors."""

import pytest
import torch
from torch.nn import functional as F
from vit_reference import forward, randomize

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.adaptformer import AdaptFormer
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_on_vit_b16_is_1189632(vit_b16):
    try:
        m = AdaptFormer()
        m.attach(vit_b16)
        assert m.num_trainable_parameters() == 12 * (2 * 768 * 64 + 64 + 768) == 1_189_632
    finally:
        vit_b16.tower("image").clear_slots()


class _Parallel:
    """models/custom_modules.py:L76-93 (ffn_option parallel): the adapter reads x, not norm2(x);
    models/adapter.py:L50-70: up(dropout(relu(down(x)))) * 0.1, no layer norm."""

    def __init__(self, layers):
        self.layers = layers

    def mlp_extra(self, layer, x, h):
        a = self.layers[layer]
        return F.linear(F.relu(F.linear(x, a.down.weight, a.down.bias)), a.up.weight, a.up.bias) * 0.1


def test_starts_at_the_backbone_and_equals_the_reference_forward():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = b.encode_image(pixels)
        m = AdaptFormer()
        m.attach(b)
        m.eval()
        torch.testing.assert_close(b.encode_image(pixels), plain, atol=0, rtol=0)
        randomize(m, std=0.3)
        ours = b.encode_image(pixels)
        ref = forward(b.tower("image").vit, pixels, _Parallel(m.adapters["image"]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


@pytest.mark.parametrize("backbone_name", ["tiny-swin", "tiny-clip"])
def test_runs_on_swin_and_the_clip_image_tower_per_image(backbone_name):
    b = build_backbone(backbone_name)
    pixels = torch.rand(3, 3, 32, 32)
    m = get_method("adaptformer")({})
    m.attach(b)
    m.eval()
    randomize(m, std=0.3)
    with torch.no_grad():
        batch = b.encode_image(pixels)
        alone = torch.cat([b.encode_image(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    widths = [a.down.in_features for a in m.adapters["image"]]
    assert widths == list(b.tower("image").layer_widths)


def test_refuses_ofa_and_bad_options():
    with pytest.raises(UserError, match="needs a vit or swin or clip backbone"):
        AdaptFormer.check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
    with pytest.raises(UserError, match="dropout"):
        AdaptFormer({"dropout": 1.0})
    with pytest.raises(UserError, match=r"dim must be in \[1, "):
        AdaptFormer({"dim": 0})
