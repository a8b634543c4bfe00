"""Convpass: the exact count on ViT-B/16, zero start, equal to a transcription of
JieShibo/PETL-ViT convpass/vtab/convpass.py (ViT) and its Convpass_swin, per image, refusals."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from vit_reference import forward, randomize

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.convpass import Convpass
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_on_vit_b16_is_327552(vit_b16):
    try:
        m = Convpass()
        m.attach(vit_b16)
        per_bypass = (768 * 8 + 8) + (8 * 8 * 9 + 8) + (8 * 768 + 768)  # down, conv, up = 13,648
        assert m.num_trainable_parameters() == 24 * per_bypass == 327_552
    finally:
        vit_b16.tower("image").clear_slots()


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _reference_bypass(b, x, side):
    """Convpass.forward (convpass.py:L129-149) with ``14`` as the grid side: the CLS token goes
    through the conv as a 1x1 image."""
    B, N, C = x.shape
    x_down = _quick_gelu(F.linear(x, b.down.weight, b.down.bias))
    x_patch = x_down[:, 1:].reshape(B, side, side, b.dim).permute(0, 3, 1, 2)
    x_patch = F.conv2d(x_patch, b.conv.weight, b.conv.bias, padding=1)
    x_patch = x_patch.permute(0, 2, 3, 1).reshape(B, side * side, b.dim)
    x_cls = x_down[:, :1].reshape(B, 1, 1, b.dim).permute(0, 3, 1, 2)
    x_cls = F.conv2d(x_cls, b.conv.weight, b.conv.bias, padding=1).permute(0, 2, 3, 1).reshape(B, 1, b.dim)
    x_down = _quick_gelu(torch.cat([x_cls, x_patch], dim=1))
    return F.linear(x_down, b.up.weight, b.up.bias)


class _Bypass:
    """forward_block (convpass.py:L7-10): both bypasses read the normalised input, times s."""

    def __init__(self, per_place, s, side):
        self.p, self.s, self.side = per_place, s, side

    def attn_extra(self, layer, x, h):
        return _reference_bypass(self.p["attn"][layer], h, self.side) * self.s

    def mlp_extra(self, layer, x, h):
        return _reference_bypass(self.p["mlp"][layer], h, self.side) * self.s


@pytest.mark.parametrize("xavier_init", [False, True])
def test_starts_at_the_backbone_and_equals_the_reference_forward(xavier_init):
    b = build_backbone("tiny-vit")  # 32 px, patch 8: a 4 x 4 grid
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = b.encode_image(pixels)
        m = Convpass({"scale": 10.0, "xavier_init": xavier_init})
        m.attach(b)
        m.eval()
        conv = m.bypasses["image"]["attn"][0].conv.weight
        assert torch.equal(conv[:, :, 1, 1], torch.eye(8)) != xavier_init  # identity centre unless xavier
        torch.testing.assert_close(b.encode_image(pixels), plain, atol=0, rtol=0)  # up = 0
        randomize(m, std=0.3)
        ours = b.encode_image(pixels)
        ref = forward(b.tower("image").vit, pixels, _Bypass(m.bypasses["image"], 10.0, 4))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_swin_bypass_equals_convpass_swin_on_each_feature_map():
    """Convpass_swin.forward (convpass.py:L173-185) on a block's (B, H*W, C) map; the bypass sits in
    the attention and MLP branches of every Swin block (forward_swin_block, L19-57)."""
    b = build_backbone("tiny-swin")
    m = get_method("convpass")({})
    m.attach(b)
    m.eval()
    randomize(m, std=0.3)
    tower = b.tower("image")
    grids = [tower.layer_grid(layer) for layer in range(tower.depth)]
    assert grids == [(8, 8), (8, 8), (4, 4), (4, 4)]
    bypass = m.bypasses["image"]["mlp"][2]
    x = torch.randn(2, 16, 64)
    side = 4
    z = F.linear(x, bypass.down.weight, bypass.down.bias).reshape(2, side, side, 8).permute(0, 3, 1, 2)
    z = F.conv2d(_quick_gelu(z), bypass.conv.weight, bypass.conv.bias, padding=1)
    ref = F.linear(_quick_gelu(z.permute(0, 2, 3, 1).reshape(2, -1, 8)), bypass.up.weight, bypass.up.bias)
    with torch.no_grad():
        torch.testing.assert_close(bypass(x), ref, atol=1e-5, rtol=1e-5)
        pixels = torch.rand(3, 3, 32, 32)
        batch = b.encode_image(pixels)
        alone = torch.cat([b.encode_image(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_attention_only_variant_and_refusals():
    b = build_backbone("tiny-clip")
    m = Convpass({"mlp_bypass": False})
    m.attach(b)
    slots = b.tower("image").slots
    assert all(s.parallel_attn is not None and s.parallel_mlp is None for s in slots)
    assert m.num_trainable_parameters() == 2 * ((64 * 8 + 8) + (8 * 8 * 9 + 8) + (8 * 64 + 64))
    assert isinstance(m.bypasses["image"]["attn"][0].conv, nn.Conv2d)
    with pytest.raises(UserError, match="text tower has no patch grid"):
        Convpass({"tower": "text"})
    with pytest.raises(UserError, match="needs a vit or swin or clip backbone"):
        Convpass.check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
