"""FacT-TT and FacT-TK: exact counts on ViT-B/16, zero start, equal to transcriptions of
JieShibo/PETL-ViT FacT/fact_tt.py and fact_tk.py, on the CLIP image tower, refusal on Swin / OFA."""

import pytest
import torch
from vit_reference import forward, randomize

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.fact import FacTTK, FacTTT
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("cls", "rank", "count"),
    [
        (FacTTT, 8, 2 * 768 * 8 + 12 * 12 * 8**2),  # 21,504 (set_FacT default dim=8)
        (FacTTT, 16, 2 * 768 * 16 + 12 * 12 * 16**2),  # 61,440
        (FacTTK, 16, 2 * 768 * 16 + 144 * 16 + 16**3),  # 30,976
        (FacTTK, 32, 2 * 768 * 32 + 144 * 32 + 32**3),  # 86,528
    ],
)
def test_counts_on_vit_b16(vit_b16, cls, rank, count):
    try:
        m = cls({"rank": rank})
        m.attach(vit_b16)
        assert m.num_trainable_parameters() == count
        assert count in (21_504, 61_440, 30_976, 86_528)
    finally:
        vit_b16.tower("image").clear_slots()


class _TT:
    """fact_tt.py:L60-100 with the method's tensors (eval mode: no dropout)."""

    def __init__(self, f):
        self.f, self.s, self.dim = f, f.scale, f.rank

    def qkv(self, layer, x, qkv):
        c, u, v = self.f.cores[layer], self.f.u, self.f.v
        q, k, vv = (v(c[o](u(x))) for o in ("q", "k", "v"))
        return qkv + torch.cat([q, k, vv], dim=2) * self.s

    def proj(self, layer, a, out):
        return out + self.f.v(self.f.cores[layer]["proj"](self.f.u(a))) * self.s

    def fc1(self, layer, x, h):
        B, N, C = x.shape
        z = self.f.cores[layer]["fc1"](self.f.u(x)).reshape(B, N, 4, self.dim)
        return h + self.f.v(z).reshape(B, N, 4 * C) * self.s

    def fc2(self, layer, x, h):
        B, N, C4 = x.shape
        x = x.reshape(B, N, 4, C4 // 4)
        return h + self.f.v(self.f.cores[layer]["fc2"](self.f.u(x).reshape(B, N, 4 * self.dim))) * self.s


class _TK:
    """fact_tk.py:L59-104: cores FacTc @ FacTp[:, idx:idx + 4] (attention) and [:, idx:idx + 8] (MLP),
    idx advancing 4 then 8 per block in module order."""

    def __init__(self, f):
        self.f, self.s, self.dim = f, f.scale, f.rank

    def _attn_c(self, layer):
        idx = 12 * layer
        return self.f.c @ self.f.p[:, idx : idx + 4]

    def _mlp_c(self, layer):
        idx = 12 * layer + 4
        c = self.f.c @ self.f.p[:, idx : idx + 8]
        return c[:, :, :4].reshape(self.dim, self.dim * 4), c[:, :, 4:].reshape(self.dim, self.dim * 4)

    def qkv(self, layer, x, qkv):
        c, u, v = self._attn_c(layer), self.f.u, self.f.v
        q, k, vv = (v(u(x) @ c[:, :, i]) for i in range(3))
        return qkv + torch.cat([q, k, vv], dim=2) * self.s

    def proj(self, layer, a, out):
        return out + self.f.v(self.f.u(a) @ self._attn_c(layer)[:, :, 3]) * self.s

    def fc1(self, layer, x, h):
        B, N, C = x.shape
        z = (self.f.u(x) @ self._mlp_c(layer)[0]).reshape(B, N, 4, self.dim)
        return h + self.f.v(z).reshape(B, N, 4 * C) * self.s

    def fc2(self, layer, x, h):
        B, N, C4 = x.shape
        x = x.reshape(B, N, 4, C4 // 4)
        return h + self.f.v(self.f.u(x).reshape(B, N, 4 * self.dim) @ self._mlp_c(layer)[1].t()) * self.s


@pytest.mark.parametrize(("name", "hooks"), [("fact-tt", _TT), ("fact-tk", _TK)])
def test_starts_at_the_backbone_and_equals_the_reference_forward(name, hooks):
    b = build_backbone("tiny-vit")
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = b.encode_image(pixels)
        m = get_method(name)({"rank": 4, "scale": 10.0})
        m.attach(b)
        m.eval()
        torch.testing.assert_close(b.encode_image(pixels), plain, atol=0, rtol=0)  # FacTv = 0
        randomize(m, std=0.2)
        ours = b.encode_image(pixels)
        ref = forward(b.tower("image").vit, pixels, hooks(m.factors["image"]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_on_the_clip_image_tower_and_refusals():
    b = build_backbone("tiny-clip")
    m = get_method("fact-tk")({"rank": 4})
    m.attach(b)
    assert m.factors["image"].p.shape == (4, 12 * 2)  # 12 columns per block, 2 blocks
    assert b.tower("image").has_trainable_parameters()  # the slots see the shared factors
    with pytest.raises(UserError, match="needs a vit or clip backbone"):
        FacTTT.check_compatible("tiny-swin", "swin", ("image",))
    with pytest.raises(UserError, match="needs a vit or clip backbone"):
        FacTTK.check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
    with pytest.raises(UserError, match="dropout"):
        FacTTT({"dropout": -0.1})
