"""PromptSRC: the reference's count on CLIP ViT-B/16, its self-regulating loss on a fixed batch
against a transcription of muzairkhattak/PromptSRC trainers/promptsrc.py L185-313 (directly and on
the trainer's path, frozen image features included), and Gaussian prompt aggregation (L264-335)."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.methods import get_method
from petlbench.methods.base import LossContext, frozen_backbone
from petlbench.methods.promptsrc import (
    IMAGENET_TEMPLATES,
    GaussianPromptAggregation,
    PromptSRC,
    PromptSRCConfig,
    gpa_weights,
)

NAMES = ["red", "green", "light_blue"]


def test_registered_with_reference_defaults():
    assert get_method("promptsrc") is PromptSRC
    c = PromptSRCConfig()  # configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml L34-43
    assert (c.n_ctx, c.vision_tokens, c.depth, c.vision_depth) == (4, 4, 9, 9)
    assert (c.text_loss_weight, c.image_loss_weight, c.gpa_mean, c.gpa_std) == (25.0, 10.0, 15.0, 1.0)
    assert PromptSRC.suggested_protocol["lr"] == 2.5e-3 and PromptSRC.suggested_protocol["epochs"] == 20
    assert len(IMAGENET_TEMPLATES) == 60 and IMAGENET_TEMPLATES[0] == "a photo of a {}."


def test_count_on_clip_b16(clip_b16):
    """9 layers x 4 tokens x (512 + 768) = 46,080."""
    method = PromptSRC()
    try:
        method.attach(clip_b16)
        assert method.num_trainable_parameters() == 46_080
    finally:
        for t in clip_b16.towers.values():
            t.clear_slots()


def _frozen(backbone, pixels):
    """Before any prompt: the frozen image features and the 60-template teacher (promptsrc.py L120-128)."""
    with torch.no_grad():
        zs = F.normalize(backbone.encode_image(pixels), dim=-1)
        names = [n.replace("_", " ") for n in NAMES]
        prompts = [[t.replace("{}", n) for n in names] for t in IMAGENET_TEMPLATES]
        feats = [backbone.encode_text(backbone.tokenize(p)) for p in prompts]
        teacher = F.normalize(torch.stack(feats, dim=1).mean(dim=1), dim=-1)
    return zs, teacher


def _reference_loss(logits, labels, text, teacher, image, zs, scale):
    """promptsrc.py L297-313."""
    zs_logits = scale * zs @ teacher.t()
    kl = (
        F.kl_div(
            F.log_softmax(logits / 1, dim=1),
            F.log_softmax(zs_logits / 1, dim=1),
            reduction="sum",
            log_target=True,
        )
        * (1 * 1)
        / logits.numel()
    )
    return F.cross_entropy(logits, labels) + kl + F.l1_loss(text, teacher) * 25 + F.l1_loss(image, zs) * 10


def _attached(backbone):
    torch.manual_seed(0)
    method = PromptSRC({"depth": 2, "vision_depth": 2})
    method.attach(backbone)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return method, method.make_head(backbone, NAMES, [])


def test_loss_on_a_fixed_batch_matches_the_reference():
    backbone = build_backbone("tiny-clip")
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 1])
    zs, teacher = _frozen(backbone, pixels)
    method, head = _attached(backbone)
    torch.testing.assert_close(head.teacher_text, teacher, atol=1e-6, rtol=1e-6)
    features = backbone.encode_image(pixels)
    logits = head(features)
    with pytest.raises(AssertionError):  # the prompted features differ from the frozen ones
        torch.testing.assert_close(F.normalize(features, dim=-1), zs)
    with frozen_backbone(backbone):
        frozen_now = backbone.encode_image(pixels)
    ctx = LossContext(logits, labels, features, head, torch.arange(4), 0, 0, lambda: frozen_now)
    got = F.cross_entropy(logits, labels) + method.extra_loss(ctx)
    text = head.last_text
    want = _reference_loss(
        logits, labels, text, teacher, F.normalize(features, dim=-1), zs, backbone.logit_scale.exp()
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_trainer_path_uses_frozen_image_features():
    """One full-batch epoch at lr 0 (GPA with one epoch keeps the prompts): the recorded loss is the
    reference's total, with the frozen tower's features computed by the trainer."""
    from petlbench.benchmarks.data import TensorImageDataset
    from petlbench.harness.objectives.classification import fit_classifier
    from petlbench.harness.trainer import TrainConfig, Trainer

    backbone = build_backbone("tiny-clip")
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(6) % 3
    pixels = images.float() / 255
    model_mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    model_std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    zs, teacher = _frozen(backbone, (pixels - model_mean) / model_std)
    method, head = _attached(backbone)
    model = ImageClassifier(backbone, head, method)
    cfg = TrainConfig(epochs=1, batch_size=6, lr=0.0, seed=0)
    trainer = Trainer(model, method, cfg, head=head, device=torch.device("cpu"), callbacks=method.callbacks())
    history = fit_classifier(trainer, model, TensorImageDataset(images, labels)).history
    with torch.no_grad():
        features = model.features(pixels)
        logits = head(features)
        want = _reference_loss(
            logits,
            labels,
            head.last_text,
            teacher,
            F.normalize(features, dim=-1),
            zs,
            backbone.logit_scale.exp(),
        )
    assert history[0]["loss"] == pytest.approx(float(want), abs=1e-5)


def test_gaussian_prompt_aggregation():
    w = gpa_weights(20, 15.0, 1.0)
    g = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert w == pytest.approx([x / sum(g) for x in g]) and sum(w) == pytest.approx(1.0)
    assert max(range(20), key=w.__getitem__) == 14  # epoch 15 weighs most
    method = PromptSRC({"gpa_mean": 2.0, "gpa_std": 1.0})
    method.attach(build_backbone("tiny-clip"))
    cb = GaussianPromptAggregation(method)
    weights = gpa_weights(3, 2.0, 1.0)
    for epoch in range(3):
        with torch.no_grad():
            for p in method.parameters():
                p.fill_(float(epoch + 1))
        cb.on_epoch_end(SimpleNamespace(epoch=epoch, epochs=3))
    want = sum((e + 1) * weights[e] for e in range(3))
    assert all(torch.allclose(p, torch.full_like(p, want)) for p in method.parameters())
    restored = GaussianPromptAggregation(method)
    restored.load_state_dict(cb.state_dict())
    assert all(torch.equal(restored.total[k], cb.total[k]) for k in cb.total)
