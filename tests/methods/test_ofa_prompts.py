"""VPT-style (input tokens) and Adapt-style (residual-space K/V) prompts on the OFA encoder-decoder:
identity at zero, exact counts, gradients, causality, pruning, and `bench run` on ofa-smoke."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from ofa_models import VOCAB, ofa_backbone, ofa_batch, ofa_model

import petlbench.backbones.attention as attention
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.cli import main
from petlbench.errors import UserError
from petlbench.harness.store import Store
from petlbench.methods.adapt import Adapt
from petlbench.methods.vpt import VPT

D, LAYERS = 64, 2  # ofa-test: width 64, 2 encoder + 2 decoder layers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("PETLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _backbone():
    return ofa_backbone(seed=0)


def _model(method: str, **options):
    return ofa_model(method, _backbone(), method_seed=1, **options)


_batch = ofa_batch


def _outputs(model, seed: int = 0):
    """(encoder memory, decoder logits) in eval mode."""
    model.eval()
    src, pixels, prev = _batch(seed)
    with torch.no_grad():
        memory = model.encode(src, pixels)
        return memory.hidden, model.logits(prev, memory)


@functools.cache
def _plain():
    return _outputs(OFAGenerator(_backbone()))


# ----- VPT --------------------------------------------------------------------------------------


def test_vpt_pairs_with_ofa_and_defaults_to_the_encoder():
    VPT.check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
    assert VPT.kind_defaults("ofa") == {"tower": "encoder"} and VPT.kind_defaults("vit") == {}
    _, m = _model("vpt", num_tokens=3)
    assert list(m.prompts) == ["encoder"]
    _, m = _model("vpt", num_tokens=3, tower="both")
    assert list(m.prompts) == ["encoder", "decoder"]
    with pytest.raises(UserError, match="no image tower"):
        _model("vpt", tower="image")


def test_vpt_with_zero_tokens_is_the_backbone():
    backbone = _backbone()
    m = VPT({"tower": "both", "deep": True})
    m.config.num_tokens = 0  # below the option's minimum: only to check the insertion path is neutral
    m.attach(backbone)
    slots = [s for t in ("encoder", "decoder") for s in backbone.tower(t).slots]
    assert all(s.input_tokens is not None and s.input_tokens.tokens.shape[0] == 0 for s in slots)
    for got, want in zip(_outputs(OFAGenerator(backbone, m)), _plain(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_vpt_deep_on_the_encoder_trains_only_its_prompts():
    model, m = _model("vpt", num_tokens=5, deep=True)
    assert m.num_trainable_parameters() == 5 * LAYERS * D == 640
    memory, logits = _outputs(model)
    assert memory.shape == _plain()[0].shape and logits.shape == _plain()[1].shape
    assert not torch.allclose(memory, _plain()[0], atol=1e-4)
    assert not torch.allclose(logits, _plain()[1], atol=1e-4)
    model.train()
    model(*_batch(1)).float().logsumexp(-1).mean().backward()
    own = {id(p) for p in m.trainable_parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trainable_parameters())
    assert not [n for n, p in model.backbone.named_parameters() if p.grad is not None and id(p) not in own]


def test_vpt_on_the_decoder_keeps_causality():
    model, m = _model("vpt", num_tokens=3, deep=True, tower="decoder", text_tokens=2)
    assert [p.shape[0] for p in m.prompts["decoder"]] == [2, 2]
    assert not torch.allclose(_outputs(model)[1], _plain()[1], atol=1e-4)
    model.eval()
    src, pixels, prev = _batch(2)
    changed = prev.clone()
    changed[:, 3] = (changed[:, 3] + 7) % VOCAB
    with torch.no_grad():
        a, b = model(src, pixels, prev), model(src, pixels, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)


# ----- Adapt ------------------------------------------------------------------------------------

SMALL = {"image_layers": 2, "text_layers": 1, "image_tokens": 4, "text_tokens": 3}


def test_adapt_branches_are_encoder_and_decoder_with_all_masks_off_equal_to_the_backbone():
    Adapt.check_compatible("ofa-test", "ofa", ("encoder", "decoder"))
    with pytest.raises(UserError, match="adapt"):
        Adapt.check_compatible("odd", "other", ("decoder",))
    model, m = _model("adapt", **SMALL)
    assert m.branches == ["encoder", "decoder"]
    assert m.context_lengths() == {"encoder": [4, 4], "decoder": [3]}
    assert m.num_trainable_parameters() == D * (8 + 3) == 704
    for got, want in zip(_outputs(model), _plain(), strict=True):
        assert not torch.allclose(got, want, atol=1e-4)
    for b in m.branches:
        m.mask(b).zero_()
    assert m.num_trainable_parameters() == 0
    for got, want in zip(_outputs(model), _plain(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    d = m.describe()
    assert d["active_total"] == 0 and d["widths"] == {"encoder": D, "decoder": D}


def test_adapt_pruning_on_ofa_counts_and_shrinks_the_attention(monkeypatch):
    model, m = _model("adapt", **SMALL, target_tokens=6)
    scores = {"encoder": torch.ones(2, 4), "decoder": torch.ones(1, 3)}
    scores["encoder"][1] = 0.0  # the second encoder layer's tokens go first, then ties: encoder first
    pruned = m.prune_lowest(scores, 5)
    assert pruned == [("encoder", 1, t) for t in range(4)] + [("encoder", 0, 0)]
    assert m.context_lengths() == {"encoder": [3, 0], "decoder": [3]}
    assert m.num_trainable_parameters() == D * 6

    keys: list[int] = []
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, **kw):
        keys.append(k.shape[2])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", record)
    model.eval()
    src, pixels, prev = _batch()
    with torch.no_grad():
        model(src, pixels, prev)
    monkeypatch.undo()
    # encoder self-attention: 16 patches + 6 text tokens + the active prompts (3, then 0); decoder
    # self-attention: 4 tokens + 3 prompts, then 4; each decoder layer's cross-attention: 22 memory keys
    assert keys == [22 + 3, 22, 4 + 3, 22, 4, 22]


# ----- bench run ----------------------------------------------------------------------------------


def _records(store_path):
    with Store(store_path) as store:
        return {r.spec.task: r for r in store.records()}


@pytest.mark.parametrize(
    ("method", "options", "count"),
    [
        ("vpt", [], 5 * D),  # shallow, 5 tokens on the encoder
        # 64 tokens in all (below the default target of 128): a target of 56 makes it prune
        (
            "adapt",
            ["--set", "accumulation_steps=2", "--set", "warmup_epochs=0", "--set", "target_tokens=56"],
            0,
        ),
    ],
)
def test_bench_run_on_ofa_smoke(tmp_path, method, options, count):
    store = tmp_path / "s.sqlite"
    argv = ["run", "--method", method, "--suite", "ofa-smoke", "--store", str(store)]
    assert main([*argv, "--protocol", "epochs=2", "--no-fgsm", "--json", *options]) == 0
    records = _records(store)
    assert set(records) == {"refcoco", "snli_ve", "caption", "vqa"}
    for rec in records.values():
        assert rec.status == "finished" and len(rec.result["history"]) == 2
        params = rec.result["parameters"]["method"]
        if method == "vpt":
            assert rec.spec.method_config["tower"] == "encoder" and params == count
        else:
            described = rec.result["method"]
            # 2 + 2 layers of 16 tokens (the defaults clamp to ofa-test's depth), 4 pruned per 2 steps
            assert described["context_lengths"].keys() == {"encoder", "decoder"}
            assert len(described["pruned"]) == 8 and described["active_total"] == 56
            assert params == D * 56
