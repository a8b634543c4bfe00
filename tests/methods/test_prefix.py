"""Prefix tuning: exact counts on the real architectures (plain and reparameterized), OFA's layout,
zero-length prefixes equal the backbone, folding the MLP keeps outputs, what trains, training on
the smoke suite, option errors."""

import pytest
import torch
from smoke_training import backbone_unchanged, train_on, trains_all_it_owns

from petlbench.backbones import build_backbone
from petlbench.backbones.attention import slot_attention
from petlbench.backbones.slots import LayerSlots
from petlbench.errors import UserError
from petlbench.methods.prefix import PrefixConfig, PrefixKV, PrefixTuning
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _attach(backbone, **cfg):
    method = PrefixTuning(PrefixConfig(**cfg))
    method.attach(backbone)
    return method


def test_registered_under_its_name():
    assert get_method("prefix") is PrefixTuning


def test_plain_counts_on_vit_b16(vit_b16, cleared):
    try:
        assert _attach(vit_b16, length=10).num_trainable_parameters() == 184_320 == 10 * 12 * 2 * 768
        cleared(vit_b16)
        # the default length 100 off OFA: length * layers * 2 * d (the same number as OFA-Base 100/100)
        m = _attach(vit_b16)
        assert m.num_trainable_parameters() == 1_843_200 == m.inference_parameters()
        assert all(isinstance(s.kv_heads, PrefixKV) for s in vit_b16.tower("image").slots)
    finally:
        cleared(vit_b16)


def test_the_ofa_default_length_is_the_papers_64_and_others_keep_100():
    assert PrefixTuning.kind_defaults("ofa") == {"tower": "both", "length": 64}
    for kind in ("clip", "vit", "swin"):
        assert "length" not in PrefixTuning.kind_defaults(kind)
    assert PrefixConfig().length == 100
    # the harness puts the user's options over the kind defaults: an explicit length wins
    given = {**PrefixTuning.kind_defaults("ofa"), "length": 100}
    assert PrefixTuning(given).config.length == 100


def test_reparameterized_count_states_what_is_counted_and_folds_to_plain(vit_b16, cleared):
    try:
        m = _attach(vit_b16, length=10, projection=True, projection_dim=512)
        # embedding 10*768 + Linear(768, 512) + Linear(512, 12*2*768)
        trained = 10 * 768 + (768 * 512 + 512) + (512 * 18_432 + 18_432)
        assert m.num_trainable_parameters() == 9_857_024 == trained
        info = m.describe()
        assert info["counted"] == "embedding + reparameterization MLP"
        assert info["counted_parameters"] == 9_857_024
        assert info["reparameterization_parameters"] == 9_857_024
        assert info["prefix_parameters"] == 184_320
        m.fold()
        assert m.num_trainable_parameters() == 184_320 and m.describe()["counted"] == "plain prefixes"
        assert m.describe()["reparameterization_parameters"] == 9_857_024  # what was trained, still stated
    finally:
        cleared(vit_b16)


def test_counts_on_clip_b16_per_tower_lengths(clip_b16, cleared):
    try:
        assert _attach(clip_b16, length=10, tower="both").num_trainable_parameters() == 307_200
        cleared(clip_b16)
        m = _attach(clip_b16, length=10, text_length=4, tower="both")
        assert m.num_trainable_parameters() == 184_320 + 4 * 12 * 2 * 512  # 233,472
        assert m.describe()["lengths"] == {"image": 10, "text": 4}
    finally:
        cleared(clip_b16)


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-clip"])
def test_zero_length_prefixes_equal_the_backbone(backbone_name, projection, cleared):
    b = build_backbone(backbone_name)
    pixels = torch.rand(3, 3, 32, 32)
    ids = b.tokenize(["a red circle", "two blue squares"]) if b.kind == "clip" else None
    base = b.encode_image(pixels)
    text_base = b.encode_text(ids) if ids is not None else None
    m = _attach(b, length=0, tower="both", projection=projection)
    m.train()  # dropout on an empty prefix is still empty
    assert m.inference_parameters() == 0
    torch.testing.assert_close(b.encode_image(pixels), base, atol=1e-5, rtol=0)
    if ids is not None:
        torch.testing.assert_close(b.encode_text(ids), text_base, atol=1e-5, rtol=0)
    cleared(b)
    _attach(b, length=3, tower="both", init_std=1.0)
    assert not torch.allclose(b.encode_image(pixels), base, atol=1e-3)
    if ids is not None:
        assert not torch.allclose(b.encode_text(ids), text_base, atol=1e-3)


def test_layout_follows_ofa_and_attention_sees_the_prefixes():
    b = build_backbone("tiny-vit")  # width 64, 2 heads, 2 layers
    m = _attach(b, length=5, init_std=1.0)
    m.eval()
    table = m.prefixes["image"]
    assert table.shape == (5, 2 * 2 * 64)
    keys, values = m.layer_prefix("image", 1)
    assert keys.shape == values.shape == (2, 5, 32)
    torch.testing.assert_close(keys, table[:, 128:192].reshape(5, 2, 32).permute(1, 0, 2))
    torch.testing.assert_close(values, table[:, 192:256].reshape(5, 2, 32).permute(1, 0, 2))

    view = b.tower("image")._views[1]
    x = torch.randn(2, 7, 64)
    w, bias = view.qkv_weight(), view.qkv_bias()
    out = slot_attention(
        x, w, bias, view.out_proj.weight, view.out_proj.bias, 2, slots=b.tower("image").slots[1]
    )
    q, k, v = (x @ w.T + bias).view(2, 7, 3, 2, 32).permute(2, 0, 3, 1, 4)
    k = torch.cat([keys.expand(2, -1, -1, -1), k], dim=2)
    v = torch.cat([values.expand(2, -1, -1, -1), v], dim=2)
    att = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, dim=-1) @ v
    expected = att.transpose(1, 2).reshape(2, 7, 64) @ view.out_proj.weight.T + view.out_proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    plain = slot_attention(x, w, bias, view.out_proj.weight, view.out_proj.bias, 2, slots=LayerSlots())
    assert not torch.allclose(plain, out, atol=1e-4)  # the prefixes change the layer's output


