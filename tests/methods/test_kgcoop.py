"""KgCoOp and the extra-loss / frozen-teacher interface: the reference's count on CLIP ViT-B/16, its
forward and loss against a transcription of htyao89/KgCoOp trainers/kgcoop.py, the trainer adding
the term, and the frozen backbone the teacher reads."""

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.errors import UserError
from petlbench.methods import get_method
from petlbench.methods.base import LossContext, frozen_backbone, frozen_class_features
from petlbench.methods.kgcoop import KgCoOp, KgCoOpConfig
from petlbench.methods.vpt import VPT

NAMES = ["red", "green", "light_blue"]
TEMPLATE = "a photo of a {}."


@pytest.fixture()
def tiny_clip():
    return build_backbone("tiny-clip")


def _attach(backbone, seed=0, **cfg):
    torch.manual_seed(seed)
    method = KgCoOp(cfg)
    method.attach(backbone)
    return method, method.make_head(backbone, NAMES, [TEMPLATE])


def test_registered_with_reference_defaults():
    assert get_method("kgcoop") is KgCoOp
    c = KgCoOpConfig()
    # KgCoOp scripts/run.sh L2-11 (w 8.0); configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml L33 +
    # trainers/kgcoop.py L96-98 (CTX_INIT True -> "a photo of a", 4 tokens)
    assert (c.weight, c.ctx_init, c.n_ctx, c.template) == (8.0, "a photo of a", 4, "{}.")
    assert KgCoOp.suggested_protocol["batch_size"] == 128 and KgCoOp.suggested_protocol["epochs"] == 100
    with pytest.raises(UserError, match="clip"):
        KgCoOp.check_compatible("tiny-vit", "vit", ("image",))
    with pytest.raises(UserError, match="hand_template"):
        KgCoOp({"hand_template": "no slot"})


def test_parameter_count_on_clip_b16(clip_b16):
    """methods.md 9.1: "KgCoOp 2,048" = 4 x 512 (only ``ctx`` trains: kgcoop.py L268-271)."""
    method, _ = _attach(clip_b16)
    assert method.num_trainable_parameters() == 2_048
    assert [n for n, p in method.named_parameters() if p.requires_grad] == ["ctx"]


def _reference_text(backbone, ctx, names):
    """kgcoop.py L159-191 + TextEncoder L68-79: [SOS] ctx [suffix of "a photo of a {name}."] + pos emb."""
    text = backbone.tower("text")
    prompts = ["a photo of a " + n.replace("_", " ") + "." for n in names]
    ids = backbone.tokenize(prompts)
    emb = text.token_embedding(ids)
    ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    x = torch.cat([emb[:, :1], ctx, emb[:, 1 + ctx.shape[1] :]], dim=1)
    x = x + text.positional_embedding
    return F.normalize(text.encode_embeddings(x, ids.argmax(dim=-1)), dim=-1)


def _reference_teacher(backbone, names):
    """kgcoop.py L136-146: the hand-crafted prompts through the frozen CLIP, normalised."""
    ids = backbone.tokenize([TEMPLATE.format(n.replace("_", " ")) for n in names])
    return F.normalize(backbone.encode_text(ids), dim=-1)


def test_forward_and_loss_match_the_reference(tiny_clip):
    method, head = _attach(tiny_clip)
    with torch.no_grad():
        method.ctx.add_(torch.randn_like(method.ctx) * 0.1)  # away from the phrase init
    torch.manual_seed(1)
    features, labels = torch.randn(6, tiny_clip.feature_dim), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = head(features)
    text = _reference_text(tiny_clip, method.ctx, NAMES)
    want = tiny_clip.logit_scale.exp() * F.normalize(features, dim=-1) @ text.t()
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    ctx = LossContext(logits, labels, features, head, torch.arange(6), 0, 0, lambda: features)
    loss = F.cross_entropy(logits, labels) + method.extra_loss(ctx)
    old = _reference_teacher(tiny_clip, NAMES)
    score = 1.0 - torch.nn.CosineSimilarity(dim=1, eps=1e-07)(text, old).mean()  # kgcoop.py L238-241
    torch.testing.assert_close(loss, F.cross_entropy(want, labels) + 8.0 * score, atol=1e-5, rtol=1e-5)
    assert float(score.detach()) > 1e-4  # the penalty is live, not a zero that always matches
    torch.testing.assert_close(head.teacher_text, old, atol=1e-6, rtol=1e-6)


def test_trainer_adds_the_extra_loss(tiny_clip):
    """One full-batch epoch at lr 0: the recorded loss is CE + w * (1 - mean cos), on the trainer's path."""
    from petlbench.benchmarks.data import TensorImageDataset
    from petlbench.harness.objectives.classification import fit_classifier
    from petlbench.harness.trainer import TrainConfig, Trainer

    method, head = _attach(tiny_clip, weight=3.0)
    model = ImageClassifier(tiny_clip, head, method)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(9) % 3
    data = TensorImageDataset(images, labels)
    cfg = TrainConfig(epochs=1, batch_size=9, lr=0.0, seed=0)
    trainer = Trainer(model, method, cfg, head=head, device=torch.device("cpu"))
    history = fit_classifier(trainer, model, data, cache_features=True).history
    with torch.no_grad():
        logits = model(images.float() / 255)
        text = _reference_text(tiny_clip, method.ctx, NAMES)
        score = 1.0 - F.cosine_similarity(text, _reference_teacher(tiny_clip, NAMES), dim=1).mean()
        want = F.cross_entropy(logits, labels) + 3.0 * score
    assert history[0]["loss"] == pytest.approx(float(want), abs=1e-5)


def test_frozen_backbone_and_frozen_class_features(tiny_clip):
    pixels = torch.rand(2, 3, 32, 32)
    plain = tiny_clip.encode_image(pixels)
    plain_text = frozen_class_features(tiny_clip, NAMES, [TEMPLATE])
    vpt = VPT({"tower": "both", "num_tokens": 2})
    vpt.attach(tiny_clip)
    prompted = tiny_clip.encode_image(pixels)
    assert not torch.allclose(prompted, plain, atol=1e-4)
    slots = tiny_clip.tower("image").slots
    with frozen_backbone(tiny_clip):
        torch.testing.assert_close(tiny_clip.encode_image(pixels), plain)
    assert tiny_clip.tower("image").slots is slots  # restored
    torch.testing.assert_close(tiny_clip.encode_image(pixels), prompted)
    # the teacher ignores the text prompts too, and equals the reference's hand-crafted features
    torch.testing.assert_close(frozen_class_features(tiny_clip, NAMES, [TEMPLATE]), plain_text)
    tiny_clip.tower("image").clear_slots()
    tiny_clip.tower("text").clear_slots()
    torch.testing.assert_close(plain_text, _reference_teacher(tiny_clip, NAMES), atol=1e-6, rtol=1e-6)
