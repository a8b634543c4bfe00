"""E²VPT: exact counts on ViT-B/16, KV-prompt placement, pruning masks, and the train -> prune ->
rewind stages through the harness (with stage resume)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead
from petlbench.benchmarks.data import TensorImageDataset
from petlbench.benchmarks.suites import Protocol
from petlbench.errors import UserError
from petlbench.harness.objectives.classification import fit_classifier, pixel_batches
from petlbench.harness.stages import StageRun, train_stages
from petlbench.methods import get_method
from petlbench.methods.e2vpt import E2VPT, E2VPTConfig
from petlbench.methods.vpt import VPT, VPTConfig


def _attach(backbone, seed=0, **cfg):
    torch.manual_seed(seed)
    method = E2VPT(E2VPTConfig(**cfg))
    method.attach(backbone)
    return method


def test_registered_with_reference_defaults():
    assert get_method("e2vpt") is E2VPT
    c = E2VPTConfig()
    assert (c.visual_tokens, c.kv_tokens, c.deep, c.kv_deep, c.share_kv) == (5, 5, True, True, True)
    assert (c.kv_init, c.dropout, c.segments, c.segment_layout) == ("kaiming", 0.1, 16, "strided")
    assert (c.min_tokens, c.min_segments, c.importance, c.learn_masks) == (1, 4, "abs", True)
    assert [s.name for s in E2VPT().stages()] == ["train", "prune", "rewind"]
    assert [s.train for s in E2VPT().stages()] == [True, False, True]
    assert [s.name for s in E2VPT({"prune": False}).stages()] == ["train"]


def test_parameter_counts_on_vit_b16(vit_b16, cleared):
    """methods.md 9.1: 9,216 * (P + K) shared, 9,216 * P + 18,432 * K unshared; + 17 P gates in stage 1;
    after pruning n_t tokens and s of 16 segments: 9,216 * (P - n_t) * (16 - s) / 16 + 9,216 * K."""
    try:
        m = _attach(vit_b16, visual_tokens=10, kv_tokens=5, prune=False)
        assert m.num_trainable_parameters() == 138_240 == sum(p.numel() for p in m.trainable_parameters())
        cleared(vit_b16)
        m = _attach(vit_b16, visual_tokens=10, kv_tokens=5, prune=False, share_kv=False)
        assert m.num_trainable_parameters() == 184_320 == sum(p.numel() for p in m.trainable_parameters())
        cleared(vit_b16)
        m = _attach(vit_b16, visual_tokens=10, kv_tokens=5)  # stage 1: learnable gates (10 + 160)
        assert m.num_trainable_parameters() == 138_410 == sum(p.numel() for p in m.trainable_parameters())
        assert m.prune_counts() == (5, 8)  # int(10 * 50%), int(16 * 50%)
        m.prune_by_importance(torch.arange(10.0), torch.arange(160.0).view(10, 16))
        assert m.num_trainable_parameters() == 9_216 * 5 * 8 // 16 + 46_080 == 69_120
        cleared(vit_b16)
        m = _attach(vit_b16, visual_tokens=10, kv_tokens=5, token_prune_percent=90, segment_prune_percent=90)
        assert m.prune_counts() == (9, 12)  # keeps min_tokens = 1 and min_segments = 4
        m.prune_by_importance(torch.arange(10.0), torch.zeros(10, 16))
        assert m.num_trainable_parameters() == 9_216 * 1 * 4 // 16 + 46_080 == 48_384
    finally:
        cleared(vit_b16)


def test_inits_follow_the_reference(vit_b16, cleared):
    try:
        m = _attach(vit_b16, visual_tokens=10, kv_tokens=5)
        visual = torch.cat([p.detach().flatten() for p in m.visual])
        bound = math.sqrt(6 / (3 * 256 + 768))
        assert bound == pytest.approx(0.0625)
        assert visual.abs().max() <= bound and visual.abs().max() > 0.99 * bound
        kv = torch.cat([p.detach().flatten() for p in m.kv["image"]])
        kv_bound = math.sqrt(6 / (5 * 64))  # kaiming_uniform fan_in = K * d_head: 0.137 for K = 5
        assert kv_bound == pytest.approx(0.1369, abs=1e-4)
        assert kv.abs().max() <= kv_bound and kv.abs().max() > 0.99 * kv_bound
        assert len(m.visual) == len(m.kv["image"]) == 12
        assert all(p.shape == (12, 5, 64) for p in m.kv["image"])
        assert not torch.equal(m.kv["image"][0], m.kv["image"][1])  # each layer owns its prompt
        assert bool((m.token_gate == 1).all()) and bool((m.segment_gate == 1).all())
    finally:
        cleared(vit_b16)


def test_kv_prompts_on_clip_b16(clip_b16, cleared):
    """Image-tower counts equal ViT-B/16's; text KV prompts are (8, K, 64) per layer = 512 K."""
    try:
        m = _attach(clip_b16, visual_tokens=10, kv_tokens=5, prune=False)
        assert m.num_trainable_parameters() == 138_240
        cleared(clip_b16)
        m = _attach(clip_b16, visual_tokens=10, kv_tokens=5, prune=False, text_kv_tokens=5)
        assert all(p.shape == (8, 5, 64) for p in m.kv["text"])
        assert m.num_trainable_parameters() == 138_240 + 12 * 512 * 5 == 168_960
    finally:
        cleared(clip_b16)


