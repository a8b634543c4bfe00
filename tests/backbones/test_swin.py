"""Swin through the insertion-point API: equal to timm with no method, exact parameter counts and
GMACs on Swin-B, every slot usable per layer (widths and heads differ by stage), methods train."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead
from petlbench.backbones.random_features import random_feature_init
from petlbench.backbones.slots import InputTokens
from petlbench.backbones.swin import build_tiny_swin
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.metrics import accuracy
from petlbench.benchmarks.suites import load_suite
from petlbench.harness.flops import count_macs, image_gmacs
from petlbench.harness.objectives.classification import fit_classifier, predict
from petlbench.harness.trainer import TrainConfig, Trainer
from petlbench.methods.registry import get_method

# Swin-B (swin_base_patch4_window7_224): the numbers below are computed from these alone.
DEPTHS = (2, 2, 18, 2)
DIMS = (128, 256, 512, 1024)
HEADS = (4, 8, 16, 32)
WINDOW, PATCH, MLP_RATIO = 7, 4, 4
LAYER_DIMS = [d for d, n in zip(DIMS, DEPTHS, strict=True) for _ in range(n)]
LAYER_HEADS = [h for h, n in zip(HEADS, DEPTHS, strict=True) for _ in range(n)]
TABLE = (2 * WINDOW - 1) ** 2  # relative position bias entries per head


@pytest.fixture(scope="module")
def swin_b():
    return build_backbone("swin-b", pretrained=False)


def _fresh(backbone):
    """Empty slots and frozen weights again, so one Swin-B serves several methods."""
    backbone.tower("image").clear_slots()
    backbone.freeze()
    return backbone


def _tiny_timm_swin(seed=0):
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    model = SwinTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depths=(2, 2),
        num_heads=(2, 4),
        window_size=2,
        num_classes=0,
        drop_path_rate=0.0,
    )
    random_feature_init(model, seed)
    return model.eval()


def test_tiny_swin_equals_timm_and_shifts_windows_in_both_stages():
    ref = _tiny_timm_swin()
    ours = build_tiny_swin("tiny-swin", seed=0)
    blocks = [blk for stage in ref.layers for blk in stage.blocks]
    assert [blk.shift_size for blk in blocks] == [(0, 0), (1, 1), (0, 0), (1, 1)]
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got, want = ours.encode_image(pixels), ref(pixels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # measured max |diff| ~ 4e-7
    tower = ours.tower("image")
    assert tower.layer_widths == (32, 32, 64, 64)
    assert [tower.layer_heads(i) for i in range(4)] == [2, 2, 4, 4]
    assert (tower.width, tower.heads, tower.depth, ours.feature_dim) == (32, 2, 4, 64)


def test_swin_b_architecture_equals_timm(swin_b):
    ref = swin_b.tower("image").swin  # the wrapped timm model, called through its own forward
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(swin_b.encode_image(pixels), ref(pixels), atol=1e-5, rtol=1e-5)


def test_swin_b_shape_and_parameter_total(swin_b):
    tower = swin_b.tower("image")
    assert tower.depth == sum(DEPTHS) == 24
    assert list(tower.layer_widths) == LAYER_DIMS
    assert [tower.layer_heads(i) for i in range(24)] == LAYER_HEADS
    assert swin_b.kind == "swin" and swin_b.feature_dim == 1024 and swin_b.image_size == 224

    def block(d, h):  # qkv, proj, fc1, fc2 (weights + biases), two LayerNorms, bias table
        return 3 * d * d + 3 * d + d * d + d + 2 * MLP_RATIO * d * d + MLP_RATIO * d + d + 4 * d + TABLE * h

    embed = 3 * PATCH * PATCH * DIMS[0] + DIMS[0] + 2 * DIMS[0]  # conv + its LayerNorm
    merges = sum(2 * 4 * d + 4 * d * 2 * d for d in DIMS[:-1])  # LayerNorm(4d) + Linear(4d -> 2d)
    total = embed + sum(block(d, h) for d, h in zip(LAYER_DIMS, LAYER_HEADS, strict=True)) + merges
    total += 2 * DIMS[-1]  # final LayerNorm
    assert swin_b.num_parameters() == total == 86_743_224


def _count(backbone, method_name, **config):
    method = get_method(method_name)(config)
    method.attach(_fresh(backbone))
    trainable = {id(p): p for p in backbone.parameters() if p.requires_grad}
    trainable |= {id(p): p for p in method.parameters() if p.requires_grad}
    assert {id(p) for p in method.trainable_parameters()} == set(trainable)  # only method params train
    return method.num_trainable_parameters()


def test_swin_b_exact_trainable_parameters(swin_b):
    d_sum = sum(LAYER_DIMS)  # 12,032
    # BitFit (every parameter named *bias*): per block qkv 3d, proj d, fc1 4d, fc2 d, two LN 2d;
    # patch-embed conv + LN, the merging LayerNorms (4d each) and the final LN; plus, by the same
    # substring rule as KMnP/vpt's tinytl-bias, the relative position bias tables.
    biases = 11 * d_sum + 2 * DIMS[0] + sum(4 * d for d in DIMS[:-1]) + DIMS[-1]
    tables = TABLE * sum(LAYER_HEADS)
    assert (biases, tables) == (137_216, 63_544)
    assert _count(swin_b, "bitfit") == biases + tables == 200_760
    # LoRA r = 8 on q and v of the fused qkv: per layer 2 x (A: r x d + B: d x r).
    assert _count(swin_b, "lora", rank=8) == sum(2 * 2 * 8 * d for d in LAYER_DIMS) == 385_024
    # Pfeiffer adapter, bottleneck 8, after every MLP: down d*8 + 8, up 8*d + d.
    assert _count(swin_b, "adapter", dim=8) == sum(2 * d * 8 + 8 + d for d in LAYER_DIMS) == 204_736
    # Prefix tuning, 10 keys and 10 values of each layer's width (heads x d_head = d).
    assert _count(swin_b, "prefix", length=10) == 10 * 2 * d_sum == 240_640
    # VPT deep, 10 tokens per layer of that layer's width; E2VPT P = 10, K = 5 (shared K = V) + gates.
    assert _count(swin_b, "vpt", num_tokens=10, deep=True) == 10 * d_sum == 120_320
    assert _count(swin_b, "e2vpt", visual_tokens=10, kv_tokens=5) == 15 * d_sum + 10 + 10 * 16 == 180_650
    _fresh(swin_b)


def test_swin_b_gmacs_match_fvcore_on_timm(swin_b):
    """fvcore convention of harness/flops.py: 15.4668 GMACs (timm lists 15.4 for this model)."""
    ours = image_gmacs(_fresh(swin_b))
    total, by_op = count_macs(swin_b.tower("image").swin, (torch.zeros(1, 3, 224, 224),))
    assert abs(ours - total / 1e9) < 0.01
    assert abs(ours - 15.47) / 15.47 < 0.02
    assert round(ours, 4) == 15.4668  # conv 0.0193 + LN 0.0369 + linear 15.1058 + attention 0.3049
    assert by_op["matmul"] == 304_869_376  # timm's own q k^T and A v: the same as our SDPA handle


def test_slots_on_swin_are_per_image_and_per_layer():
    """Prompts of every kind on every layer: each image's output depends on that image alone (the
    windows of one image never mix with another's), and masked-out prompt tokens leave entirely."""
    b = build_tiny_swin("tiny-swin", seed=1)
    pixels = torch.randn(3, 3, 32, 32)
    plain = b.encode_image(pixels)
    for name, config in [
        ("vpt", {"num_tokens": 3, "deep": True}),
        ("vpt", {"num_tokens": 2}),
        ("prefix", {"length": 4, "dropout": 0.0}),
        ("adapt", {"image_tokens": 3}),
        ("e2vpt", {"visual_tokens": 4, "kv_tokens": 2, "dropout": 0.0}),
    ]:
        torch.manual_seed(0)
        method = get_method(name)(config)
        method.attach(_fresh(b))
        with torch.no_grad():
            batch = b.encode_image(pixels)
            alone = torch.cat([b.encode_image(pixels[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(batch, plain, atol=1e-4), name
    method.token_keep[[1, 3]] = False  # E2VPT: two of four visual prompts pruned out of the stream
    with torch.no_grad():
        pruned = b.encode_image(pixels)
        for layer, p in enumerate(method.visual):  # the gates are still 1: plain tokens are the same
            b.tower("image").slots[layer].input_tokens = InputTokens(p[[0, 2]])
        fewer = b.encode_image(pixels)
    torch.testing.assert_close(pruned, fewer, atol=1e-5, rtol=1e-5)


def test_lora_merge_and_zero_adapters_on_swin():
    b = build_tiny_swin("tiny-swin", seed=2)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = b.encode_image(pixels)
        adapter = get_method("adapter")({"style": "houlsby"})
        adapter.attach(b)
        torch.testing.assert_close(b.encode_image(pixels), plain)  # zero-initialised up projections
        lora = get_method("lora")({"targets": "q,k,v"})
        lora.attach(_fresh(b))
        for p in lora.lora.parameters():
            p.normal_(0.0, 0.1)
        unmerged = b.encode_image(pixels)
        lora.merge()
        merged = b.encode_image(pixels)
        lora.unmerge()
    assert not torch.allclose(unmerged, plain, atol=1e-4)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.encode_image(pixels), unmerged, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def colors():
    return load_task(load_suite("smoke").task("colors"), None)


@pytest.mark.parametrize("method_name", ["lora", "adapter", "bitfit", "prefix", "linear", "vpt"])
def test_methods_train_on_tiny_swin_and_beat_their_untrained_state(colors, method_name):
    torch.manual_seed(0)
    backbone = build_backbone("tiny-swin")
    config = {"length": 8, "dropout": 0.0} if method_name == "prefix" else {}  # OFA's 100 per window: slow
    method = get_method(method_name)(config)
    method.attach(backbone)
    head = LinearHead(backbone.feature_dim, len(colors.class_names))
    model = ImageClassifier(backbone, head, method)
    owned = {id(p) for p in method.trainable_parameters()} | {id(p) for p in head.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == owned
    selected = {id(p) for p in method.trainable_parameters()}
    before = {k: v.clone() for k, v in backbone.named_parameters()}
    val = colors.split("val")
    untrained = accuracy(predict(model, val, torch.device("cpu"), 256), val.labels)
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=3, batch_size=32, lr=0.1, warmup_epochs=1, grad_clip=1.0, seed=0),
        head=head,
        device=torch.device("cpu"),
    )
    result = fit_classifier(trainer, model, colors.split("train"))
    trained = accuracy(predict(model, val, torch.device("cpu"), 256), val.labels)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert trained > untrained + 10.0, (untrained, trained)
    for name, p in backbone.named_parameters():  # only what the method selected (BitFit) moved
        if id(p) not in selected:
            assert torch.equal(p, before[name]), name


def test_swin_backbones_are_registered_and_pair_with_image_methods():
    from petlbench.backbones.registry import backbone_entries
    from petlbench.errors import UserError

    entries = backbone_entries()
    assert entries["swin-b"].kind == entries["tiny-swin"].kind == "swin"
    assert "swin_base_patch4_window7_224.ms_in22k" in entries["swin-b"].description
    for name in ("vpt", "e2vpt", "prefix", "lora", "adapter", "bitfit", "adapt", "linear", "full"):
        get_method(name).check_compatible("tiny-swin", "swin", ("image",))
    with pytest.raises(UserError, match="needs a clip backbone"):
        get_method("coop").check_compatible("tiny-swin", "swin", ("image",))
