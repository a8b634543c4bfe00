"""CoOp and CoCoOp: exact counts on CLIP ViT-B/16, context init, prompt layout against the reference's
concatenation, zero-shot equivalence, image conditioning, learning, and `bench run` on the smoke suite."""

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import TextClassifierHead
from petlbench.errors import UserError
from petlbench.methods import get_method
from petlbench.methods.cocoop import CoCoOp, CoCoOpConfig
from petlbench.methods.coop import CoOp, CoOpConfig

NAMES = ["red", "green", "light blue"]


def _attach(cls, backbone, names=NAMES, seed=0, **cfg):
    torch.manual_seed(seed)
    method = cls(cfg)
    method.attach(backbone)
    return method, method.make_head(backbone, names, [])


@pytest.fixture(scope="module")
def tiny_clip():
    return build_backbone("tiny-clip")


def test_registered_and_reference_defaults():
    assert get_method("coop") is CoOp and get_method("cocoop") is CoCoOp
    c = CoOpConfig()
    assert (c.n_ctx, c.ctx_init, c.csc, c.class_token_position, c.template) == (16, "", False, "end", "{}.")
    assert c.init_std == 0.02
    cc = CoCoOpConfig()
    assert (cc.n_ctx, cc.ctx_init, cc.meta_net_ratio, cc.template) == (4, "a photo of a", 16, "{}.")
    assert CoCoOp.needs_text_encoder_per_image and not CoOp.needs_text_encoder_per_image
    assert CoOp.suggested_protocol["lr"] == 2e-3 and CoOp.suggested_protocol["batch_size"] == 32
    assert CoCoOp.suggested_protocol["batch_size"] == 1 and CoCoOp.suggested_protocol["epochs"] == 10
    for cls in (CoOp, CoCoOp):
        with pytest.raises(UserError, match="clip"):
            cls.check_compatible("tiny-vit", "vit", ("image",))


def test_parameter_counts_on_clip_b16(clip_b16):
    """methods.md 3.4 / 9.1: 512 M unified, 512 M C class-specific, 512 M + 33,312 for CoCoOp."""
    counts = {}
    for key, cls, cfg, names in [
        ("coop M16", CoOp, {}, NAMES),
        ("coop M4", CoOp, {"n_ctx": 4}, NAMES),
        ("coop phrase", CoOp, {"ctx_init": "a photo of a"}, NAMES),
        ("coop csc imagenet", CoOp, {"csc": True}, [f"class {i}" for i in range(1000)]),
        ("cocoop M4", CoCoOp, {}, NAMES),
        ("cocoop M8", CoCoOp, {"ctx_init": "", "n_ctx": 8}, NAMES),
        ("cocoop M16", CoCoOp, {"ctx_init": "", "n_ctx": 16}, NAMES),
    ]:
        method, _ = _attach(cls, clip_b16, names, **cfg)
        assert method.num_trainable_parameters() == sum(p.numel() for p in method.parameters())
        counts[key] = method.num_trainable_parameters()
    assert counts == {
        "coop M16": 8_192,
        "coop M4": 2_048,
        "coop phrase": 2_048,
        "coop csc imagenet": 8_192_000,
        "cocoop M4": 35_360,
        "cocoop M8": 37_408,
        "cocoop M16": 41_504,
    }
    method, _ = _attach(CoCoOp, clip_b16)
    assert [tuple(p.shape) for p in method.meta_net.parameters()] == [(32, 512), (32,), (512, 32), (512,)]
    assert not any(p.requires_grad for p in clip_b16.parameters())