def test_on_tiny_clip_with_text_kv_prompts(cleared):
    b = build_backbone("tiny-clip")
    pixels, ids = torch.rand(2, 3, 32, 32), b.tokenize(["a red circle"])
    image, text = b.encode_image(pixels), b.encode_text(ids)
    m = _attach(b, text_kv_tokens=3)
    m.eval()
    assert all(p.shape == (2, 3, 32) for p in m.kv["text"]) and b.tower("text").has_trainable_parameters()
    assert not torch.allclose(b.encode_text(ids), text, atol=1e-4)
    assert not torch.allclose(b.encode_image(pixels), image, atol=1e-4)
    cleared(b)
    torch.testing.assert_close(b.encode_text(ids), text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.encode_image(pixels), image, atol=1e-5, rtol=1e-5)


def test_slots_shared_kv_and_queries_unchanged(monkeypatch):
    b = build_backbone("tiny-vit")  # 16 patches + CLS, width 64, 2 heads, 2 layers
    m = _attach(b, visual_tokens=3, kv_tokens=2)
    tower = b.tower("image")
    for layer in range(2):
        kv = tower.slots[layer].kv_heads
        assert kv.keys is kv.values is m.kv["image"][layer] and kv.keys.shape == (2, 2, 32)
        assert tower.slots[layer].input_tokens.tokens is m.visual[layer]
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[2], k.shape[2]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m.eval()
    out, inserted = tower.run_blocks(torch.randn(2, 17, 64))
    assert out.shape == (2, 20, 64) and inserted.after_first == 3  # KV prompts add no query/stream token
    assert seen == [(20, 22), (20, 22)]  # keys = stream + K
    unshared = _attach(build_backbone("tiny-vit"), share_kv=False)
    assert unshared.kv["image"][0] is not unshared.kv_values["image"][0]


def test_without_prompts_the_model_equals_the_backbone(cleared):
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    base = b.encode_image(pixels)
    m = _attach(b)
    m.eval()
    assert not torch.allclose(b.encode_image(pixels), base, atol=1e-4)
    cleared(b)
    torch.testing.assert_close(b.encode_image(pixels), base, atol=1e-5, rtol=1e-5)


def test_without_kv_prompts_it_is_deep_vpt(cleared):
    """kv_tokens = 0, no pruning, no dropout: exactly VPT-deep with the same prompt values."""
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    m = _attach(b, kv_tokens=0, prune=False, dropout=0.0)
    ours = b.encode_image(pixels)
    cleared(b)
    vpt = VPT(VPTConfig(num_tokens=5, deep=True))
    vpt.attach(b)
    with torch.no_grad():
        for dst, src in zip(vpt.prompts["image"], m.visual, strict=True):
            dst.copy_(src)
    torch.testing.assert_close(b.encode_image(pixels), ours)


