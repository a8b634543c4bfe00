"""The PEFT baselines on the OFA encoder-decoder: prefix (per tower, lengths, projection + fold),
BitFit (all biases / OFA's selection), Adapter and LoRA attach through the slots and train."""

from __future__ import annotations

import pytest
import torch
from ofa_models import VOCAB, ofa_batch, ofa_model

from petlbench.backbones.ofa import build_ofa_backbone
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


_model = ofa_model
_batch = ofa_batch


def _logits(model, seed: int = 0):
    model.eval()
    with torch.no_grad():
        return model(*_batch(seed))


@pytest.mark.parametrize(
    ("size", "options", "expected"),
    [
        # the OFA default, 64/64 (the paper's recommendation): layers * 2 * d * 64 per tower, two towers
        ("base", {}, 2 * 6 * 2 * 768 * 64),
        ("large", {}, 2 * 12 * 2 * 1024 * 64),
        # OFA's code default 100/100, given explicitly (train_refcoco_prefix.sh L20-21)
        ("base", {"length": 100}, 1_843_200),
        ("large", {"length": 100}, 4_915_200),
    ],
)
def test_prefix_parameters_of_ofa_base_and_large(size, options, expected):
    backbone = build_ofa_backbone(f"ofa-{size}", pretrained=False, device="meta")
    cls = get_method("prefix")
    m = cls({**cls.kind_defaults("ofa"), **options})
    m.attach(backbone)
    assert m.num_trainable_parameters() == expected == m.describe()["prefix_parameters"]
    if not options:
        assert expected == {"base": 1_179_648, "large": 3_145_728}[size]  # reference data-and-ofa.md A2
        assert m.describe()["lengths"] == {"encoder": 64, "decoder": 64}


def test_prefix_per_tower_and_lengths():
    model, m = _model("prefix", tower="encoder", length=5)
    enc, dec = model.backbone.encoder, model.backbone.decoder
    assert all(s.kv_heads is not None for s in enc.slots) and all(s.kv_heads is None for s in dec.slots)
    assert m.num_trainable_parameters() == 5 * 2 * 2 * 64
    model, m = _model("prefix", length=5, decoder_length=3)
    k, _ = model.backbone.decoder.slots[1].kv_heads.active()
    assert k.shape == (4, 3, 16)
    assert m.num_trainable_parameters() == (5 + 3) * 2 * 2 * 64
    assert m.describe()["lengths"] == {"encoder": 5, "decoder": 3}


def test_prefix_zero_length_leaves_the_model_unchanged():
    model, _ = _model("prefix", length=0)
    plain = OFAGenerator(build_ofa_backbone("ofa-test", pretrained=False, vocab_size=VOCAB))
    torch.testing.assert_close(_logits(model), _logits(plain), atol=1e-5, rtol=1e-5)


def test_prefix_projection_folds_to_the_same_outputs():
    model, m = _model("prefix", length=4, projection=True, projection_dim=16, init_std=0.5)
    before = _logits(model)
    m.fold()
    assert m.folded and m.num_trainable_parameters() == 4 * 2 * 2 * 64 * 2
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("prefix", {"length": 4}),
        ("prefix", {"length": 4, "projection": True, "projection_dim": 16}),
        ("bitfit", {}),
        ("bitfit-ofa", {}),
        ("adapter", {"dim": 8}),
        ("lora", {"rank": 2}),
    ],
)
def test_methods_train_only_their_parameters(method, options):
    model, m = _model(method, **options)
    params = list(m.trainable_parameters())
    assert params and all(p.requires_grad for p in params)
    model.train()
    src, pixels, prev = _batch(1)
    loss = model(src, pixels, prev).float().logsumexp(-1).mean()
    loss.backward()
    own = {id(p) for p in params}
    assert all(p.grad is not None for p in params)
    stray = [n for n, p in model.backbone.named_parameters() if p.grad is not None and id(p) not in own]
    assert not stray


def test_bitfit_ofa_selects_fairseq_named_biases():
    model, m = _model("bitfit-ofa")
    names = m.parameter_names()
    assert "encoder.layers.0.fc1.bias" in names and "decoder.layers.1.cross_attn_layer_norm.bias" in names
    assert "encoder.layer_norm.bias" in names
    assert not any(("mid_layer_norm" in n or "ffn_layer_norm" in n or "self_attn." in n) for n in names)
    # per encoder layer 2 LN + fc1 + fc2 = 64 + 64 + 256 + 64, decoder one LN more, plus 2 final LNs
    assert m.num_trainable_parameters() == 2 * 448 + 2 * 512 + 2 * 64
    backbone = build_ofa_backbone("ofa-base", pretrained=False, device="meta")
    cls = get_method("bitfit-ofa")
    big = cls(cls.kind_defaults("ofa"))
    big.attach(backbone)
    assert big.num_trainable_parameters() == 6 * (2 * 768 + 3072 + 768) + 6 * (3 * 768 + 3072 + 768) + 2 * 768


def test_adapter_and_lora_start_at_the_backbone_and_lora_merges():
    plain = _logits(OFAGenerator(build_ofa_backbone("ofa-test", pretrained=False, vocab_size=VOCAB)))
    model, m = _model("adapter")
    assert m.describe()["bottleneck"] == {"encoder": 200, "decoder": 200}  # OFA's --adapter-dim
    torch.testing.assert_close(_logits(model), plain, atol=1e-5, rtol=1e-5)
    model, m = _model("lora", rank=2)
    torch.testing.assert_close(_logits(model), plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for layers in m.lora.values():
            for mod in layers:
                for b in mod.lora_B.values():
                    b.normal_(0, 0.1)
    unmerged = _logits(model)
    m.merge()
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=1e-5)


def test_classification_only_methods_refuse_the_encoder_decoder():
    from petlbench.errors import UserError

    for method in ("linear", "coop", "cocoop", "zeroshot"):
        with pytest.raises(UserError):
            get_method(method).check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