def test_context_init(tiny_clip):
    text = tiny_clip.tower("text")
    ids = tiny_clip.tokenize(["a photo of a"])[0, 1:5]
    want = text.token_embedding(ids).detach()
    method, _ = _attach(CoOp, tiny_clip, ctx_init="a photo of a", n_ctx=16)
    assert method.n_ctx == 4 and torch.equal(method.ctx.detach(), want)  # M = the phrase's length
    method, _ = _attach(CoOp, tiny_clip, ctx_init="a_photo_of_a")  # underscores are spaces
    assert torch.equal(method.ctx.detach(), want)
    method, _ = _attach(CoOp, tiny_clip, ctx_init="a photo of a", csc=True)
    assert method.ctx.shape == (3, 4, 64) and all(torch.equal(c, want) for c in method.ctx.detach())
    method, _ = _attach(CoOp, tiny_clip, n_ctx=16)
    values = method.ctx.detach()
    assert values.shape == (16, 64) and abs(values.std().item() - 0.02) < 0.002 and abs(values.mean()) < 0.002
    cocoop, _ = _attach(CoCoOp, tiny_clip)
    assert cocoop.n_ctx == 4 and torch.equal(cocoop.ctx.detach(), want)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompts_match_the_reference_concatenation(tiny_clip, position):
    """[SOS][ctx][CLASS . EOT] (end), [SOS][ctx[:M//2]][CLASS][ctx[M//2:]][. EOT] (middle),
    [SOS][CLASS][ctx][. EOT] (front), plus position embeddings on every token, context included."""
    method, head = _attach(CoOp, tiny_clip, n_ctx=4, class_token_position=position, csc=True)
    text = tiny_clip.tower("text")
    blank = tiny_clip.tokenize([""])[0]
    sos, eot = blank[:1], blank[1:2]
    dot = tiny_clip.tokenize(["."])[0, 1:2]
    spliced = head.splice(method.ctx)
    for c, name in enumerate(NAMES):
        ids = tiny_clip.tokenize([name])[0]
        name_ids = ids[1 : int(ids.argmax())]
        ctx = method.ctx[c]
        e = text.token_embedding
        parts = {
            "end": [e(sos), ctx, e(name_ids), e(dot), e(eot)],
            "middle": [e(sos), ctx[:2], e(name_ids), ctx[2:], e(dot), e(eot)],
            "front": [e(sos), e(name_ids), ctx, e(dot), e(eot)],
        }[position]
        manual = torch.cat(parts)
        manual = manual + text.positional_embedding[: manual.shape[0]]
        torch.testing.assert_close(spliced[c, : manual.shape[0]], manual)
        assert int(head.eot[c]) == manual.shape[0] - 1
        feats = text.encode_embeddings(manual.unsqueeze(0), torch.tensor([manual.shape[0] - 1]))
        torch.testing.assert_close(
            head.class_features()[c], F.normalize(feats, dim=-1)[0], atol=1e-5, rtol=1e-5
        )


def test_zero_context_with_a_template_equals_zero_shot_clip(tiny_clip):
    template = "a photo of a {}."
    _, head = _attach(CoOp, tiny_clip, n_ctx=0, template=template)
    zero_shot = TextClassifierHead(tiny_clip, NAMES, [template])
    features = torch.randn(5, tiny_clip.feature_dim)
    torch.testing.assert_close(head(features), zero_shot(features), atol=1e-5, rtol=1e-5)


