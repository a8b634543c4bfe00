"""Prompt dropout draws one mask per example, as the references do (expand over the batch, then
dropout: KMnP/vpt src/models/vit_prompt/vit.py:L82, L114-115; ChengHan111/E2VPT
src/models/vit_prompt/vit_prompt_VK.py:L134, L183-184); eval mode and dropout 0 leave prompts shared."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.methods.e2vpt import E2VPT
from petlbench.methods.vpt import VPT


def _same_images(n=4):
    return torch.rand(1, 3, 32, 32).expand(n, -1, -1, -1).contiguous()


def _rows_differ(out):
    return not any(torch.allclose(out[0], out[i], atol=1e-6) for i in range(1, out.shape[0]))


def _rows_equal(out):
    return all(torch.allclose(out[0], out[i], atol=1e-6, rtol=0) for i in range(1, out.shape[0]))


CASES = [
    ("vpt", "tiny-vit", {"num_tokens": 4, "deep": True}),
    ("vpt", "tiny-vit", {"num_tokens": 4, "deep": False}),
    ("vpt", "tiny-clip", {"num_tokens": 4, "deep": True}),  # MaPLe layout: end, before ln_pre
    ("vpt", "tiny-clip", {"num_tokens": 4, "deep": True, "tower": "both"}),
    ("e2vpt", "tiny-vit", {"visual_tokens": 4, "kv_tokens": 2}),
    ("e2vpt", "tiny-clip", {"visual_tokens": 4, "kv_tokens": 2, "prune": False}),
]


def _method(name, options):
    return (VPT if name == "vpt" else E2VPT)(options)


@pytest.mark.parametrize(("name", "backbone", "options"), CASES)
def test_identical_images_get_different_prompt_noise_in_train_mode(name, backbone, options):
    torch.manual_seed(0)
    b = build_backbone(backbone)
    m = _method(name, {**options, "dropout": 0.5})
    m.attach(b)
    pixels = _same_images()
    m.train()
    assert _rows_differ(b.encode_image(pixels))
    if "tower" in options:
        ids = b.tokenize(["a red circle"] * 4)
        assert _rows_differ(b.encode_text(ids))
    m.eval()
    assert _rows_equal(b.encode_image(pixels))


@pytest.mark.parametrize(("name", "backbone", "options"), CASES)
def test_without_dropout_identical_images_stay_identical(name, backbone, options):
    torch.manual_seed(0)
    b = build_backbone(backbone)
    m = _method(name, {**options, "dropout": 0.0})
    m.attach(b)
    m.train()
    assert _rows_equal(b.encode_image(_same_images()))
    for s in b.tower("image").slots:  # shared tokens stay one (n, d) set, expanded as a view
        if s.input_tokens is not None:
            assert s.input_tokens.for_batch(4).stride(0) == 0


def test_eval_output_equals_the_dropout_free_model():
    torch.manual_seed(0)
    b = build_backbone("tiny-vit")
    m = VPT({"num_tokens": 4, "deep": True, "dropout": 0.5})
    m.attach(b)
    m.eval()
    pixels = torch.rand(3, 3, 32, 32)
    dropped = b.encode_image(pixels)
    b.tower("image").clear_slots()
    torch.manual_seed(0)
    plain = VPT({"num_tokens": 4, "deep": True})
    plain.attach(b)
    torch.testing.assert_close(b.encode_image(pixels), dropped)


def test_seeded_train_forward_is_deterministic():
    """The trainer seeds torch per epoch, so a resumed epoch draws the same per-example masks."""
    b = build_backbone("tiny-clip")
    m = VPT({"num_tokens": 4, "deep": True, "dropout": 0.3})
    m.attach(b)
    m.train()
    pixels = torch.rand(5, 3, 32, 32)
    torch.manual_seed(7)
    first = b.encode_image(pixels)
    torch.manual_seed(7)
    torch.testing.assert_close(b.encode_image(pixels), first, atol=0, rtol=0)


def test_e2vpt_gates_apply_to_every_example_after_dropout():
    torch.manual_seed(0)
    b = build_backbone("tiny-vit")
    m = E2VPT({"visual_tokens": 4, "kv_tokens": 2, "dropout": 0.5, "segments": 8, "drop_pruned": False})
    m.attach(b)
    m.prune_by_importance(torch.tensor([0.3, 0.1, 0.3, 0.2]), torch.arange(32.0).view(4, 8))
    m.train()
    keep = m.channel_keep()
    for layer, s in enumerate(b.tower("image").slots):
        tokens = s.input_tokens.for_batch(6)
        assert tokens.shape == (6, 4, 64)
        assert bool((tokens[:, ~keep] == 0).all())  # pruned entries stay zero for every example
        kept = tokens[:, keep]
        assert not any(torch.equal(kept[0] == 0, kept[i] == 0) for i in range(1, 6))  # own masks
        m.eval()
        torch.testing.assert_close(s.input_tokens.for_batch(6)[2], m.visual[layer] * m.gate())
        m.train()
    dropped = E2VPT({"visual_tokens": 4, "kv_tokens": 2, "dropout": 0.5})  # drop_pruned: tokens leave
    dropped.attach(build_backbone("tiny-vit"))
    dropped.prune_by_importance(torch.tensor([0.3, 0.1, 0.3, 0.2]), torch.zeros(4, 16))
    dropped.train()
    assert dropped._towers["image"].slots[0].input_tokens.for_batch(3).shape == (3, 2, 64)


@pytest.mark.parametrize("name", ["vpt", "e2vpt"])
def test_swin_deep_prompts_share_one_mask_per_batch_as_the_reference(name):
    """KMnP/vpt swin_transformer.py:L169-170 (first prompts: expand, then dropout) and L255 (deep
    prompts: dropout on the parameter, then expand); E2VPT's Swin code does the same (L233-234, L334)."""
    b = build_backbone("tiny-swin")
    options = {"num_tokens": 3, "deep": True} if name == "vpt" else {"visual_tokens": 3}
    m = _method(name, {**options, "dropout": 0.5})
    m.attach(b)
    slots = [s.input_tokens for s in b.tower("image").slots]
    assert [s.per_example_dropout for s in slots] == [True] + [False] * (len(slots) - 1)
    m.train()
    torch.manual_seed(0)
    first, deep = slots[0].for_batch(4), slots[1].for_batch(4)
    assert _rows_differ(first) and _rows_equal(deep)
