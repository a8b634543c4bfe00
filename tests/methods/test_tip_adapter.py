"""Tip-Adapter and Tip-Adapter-F: the cache against the closed form of gaopengcuhk/Tip-Adapter
(main.py L39-42, utils.py L38-62), the reference's alpha/beta grid and search rule, the -F count on
CLIP ViT-B/16, and the training-free path through the harness (no optimiser, head from the data)."""

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.errors import UserError
from petlbench.methods import get_method
from petlbench.methods.base import StageContext
from petlbench.methods.tip_adapter import TipAdapter, TipAdapterConfig, TipAdapterF, search_grid

NAMES = ["red", "green", "blue"]
TEMPLATE = "a photo of a {}."


def _model(cls, **cfg):
    backbone = build_backbone("tiny-clip")
    method = cls(cfg)
    method.attach(backbone)
    head = method.make_head(backbone, NAMES, [TEMPLATE])
    return ImageClassifier(backbone, head, method), method


def _few_shot(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.arange(n) % 3


def _ctx(model, method, pixels, labels, selection=None):
    batches = lambda: iter([(pixels[:8], labels[:8]), (pixels[8:], labels[8:])])  # noqa: E731
    sel = (lambda: iter([selection])) if selection is not None else None
    return StageContext(model, method, torch.device("cpu"), 1, batches, {}, sel)


def test_registered_with_reference_defaults():
    assert get_method("tip-adapter") is TipAdapter and get_method("tip-adapter-f") is TipAdapterF
    c = TipAdapterConfig()  # Tip-Adapter configs/imagenet.yaml L17-31, main.py L174
    assert (c.init_alpha, c.init_beta, c.augment_epochs, c.crop_scale_min) == (1.17, 1.0, 10, 0.5)
    assert (c.search_scale_beta, c.search_scale_alpha) == (7, 3)
    assert (c.search_steps_beta, c.search_steps_alpha) == (200, 20)
    assert not TipAdapter.trains and TipAdapterF.trains
    suggested = TipAdapterF.suggested_protocol
    assert suggested["optimizer"] == "adamw" and suggested["lr"] == 1e-3 and suggested["batch_size"] == 256
    assert [s.name for s in TipAdapter().stages()] == ["cache", "search"]
    assert [s.name for s in TipAdapterF().stages()] == ["cache", "train", "search"]
    with pytest.raises(UserError, match="clip"):
        TipAdapter.check_compatible("tiny-vit", "vit", ("image",))


def test_search_grid_is_the_reference_grid():
    # utils.py L103-104
    beta = search_grid(7, 200)
    assert len(beta) == 200 and beta[0] == pytest.approx(0.1) and beta[1] == pytest.approx(0.1345)
    assert beta[-1] == pytest.approx(199 * 6.9 / 200 + 0.1)
    assert search_grid(3, 20)[:3] == pytest.approx([0.1, 0.245, 0.39])


def test_training_free_logits_equal_the_closed_form():
    model, method = _model(TipAdapter, augment_epochs=0, init_alpha=2.0, init_beta=3.0)
    pixels, labels = _few_shot()
    method.build_cache(_ctx(model, method, pixels, labels))
    with torch.no_grad():
        keys = F.normalize(model.features(pixels), dim=-1)  # utils.py L59-61 (one view)
        values = F.one_hot(labels, 3).float()  # utils.py L62
        ids = model.backbone.tokenize([TEMPLATE.format(n) for n in NAMES])
        w = F.normalize(model.backbone.encode_text(ids), dim=-1)
        test = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
        f = F.normalize(model.features(test), dim=-1)
        want = 100.0 * f @ w.t() + 2.0 * (-(3.0 - 3.0 * f @ keys.t())).exp() @ values  # main.py L39-42
        torch.testing.assert_close(model(test), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(method.cache_keys, keys, atol=1e-6, rtol=1e-6)
    assert method.num_trainable_parameters() == 0


def test_augmented_cache_is_the_mean_of_views_and_seeded():
    model, method = _model(TipAdapter, augment_epochs=3)
    pixels, labels = _few_shot()
    method.build_cache(_ctx(model, method, pixels, labels))
    first = method.cache_keys.clone()
    assert first.shape == (12, model.backbone.feature_dim)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(12))
    method.build_cache(_ctx(model, method, pixels, labels))
    torch.testing.assert_close(method.cache_keys, first)  # the seed fixes the views
    plain, _ = _model(TipAdapter, augment_epochs=0)
    plain.method.build_cache(_ctx(plain, plain.method, pixels, labels))
    assert not torch.allclose(plain.method.cache_keys, first, atol=1e-4)


def test_search_picks_the_first_best_on_the_grid():
    model, method = _model(TipAdapter, augment_epochs=0, search_steps_beta=7, search_steps_alpha=5)
    pixels, labels = _few_shot()
    method.build_cache(_ctx(model, method, pixels, labels))
    val_pixels, val_labels = _few_shot(9, seed=3)
    method.search(_ctx(model, method, pixels, labels, (val_pixels, val_labels)))
    with torch.no_grad():
        f = F.normalize(model.features(val_pixels), dim=-1)
        head = model.head
        best_acc, best = 0.0, (0.0, 0.0)
        for beta in search_grid(7, 7):  # utils.py L109-125: beta outer, alpha inner, strict >
            for alpha in search_grid(3, 5):
                logits = head.clip_logits(f) + alpha * head.cache_logits(f, beta)
                acc = 100 * float((logits.argmax(-1) == val_labels).float().mean())
                if acc > best_acc:
                    best_acc, best = acc, (alpha, beta)
    assert (float(method.alpha), float(method.beta)) == pytest.approx(best)


def test_tip_adapter_f_count_on_clip_b16(clip_b16):
    """The keys of 16 shots x 1,000 ImageNet classes at width 512: 8,192,000 (main.py L69-70)."""
    method = TipAdapterF()
    method.attach(clip_b16)
    keys = F.normalize(torch.randn(16_000, clip_b16.feature_dim), dim=-1)
    method._set_cache(keys, F.one_hot(torch.arange(16_000) % 1000, 1000).float())
    assert method.num_trainable_parameters() == 8_192_000
    assert torch.equal(method.tuned_keys.detach(), keys) and method.tuned_keys.requires_grad


def test_state_round_trip_restores_the_cache():
    model, method = _model(TipAdapterF, augment_epochs=0)
    pixels, labels = _few_shot()
    method.build_cache(_ctx(model, method, pixels, labels))
    state = method.method_state()
    fresh = TipAdapterF({"augment_epochs": 0})
    fresh.load_method_state(state)
    assert torch.equal(fresh.tuned_keys.detach(), method.tuned_keys.detach())
    assert torch.equal(fresh.cache_values, method.cache_values)


def test_bench_run_tip_adapter_trains_nothing(tmp_path):
    from petlbench.cli import main
    from petlbench.harness.store import Store

    store = tmp_path / "s.sqlite"
    args = ["run", "--method", "tip-adapter", "--suite", "smoke", "--backbone", "tiny-clip"]
    args += ["--tasks", "colors"]
    assert main([*args, "--set", "augment_epochs=1", "--store", str(store), "--no-fgsm"]) == 0
    (record,) = Store(store).records()
    assert record.status == "finished"
    assert [s["stage"] for s in record.result["stages"]] == ["cache", "search"]
    assert record.result["history"] == []  # no epoch was trained
    assert record.result["method"]["cache_size"] == record.result["train"]["train_examples"]
