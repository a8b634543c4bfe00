"""VPT: exact parameter counts on the real architectures, placement, and what trains."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.errors import UserError
from petlbench.methods.vpt import VPT, VPTConfig


def _attach(backbone, **cfg):
    method = VPT(VPTConfig(**cfg))
    method.attach(backbone)
    return method


def test_vpt_deep_10_tokens_on_vit_b16(vit_b16):
    m = _attach(vit_b16, num_tokens=10, deep=True)
    assert m.num_trainable_parameters() == 92_160
    vit_b16.tower("image").clear_slots()


def test_vpt_8_tokens_12_layers_on_clip_b16_image_tower(clip_b16):
    m = _attach(clip_b16, num_tokens=8, deep=True)
    assert m.num_trainable_parameters() == 73_728
    clip_b16.tower("image").clear_slots()


def test_vpt_shallow_50_tokens(vit_b16):
    m = _attach(vit_b16, num_tokens=50, deep=False)
    assert m.num_trainable_parameters() == 38_400
    vit_b16.tower("image").clear_slots()


def test_init_bound_follows_the_reference():
    b = build_backbone("tiny-vit")
    m = _attach(b, num_tokens=200, deep=True)
    bound = (6.0 / (3 * 16 * 16 + 64)) ** 0.5
    values = torch.cat([p.detach().flatten() for p in m.prompts["image"]])
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.95 * bound  # uniform over the whole interval, not a narrower init


def test_text_tower_prompts_go_after_sos_and_change_text_features():
    b = build_backbone("tiny-clip")
    ids = b.tokenize(["a red circle"])
    before = b.encode_text(ids)
    m = _attach(b, num_tokens=4, deep=True, tower="text")
    assert m.num_trainable_parameters() == 4 * 64 * 2  # 2 text layers, width 64
    after = b.encode_text(ids)
    assert not torch.allclose(before, after)
    tower = b.tower("text")
    x = tower.embed(ids[:, : int(ids.argmax()) + 1])
    out, inserted = tower.run_blocks(x)
    assert inserted.after_first == 4 and out.shape[1] == x.shape[1] + 4


def test_vpt_on_shallow_mode_equals_backbone_when_prompts_removed():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    base = b.encode_image(pixels)
    _attach(b, num_tokens=3)
    assert not torch.allclose(base, b.encode_image(pixels))
    b.tower("image").clear_slots()
    torch.testing.assert_close(base, b.encode_image(pixels))


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="tower"):
        VPT({"tower": "audio"})
    with pytest.raises(UserError, match="no option"):
        VPT({"tokens": 3})
    with pytest.raises(UserError, match="num_tokens"):
        VPT({"num_tokens": "many"})
    assert VPT({"num_tokens": "7", "deep": "true"}).config == VPTConfig(num_tokens=7, deep=True)


# ----- CLIP: the CLIP-VPT configuration of the MaPLe repository --------------------------------------


def _maple_vpt_image(visual, prompts, pixels, where="end"):
    """An independent transcription of MaPLe's VPT image forward (muzairkhattak/multimodal-prompt-learning
    clip/model.py: VisionTransformer.forward L393-422 and ResidualAttentionBlock_IVLP.forward L229-256)
    on the raw open_clip modules: prompts appended at the end after the position embedding, then
    ln_pre; before every deeper prompted layer the last n tokens are replaced by that layer's prompts.
    ``where="after_cls"`` is KMnP's placement after CLS, after ln_pre (our layout=kmnp on CLIP)."""
    bsz = pixels.shape[0]
    x = visual.conv1(pixels)
    x = x.reshape(bsz, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(bsz, 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    n = prompts[0].shape[0]
    if where == "end":
        x = visual.ln_pre(torch.cat([x, prompts[0].expand(bsz, -1, -1)], dim=1))
    else:
        x = visual.ln_pre(x)
        x = torch.cat([x[:, :1], prompts[0].expand(bsz, -1, -1), x[:, 1:]], dim=1)
    for i, blk in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            if where == "end":
                x = torch.cat([x[:, : x.shape[1] - n], prompts[i].expand(bsz, -1, -1)], dim=1)
            else:
                x = torch.cat([x[:, :1], prompts[i].expand(bsz, -1, -1), x[:, 1 + n :]], dim=1)
        x = blk(x)  # open_clip's own block (batch first), not our tower code
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_clip_kind_defaults_are_maple_vpt():
    # configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml:L34 (N_CTX_VISION 8), L37 (PROMPT_DEPTH_VISION 12)
    assert VPT.kind_defaults("clip") == {"num_tokens": 8, "deep": True}
    assert VPT.kind_defaults("vit") == {} and VPT.kind_defaults("swin") == {}
    assert VPT().resolved("clip") == ("maple", "normal")
    assert VPT().resolved("vit") == VPT().resolved("swin") == ("kmnp", "xavier")
    assert VPT({"layout": "kmnp", "init": "xavier"}).resolved("clip") == ("kmnp", "xavier")


def test_clip_b16_kind_defaults_give_73728_parameters_in_maple_layout(clip_b16):
    """The VPT baseline count of the Adapt paper: 8 tokens x 12 layers x 768 on CLIP ViT-B/16."""
    m = VPT(VPT.kind_defaults("clip"))
    try:
        m.attach(clip_b16)
        assert m.num_trainable_parameters() == 73_728 == 8 * 12 * 768
        assert list(m.prompts) == ["image"]  # vision only (trainers/vpt.py:L33-37)
        slots = [s.input_tokens for s in clip_b16.tower("image").slots]
        assert all(s.position == "end" and s.mode == "replace" for s in slots)
        assert [s.before_norm for s in slots] == [True] + [False] * 11
        assert all(s.input_tokens is None for s in clip_b16.tower("text").slots)
        values = torch.cat([p.detach().flatten() for p in m.prompts["image"]])
        assert abs(float(values.std()) - 0.02) < 0.0005 and abs(float(values.mean())) < 0.0005
        assert m.describe()["layout"] == "maple" and m.describe()["init"] == "normal"
    finally:
        clip_b16.tower("image").clear_slots()


def test_tiny_clip_kind_defaults_count_and_normal_init():
    b = build_backbone("tiny-clip")
    torch.manual_seed(0)
    m = _attach(b, **VPT.kind_defaults("clip"))
    assert m.num_trainable_parameters() == 8 * 2 * 64
    assert all(p.shape == (8, 64) for p in m.prompts["image"])
    values = torch.cat([p.detach().flatten() for p in m.prompts["image"]])
    # N(0, 0.02): std 0.02; KMnP's Xavier-uniform (bound 0.0625 here) would have std 0.036.
    assert abs(float(values.std()) - 0.02) < 0.002
    kmnp = _attach(build_backbone("tiny-clip"), num_tokens=200, deep=True, init="xavier")
    bound = (6.0 / (3 * 16 * 16 + 64)) ** 0.5
    assert max(float(p.detach().abs().max()) for p in kmnp.prompts["image"]) <= bound


@pytest.mark.parametrize(("deep", "depth"), [(True, None), (False, None), (True, 1)])
def test_clip_image_forward_equals_the_maple_transcription(deep, depth):
    b = build_backbone("tiny-clip")
    m = _attach(b, num_tokens=3, deep=deep, depth=depth)
    m.eval()
    pixels = torch.randn(3, 3, 32, 32)
    prompts = [p.detach() for p in m.prompts["image"]]
    with torch.no_grad():
        want = _maple_vpt_image(b.tower("image").visual, prompts, pixels)
        torch.testing.assert_close(b.encode_image(pixels), want, atol=1e-5, rtol=1e-5)


def test_clip_layout_kmnp_puts_prompts_after_cls():
    b = build_backbone("tiny-clip")
    m = _attach(b, num_tokens=3, deep=True, layout="kmnp", init="xavier")
    assert all(s.input_tokens.position == "after_first" for s in b.tower("image").slots)
    prompts = [p.detach() for p in m.prompts["image"]]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = _maple_vpt_image(b.tower("image").visual, prompts, pixels, where="after_cls")
        torch.testing.assert_close(b.encode_image(pixels), want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(want, _maple_vpt_image(b.tower("image").visual, prompts, pixels), atol=1e-4)


def test_vpt_on_vit_stays_kmnp():
    b = build_backbone("tiny-vit")
    m = _attach(b, num_tokens=3, deep=True)
    slots = [s.input_tokens for s in b.tower("image").slots]
    assert all(s.position == "after_first" and not s.before_norm for s in slots)
    assert m.describe()["layout"] == "kmnp" and m.describe()["init"] == "xavier"
    with pytest.raises(UserError, match="layout=maple"):
        _attach(build_backbone("tiny-vit"), layout="maple")
    with pytest.raises(UserError, match="layout"):
        VPT({"layout": "prepend"})
    with pytest.raises(UserError, match="init"):
        VPT({"init": "zeros"})
