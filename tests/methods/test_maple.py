"""MaPLe and IVLP: the reference's counts on CLIP ViT-B/16 (methods.md 4.3, 9.1) and the logits
against a transcription of muzairkhattak/multimodal-prompt-learning's forward (trainers/maple.py
L119-131, clip/model.py L287-331, L445-463) running open_clip's own blocks."""

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.harness.objectives import count_parameters
from petlbench.methods import get_method
from petlbench.methods.maple import IVLP, MaPLe, MaPLeConfig
from petlbench.methods.promptsrc import PromptSRC

NAMES = ["red", "green", "light_blue"]


def _attach(cls, backbone, **cfg):
    torch.manual_seed(0)
    method = cls(cfg)
    method.attach(backbone)
    return method, method.make_head(backbone, NAMES, [])


def test_registered_with_reference_defaults():
    assert get_method("maple") is MaPLe and get_method("ivlp") is IVLP
    c = MaPLeConfig()  # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml L33-36
    assert (c.n_ctx, c.ctx_init, c.depth) == (2, "a photo of a", 9)
    assert MaPLe.suggested_protocol["lr"] == 3.5e-3 and MaPLe.suggested_protocol["batch_size"] == 4
    with pytest.raises(UserError, match="clip"):
        MaPLe.check_compatible("tiny-vit", "vit", ("image",))


def test_counts_on_clip_b16(clip_b16):
    """MaPLe n=2, J=9: 3,555,072 = 2.860% of 124,323,841; IVLP 2+2 at depth 12: 30,720."""
    try:
        method, head = _attach(MaPLe, clip_b16)
        counts = count_parameters(method, head, clip_b16)
        assert counts["method"] == 3_555_072
        assert counts["backbone_without_token_embedding"] == 124_323_841
        assert round(counts["percent_of_backbone_without_token_embedding"], 3) == 2.860
        for t in clip_b16.towers.values():
            t.clear_slots()
        ivlp, _ = _attach(IVLP, clip_b16)
        assert ivlp.num_trainable_parameters() == 30_720
    finally:
        for t in clip_b16.towers.values():
            t.clear_slots()


def _reference_logits(backbone, method, pixels, coupled):
    """The reference's CustomCLIP forward, transcribed (fp32, open_clip blocks)."""
    n, depth = method.config.n_ctx, method.config.depth
    text = backbone.tower("text")
    ids = backbone.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in NAMES])
    emb = text.token_embedding(ids)
    ctx = method.ctx.unsqueeze(0).expand(len(NAMES), -1, -1)
    x = torch.cat([emb[:, :1], ctx, emb[:, 1 + n :]], dim=1) + text.positional_embedding  # maple.py L160-190
    mask = torch.full((77, 77), float("-inf")).triu(1)
    for i, blk in enumerate(text.transformer.resblocks):
        if 0 < i < depth:  # clip/model.py L287-306: replace positions 1..n
            p = method.text_prompts[i - 1].unsqueeze(0).expand(len(NAMES), -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)
        x = blk(x, attn_mask=mask)
    t = text.ln_final(x)[torch.arange(len(NAMES)), ids.argmax(-1)] @ text.text_projection
    v = backbone.tower("image").visual
    y = v.conv1(pixels).flatten(2).permute(0, 2, 1)
    y = torch.cat([v.class_embedding.view(1, 1, -1).expand(y.shape[0], -1, -1), y], dim=1)
    y = y + v.positional_embedding
    first = method.proj(method.ctx) if coupled else method.vision_prompts[0]
    y = v.ln_pre(torch.cat([y, first.unsqueeze(0).expand(y.shape[0], -1, -1)], dim=1))  # L445-463
    for i, blk in enumerate(v.transformer.resblocks):
        if i > 0 and coupled and i < depth:  # clip/model.py L310-331: replace the last n tokens
            deep = method.projections[i - 1](method.text_prompts[i - 1])
            y = torch.cat([y[:, :-n], deep.unsqueeze(0).expand(y.shape[0], -1, -1)], dim=1)
        elif i > 0 and not coupled and i < method.config.vision_depth:
            deep = method.vision_prompts[i]
            y = torch.cat([y[:, : -deep.shape[0]], deep.unsqueeze(0).expand(y.shape[0], -1, -1)], dim=1)
        y = blk(y)
    img = v.ln_post(y[:, 0]) @ v.proj
    return backbone.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(t, dim=-1).t()


@pytest.mark.parametrize(
    ("cls", "cfg"),
    [
        (MaPLe, {"depth": 2}),
        (IVLP, {"depth": 2, "vision_depth": 2}),
        (PromptSRC, {"depth": 2, "vision_depth": 2}),  # PromptSRC's prompts are IVLP's (4 + 4 tokens)
    ],
)
def test_logits_match_the_reference(cls, cfg):
    backbone = build_backbone("tiny-clip")
    method, head = _attach(cls, backbone, **cfg)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        pixels = torch.randn(3, 3, 32, 32)
        got = head(backbone.encode_image(pixels))
        want = _reference_logits(backbone, method, pixels, cls is MaPLe)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the cached eval features follow a parameter update
    with torch.no_grad():
        method.ctx.add_(0.5)
        torch.testing.assert_close(
            head(backbone.encode_image(pixels)),
            _reference_logits(backbone, method, pixels, cls is MaPLe),
            atol=1e-5,
            rtol=1e-5,
        )