def test_cocoop_text_features_depend_on_the_image(tiny_clip):
    method, head = _attach(CoCoOp, tiny_clip)
    features = torch.randn(3, tiny_clip.feature_dim)
    image = F.normalize(features, dim=-1)
    prompts = head.prompts(image)
    assert prompts.shape[:2] == (3, 3)
    text = head.encode(prompts.flatten(0, 1)).view(3, 3, -1)
    assert not torch.allclose(text[0], text[1], atol=1e-4) and not torch.allclose(text[1], text[2], atol=1e-4)
    logits = head(features)
    # the reference: one text-encoder pass per image with ctx + pi(x_i) on every context token
    scale = tiny_clip.logit_scale.exp()
    for i in range(3):
        shift = method.meta_net(image[i : i + 1])  # pi(x) of the L2-normalised feature
        ctx = method.ctx + shift
        text_i = head.encode(head.splice(ctx.unsqueeze(0)))
        torch.testing.assert_close(logits[i], scale * text_i @ image[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(3.0 * features), logits, atol=1e-5, rtol=1e-5)  # normalised input
    head.max_prompts_per_call = 4  # one image (3 prompts) per tower call: same logits
    torch.testing.assert_close(head(features), logits, atol=1e-5, rtol=1e-5)
    # CoOp's text features do not depend on the image
    _, coop_head = _attach(CoOp, tiny_clip, ctx_init="a photo of a")
    torch.testing.assert_close(coop_head(features[:1]), coop_head(features)[:1])


def test_only_the_context_trains_and_eval_features_are_cached(tiny_clip):
    method, head = _attach(CoOp, tiny_clip)
    assert [n for n, p in method.named_parameters() if p.requires_grad] == ["ctx"]
    assert not list(head.parameters())  # the context belongs to the method (counted there)
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    with torch.no_grad():
        first = head.class_features()
        assert head.class_features() is first
        method.ctx.add_(0.1)
        assert not torch.allclose(head.class_features(), first)
    cocoop, _ = _attach(CoCoOp, tiny_clip)
    names = [n for n, p in cocoop.named_parameters() if p.requires_grad]
    assert names == ["ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"]


def _colors():
    from petlbench.benchmarks.datasets import load_task
    from petlbench.benchmarks.suites import load_suite
    from petlbench.harness.data import materialize

    task = load_suite("smoke").task("colors")
    data = load_task(task, None)
    return materialize(data.split("train"), 32), list(task.class_names or data.class_names)


@pytest.mark.parametrize(
    ("cls", "cfg", "drop"),
    [(CoOp, {"n_ctx": 4}, 0.01), (CoOp, {"n_ctx": 4, "csc": True}, 0.15), (CoCoOp, {}, 0.01)],
)
def test_loss_falls_on_smoke_colors(cls, cfg, drop):
    """On the tiny random-feature CLIP a unified context can move the class features only a little
    (the loss starts at chance and falls slowly); class-specific context learns fast."""
    from petlbench.harness.data import subset
    from petlbench.harness.objectives.classification import fit_classifier
    from petlbench.harness.trainer import TrainConfig, Trainer

    train, names = _colors()
    train = subset(train, list(range(128)))  # 8 steps an epoch keep the test fast
    backbone = build_backbone("tiny-clip")
    method, head = _attach(cls, backbone, names, **cfg)
    model = ImageClassifier(backbone, head, method)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1.0, grad_clip=1.0, seed=0)
    trainer = Trainer(model, method, cfg, head=head, device=torch.device("cpu"))
    losses = [h["loss"] for h in fit_classifier(trainer, model, train, cache_features=True).history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - drop, losses


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_bench_run_smoke(tmp_path, method):
    from petlbench.cli import main
    from petlbench.harness.store import Store

    store = tmp_path / "s.sqlite"
    args = ["run", "--method", method, "--suite", "smoke", "--backbone", "tiny-clip", "--tasks", "colors"]
    assert main([*args, "--protocol", "epochs=2", "--store", str(store), "--no-fgsm"]) == 0
    (record,) = Store(store).records()
    assert record.status == "finished"
    losses = [h["loss"] for h in record.result["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert record.result["train"]["feature_cache"]  # the image tower is frozen: features computed once
    # width 64: CoOp 16 x 64; CoCoOp 4 x 64 + (64 x 4 + 4) + (4 x 64 + 64)
    assert record.result["parameters"]["method"] == {"coop": 1_024, "cocoop": 836}[method]
    if method == "cocoop":
        assert record.result["cost"]["text_runs"] == "per image"


def test_bad_options_are_user_errors(tiny_clip):
    for cls, options, match in [
        (CoOp, {"class_token_position": "left"}, "class_token_position"),
        (CoOp, {"n_ctx": -1}, "n_ctx"),
        (CoOp, {"template": "a photo"}, "template"),
        (CoOp, {"ctx": 4}, "no option"),
        (CoCoOp, {"n_ctx": 0, "ctx_init": ""}, "context token"),
        (CoCoOp, {"meta_net_ratio": 0}, "meta_net_ratio"),
        (CoCoOp, {"csc": True}, "no option"),
    ]:
        with pytest.raises(UserError, match=match):
            cls(options)
    method, _ = _attach(CoOp, tiny_clip, csc=True)
    with pytest.raises(UserError, match="class-specific"):
        method.make_head(tiny_clip, ["a", "b"], [])