def test_pruning_order_and_strided_segments():
    b = build_backbone("tiny-vit")
    m = _attach(
        b, visual_tokens=4, segments=8, min_segments=2, token_prune_percent=50, segment_prune_percent=25
    )
    assert m.prune_counts() == (2, 2)
    token = torch.tensor([0.3, 0.1, 0.3, 0.2])  # ties go to the lower index: prune 1, then 3
    segment = torch.tensor([[5.0, 1, 2, 3, 4, 0, 6, 7]]).repeat(4, 1)  # lowest: segments 5 and 1
    m.prune_by_importance(token, segment)
    assert m.token_keep.tolist() == [True, False, True, False]
    assert m.segment_keep[0].tolist() == [True, False, True, True, True, False, True, True]
    keep = m.channel_keep()  # width 64, 8 segments: channel c belongs to segment c % 8
    for c in range(64):
        assert bool(keep[0, c]) == (c % 8 not in (1, 5))
    assert not bool(keep[1].any())
    assert m.num_trainable_parameters() == 2 * 48 * 2 + 2 * 2 * 5 * 32  # 2 tokens x 48 channels x 2 layers
    for p in m.visual:  # pruned entries are zero in the parameters too
        assert bool((p[~keep] == 0).all()) and bool((p[keep] != 0).all())
    assert not m.token_gate.requires_grad and not m.segment_gate.requires_grad
    assert m.gate().tolist() == keep.float().tolist()
    facts = m.describe()
    json.dumps(facts)
    assert facts["token_keep"] == [1, 0, 1, 0] and facts["pruned"] is True

    contiguous = _attach(
        build_backbone("tiny-vit"),
        visual_tokens=4,
        segments=8,
        segment_prune_percent=25,
        segment_layout="contiguous",
    )
    contiguous.prune_by_importance(token, segment)
    keep = contiguous.channel_keep()
    assert [bool(keep[0, c]) for c in range(64)] == [c // 8 not in (1, 5) for c in range(64)]


def test_pruned_tokens_leave_the_attention(monkeypatch):
    """After pruning, the model equals one built with only the kept tokens (with their gated values),
    its attention sees fewer keys, and it differs from zero-gating the tokens in place."""
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    m = _attach(b, visual_tokens=4, kv_tokens=2, token_prune_percent=50, segment_prune_percent=25)
    m.prune_by_importance(torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.rand(4, 16))
    m.eval()
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(k.shape[2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    dropped = b.encode_image(pixels)
    assert seen == [17 + 2 + 2] * 2  # CLS + 16 patches + 2 kept prompts + 2 KV prompts
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)

    b2 = build_backbone("tiny-vit")
    small = _attach(b2, visual_tokens=2, kv_tokens=2, prune=False)
    small.eval()
    with torch.no_grad():
        for dst, src in zip(small.visual, m.visual, strict=True):
            dst.copy_((src * m.gate())[[1, 3]])
        for dst, src in zip(small.kv["image"], m.kv["image"], strict=True):
            dst.copy_(src)
    torch.testing.assert_close(b2.encode_image(pixels), dropped)

    m.config.drop_pruned = False  # the reference: zero tokens stay in the sequence
    assert not torch.allclose(b.encode_image(pixels), dropped, atol=1e-4)


def test_importance_abs_and_signed(cleared):
    b = build_backbone("tiny-vit")
    head = LinearHead(b.feature_dim, 3)
    data = _data()
    batches = [(data.images[i : i + 4].float() / 255, data.labels[i : i + 4]) for i in (0, 4, 8)]
    scores = {}
    for kind in ("abs", "signed"):
        m = _attach(b, visual_tokens=4, importance=kind)
        torch.manual_seed(5)
        head.fc.reset_parameters()
        model = ImageClassifier(b, head, m)
        before = [p.detach().clone() for p in m.parameters()]
        scores[kind] = m.importance_scores(model, batches)
        assert all(torch.equal(x, y) for x, y in zip(before, m.parameters(), strict=True))
        assert all(p.grad is None for p in m.parameters())
        cleared(b)
    abs_t, abs_s = scores["abs"]
    signed_t, signed_s = scores["signed"]
    assert abs_t.shape == (4,) and abs_s.shape == (4, 16)
    assert bool((abs_t >= signed_t.abs() - 1e-7).all()) and bool((abs_s >= signed_s.abs() - 1e-7).all())
    assert bool((signed_t < 0).any() or (signed_s < 0).any())  # signs are kept in the signed variant
    assert abs_t.sum() > 0


def test_only_method_parameters_require_grad():
    b = build_backbone("tiny-vit")
    m = _attach(b, visual_tokens=3, kv_tokens=2)
    assert not any(p.requires_grad for p in b.parameters())
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {"visual.0", "visual.1", "kv.image.0", "kv.image.1", "token_gate", "segment_gate"}
    frozen = _attach(build_backbone("tiny-vit"), learn_masks=False)
    assert not frozen.token_gate.requires_grad and not frozen.segment_gate.requires_grad


def _data(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, labels)


def _model(seed=0, **cfg):
    b = build_backbone("tiny-vit")
    m = _attach(b, seed=seed, **cfg)
    return ImageClassifier(b, LinearHead(b.feature_dim, 3), m), m


def _stages(tmp_path, model, method, on_step=None):
    protocol = Protocol(epochs=4, batch_size=4, lr=0.05, warmup_epochs=0, grad_clip=1.0)
    cpu = torch.device("cpu")
    run = StageRun("run", 3, protocol, cpu, tmp_path / "ckpt" / "run", on_step)
    train = _data()
    return train_stages(
        run,
        model,
        method,
        model.head,
        lambda trainer, evaluate: fit_classifier(trainer, model, train, evaluate),
        lambda: {"selection": 0.0},
        train_examples=len(train),
        batches=pixel_batches(train, 4, cpu),
    )


def test_stages_train_prune_rewind_and_resume(tmp_path):
    cfg = {"visual_tokens": 4, "kv_tokens": 2, "token_prune_percent": 50, "segment_prune_percent": 50}
    model, m = _model(**cfg)
    out = _stages(tmp_path / "a", model, m)
    stages = out["stages"]
    assert [s["stage"] for s in stages] == ["train", "prune", "rewind"]
    assert [s["trainable_parameters"] for s in stages] == [
        2 * 4 * 64 + 2 * 2 * 2 * 32 + 4 + 64,  # stage 1 with gates
        2 * 2 * 32 + 2 * 2 * 2 * 32,  # 2 tokens x 8 of 16 segments x 4 channels, 2 layers
        2 * 2 * 32 + 2 * 2 * 2 * 32,
    ]
    losses = {s: [h["loss"] for h in out["history"] if h["stage"] == s] for s in ("train", "rewind")}
    assert len(losses["train"]) == len(losses["rewind"]) == 4
    assert losses["train"][-1] < 0.85 * losses["train"][0]
    assert losses["rewind"][-1] < 0.85 * losses["rewind"][0]
    # masks fixed during rewinding, pruned entries still exactly zero after training
    keep = m.channel_keep()
    assert int(m.token_keep.sum()) == 2 and int(m.segment_keep.sum()) == 4 * 8
    assert m.gate().tolist() == keep.float().tolist() and not m.token_gate.requires_grad
    for p in m.visual:
        assert bool((p[~keep] == 0).all()) and bool((p[keep] != 0).all())

    # crash in the rewind stage, resume with a differently initialised model: same final state
    def crash(step, total, loss):
        if total == 12 and step == 8 and not getattr(crash, "done", False) and m2.pruned:
            crash.done = True
            raise RuntimeError("killed")

    model2, m2 = _model(seed=0, **cfg)
    with pytest.raises(RuntimeError, match="killed"):
        _stages(tmp_path / "b", model2, m2, on_step=crash)
    model3, m3 = _model(seed=12, **cfg)
    out3 = _stages(tmp_path / "b", model3, m3, on_step=crash)
    assert out3["train"]["resumed_from_epoch"] == {"stage": "rewind", "epoch": 2}
    for (name, want), got in zip(m.state_dict().items(), m3.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, msg=name)
    for want, got in zip(model.head.state_dict().values(), model3.head.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want)
    assert [s["trainable_parameters"] for s in out3["stages"]] == [s["trainable_parameters"] for s in stages]


def test_rewind_starts_fresh_or_keeps():
    """``fresh`` re-initialises prompts and head (deterministic in the seed); ``keep`` does not."""
    from petlbench.methods.base import StageContext

    for mode in ("fresh", "keep"):
        model, m = _model(rewind_init=mode, visual_tokens=4)
        m.prune_by_importance(torch.arange(4.0), torch.rand(4, 16))
        kv_before = m.kv["image"][0].detach().clone()
        head_before = model.head.fc.weight.detach().clone()
        ctx = StageContext(model, m, torch.device("cpu"), 7, lambda: iter(()))
        m.stages()[2].prepare(ctx)
        changed = not torch.equal(kv_before, m.kv["image"][0]) and not torch.equal(
            head_before, model.head.fc.weight
        )
        assert changed == (mode == "fresh")
        if mode == "fresh":
            kv_fresh = m.kv["image"][0].detach().clone()
            m.stages()[2].prepare(ctx)
            assert torch.equal(kv_fresh, m.kv["image"][0])  # prepare is deterministic (resume)
        keep = m.channel_keep()
        assert all(bool((p[~keep] == 0).all()) for p in m.visual)


def test_bench_run_smoke_end_to_end(tmp_path):
    from petlbench.cli import main
    from petlbench.harness.store import Store

    store = tmp_path / "s.sqlite"
    args = ["run", "--method", "e2vpt", "--suite", "smoke", "--backbone", "tiny-vit", "--tasks", "colors"]
    assert main([*args, "--protocol", "epochs=2", "--store", str(store), "--no-fgsm"]) == 0
    (record,) = Store(store).records()
    assert record.status == "finished"
    assert [s["stage"] for s in record.result["stages"]] == ["train", "prune", "rewind"]
    for stage in ("train", "rewind"):
        losses = [h["loss"] for h in record.result["history"] if h["stage"] == stage]
        assert len(losses) == 2 and losses[1] < losses[0]
    facts = record.result["method"]
    assert facts["pruned"] and facts["active_tokens"] == 3  # P = 5, int(2.5) = 2 pruned
    assert record.result["parameters"]["method"] == facts["trainable_parameters"]


def test_bad_options_are_user_errors():
    for options, match in [
        ({"kv_init": "xavier"}, "kv_init"),
        ({"importance": "l1"}, "importance"),
        ({"segment_layout": "random"}, "segment_layout"),
        ({"token_prune_percent": 100}, "token_prune_percent"),
        ({"visual_tokens": 0}, "visual_tokens"),
        ({"min_segments": 17}, "min_segments"),
        ({"rewind_init": "old"}, "rewind_init"),
        ({"dropout": 1.5}, "dropout"),
        ({"tokens": 3}, "no option"),
        ({"visual_tokens": "many"}, "visual_tokens"),
    ]:
        with pytest.raises(UserError, match=match):
            E2VPT(options)
    with pytest.raises(UserError, match="divisible"):
        E2VPT({"segments": 6}).attach(build_backbone("tiny-vit"))
    with pytest.raises(UserError, match="text tower"):
        E2VPT({"text_kv_tokens": 2}).attach(build_backbone("tiny-vit"))
    assert E2VPT({"visual_tokens": "10", "share_kv": "false"}).config == E2VPTConfig(
        visual_tokens=10, share_kv=False
    )