def test_dropout_is_active_in_training_only():
    b = build_backbone("tiny-vit")
    m = _attach(b, length=20, dropout=0.5)
    m.train()
    assert not torch.equal(m.layer_prefix("image", 0)[0], m.layer_prefix("image", 0)[0])
    m.eval()
    assert torch.equal(m.layer_prefix("image", 0)[0], m.layer_prefix("image", 0)[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_folding_the_mlp_keeps_outputs_and_removes_it(activation):
    b = build_backbone("tiny-clip")
    pixels = torch.rand(2, 3, 32, 32)
    ids = b.tokenize(["a red circle"])
    m = _attach(b, length=4, tower="both", projection=True, projection_dim=32, activation=activation)
    assert isinstance(m.mlps["image"][1], torch.nn.ReLU if activation == "relu" else torch.nn.Tanh)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    m.eval()
    image, text = b.encode_image(pixels), b.encode_text(ids)
    assert [s.name for s in m.stages()] == ["train", "fold"]
    unfolded_state = m.method_state()
    m.stages()[1].prepare(None)
    assert m.folded and len(m.mlps) == 0 and len(m.embeddings) == 0
    assert not any("mlps" in n or "embeddings" in n for n, _ in m.named_parameters())
    assert m.num_trainable_parameters() == m.inference_parameters() == 4 * 2 * 2 * 64 * 2
    torch.testing.assert_close(b.encode_image(pixels), image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.encode_text(ids), text, atol=1e-5, rtol=1e-5)
    m.fold()  # idempotent

    # A folded checkpoint loads into a freshly attached (unfolded) method: it folds first.
    fresh = build_backbone("tiny-clip")
    m2 = _attach(fresh, length=4, tower="both", projection=True, projection_dim=32, activation=activation)
    m2.load_method_state(m.method_state())
    m2.eval()
    assert m2.folded
    torch.testing.assert_close(fresh.encode_image(pixels), image, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="unfolded"):
        m2.load_method_state(unfolded_state)
    assert [s.name for s in PrefixTuning({"projection": True, "fold": False}).stages()] == ["train"]
    assert [s.name for s in PrefixTuning().stages()] == ["train"]


def test_only_prefix_parameters_require_grad_and_towers_report_them():
    b = build_backbone("tiny-clip")
    m = _attach(b, length=4, tower="text", projection=True, projection_dim=16)
    assert not any(p.requires_grad for p in b.parameters())
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.parameters()}
    with torch.no_grad():  # the harness may ask while evaluating
        assert b.tower("text").has_trainable_parameters()
    assert not b.tower("image").has_trainable_parameters()


@pytest.mark.parametrize(
    ("backbone_name", "config", "lr", "epochs", "margin"),
    [
        ("tiny-vit", {"length": 8}, 0.1, 6, 10),
        # On the random-feature tiny CLIP with its text head, prefix gradients are ~1e-3 (prefix keys
        # get little attention), so plain prefixes barely move at lr 0.1; the MLP reparameterization
        # at a larger lr learns (the reason Li & Liang introduced it).
        ("tiny-clip", {"length": 8, "projection": True, "projection_dim": 64}, 5.0, 8, 8),
    ],
)
def test_trains_on_the_smoke_suite_and_beats_its_untrained_state(
    colors, backbone_name, config, lr, epochs, margin
):
    trained = train_on(colors, "prefix", backbone_name, config, epochs=epochs, lr=lr)
    assert trained.learned(margin), (trained.before_acc, trained.after_acc)
    assert backbone_unchanged(trained)
    method = trained.method
    assert trains_all_it_owns(method)
    if method.config.projection:  # the fold stage keeps what was learned
        pred = trained.val_predictions(colors)
        method.fold()
        assert torch.equal(trained.val_predictions(colors).argmax(-1), pred.argmax(-1))


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="length"):
        PrefixTuning({"length": -1})
    with pytest.raises(UserError, match="length"):
        PrefixTuning({"text_length": -2})
    with pytest.raises(UserError, match="activation must be one of relu, tanh, gelu"):
        PrefixTuning({"activation": "sigmoid"})
    with pytest.raises(UserError, match="projection_dim"):
        PrefixTuning({"projection": True, "projection_dim": 0})
    with pytest.raises(UserError, match="dropout"):
        PrefixTuning({"dropout": 1.0})
    with pytest.raises(UserError, match="init_std"):
        PrefixTuning({"init_std": -0.1})
    with pytest.raises(UserError, match="tower"):
        PrefixTuning({"tower": "decoder,audio"})
    with pytest.raises(UserError, match="has no text tower"):
        PrefixTuning({"tower": "text"}).attach(build_backbone("tiny-vit"))
    with pytest.raises(UserError, match="not a valid"):
        PrefixTuning({"length": "long"})
    assert PrefixTuning({"length": "8", "projection": "true"}).config == PrefixConfig(
        length=8, projection=True
    )
