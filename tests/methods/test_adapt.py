"""Adapt: residual-space K/V prompts with pruning masks; the pruning schedule, counts, resume, plot."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead, TextClassifierHead
from petlbench.backbones.slots import MaskedTokens
from petlbench.benchmarks.data import TensorImageDataset
from petlbench.errors import UserError
from petlbench.harness.objectives.classification import fit_classifier
from petlbench.harness.trainer import TrainConfig, Trainer
from petlbench.methods import get_method
from petlbench.methods.adapt import (
    Adapt,
    AdaptConfig,
    context_length_series,
    draw_context_lengths,
    plot_context_lengths,
)

SMALL = {"image_layers": 2, "text_layers": 2, "image_tokens": 4, "text_tokens": 4}  # 16 tokens in all


def _tiny_clip(seed=0, **cfg):
    backbone = build_backbone("tiny-clip")
    torch.manual_seed(seed)
    method = Adapt(AdaptConfig(**cfg))
    method.attach(backbone)
    return backbone, method


def _ctx(step, epoch):
    return SimpleNamespace(step=step, epoch=epoch)


def test_registered_and_declared():
    cls = get_method("adapt")
    assert cls is Adapt and cls.family == "prompt" and cls.towers == ("image", "text")
    # paper Sec. 4.1, Implementation Details (shared/papers/adapt.md L149-155)
    assert Adapt.reference_protocol == {
        "optimizer": "sgd",
        "lr": 2.5e-3,
        "batch_size": 4,
        "epochs": 100,
        "eval_epoch": 100,
        "shots": 16,
        "runs": 3,
    }
    assert "Section 4.1" in Adapt.reference_protocol_source
    assert Adapt.suggested_protocol is Adapt.reference_protocol  # the older name is an alias
    c = AdaptConfig()
    assert (c.image_layers, c.text_layers, c.image_tokens, c.text_tokens) == (12, 12, 16, 16)
    assert (c.accumulation_steps, c.prune_rate, c.warmup_epochs, c.target_tokens, c.score) == (
        80,
        4,
        5,
        None,  # the target is a fraction of the attached tokens unless set
        "snip",
    )
    assert c.target_fraction == 128 / 384 == 1 / 3  # the headline T_target = 128 of 12+12 x 16


def test_all_masks_zero_equals_backbone_without_prompts():
    backbone = build_backbone("tiny-clip")
    pixels, ids = torch.rand(2, 3, 32, 32), backbone.tokenize(["a red circle", "a dog"])
    image, text = backbone.encode_image(pixels), backbone.encode_text(ids)
    torch.manual_seed(0)
    method = Adapt()
    method.attach(backbone)
    assert not torch.allclose(backbone.encode_image(pixels), image, atol=1e-3)
    assert not torch.allclose(backbone.encode_text(ids), text, atol=1e-3)
    method.mask("image").zero_()
    method.mask("text").zero_()
    torch.testing.assert_close(backbone.encode_image(pixels), image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backbone.encode_text(ids), text, atol=1e-5, rtol=1e-5)
    assert method.num_trainable_parameters() == 0


def test_pruned_tokens_leave_the_attention(monkeypatch):
    """A masked model equals one built with only the active tokens, differs from one whose pruned
    tokens are merely zeroed, and its attention sees only the active keys."""
    backbone, method = _tiny_clip(**SMALL)
    pixels, ids = torch.rand(2, 3, 32, 32), backbone.tokenize(["a red circle"])
    pattern = {"image": [[1, 0, 1, 0], [0, 0, 0, 0]], "text": [[0, 1, 1, 1], [1, 0, 0, 1]]}
    for branch, rows in pattern.items():
        method.mask(branch).copy_(torch.tensor(rows, dtype=torch.bool))
    masked = backbone.encode_image(pixels), backbone.encode_text(ids)

    key_lengths = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, k, v, *args, **kwargs):
        key_lengths.append((q.shape[2], k.shape[2]))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    backbone.encode_image(pixels)
    backbone.encode_text(ids)
    monkeypatch.undo()
    # image: 17 tokens (CLS + 16 patches) + 2 then 0 prompts; text "a red circle": 5 tokens + 3, 2
    assert key_lengths == [(17, 19), (17, 17), (5, 8), (5, 7)]

    for branch in ("image", "text"):
        tower, mask = backbone.tower(branch), method.mask(branch)
        for layer, p in enumerate(method.prompts[branch]):
            tower.slots[layer].kv_residual = MaskedTokens(p.detach()[mask[layer]].clone())
    only_active = backbone.encode_image(pixels), backbone.encode_text(ids)
    for got, want in zip(masked, only_active, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    for branch in ("image", "text"):
        tower, mask = backbone.tower(branch), method.mask(branch)
        for layer, p in enumerate(method.prompts[branch]):
            tower.slots[layer].kv_residual = MaskedTokens(p.detach() * mask[layer, :, None])
    zeroed = backbone.encode_image(pixels), backbone.encode_text(ids)
    assert not torch.allclose(zeroed[0], masked[0], atol=1e-4)
    assert not torch.allclose(zeroed[1], masked[1], atol=1e-4)


def test_parameter_counts_on_clip_b16_unpruned_and_pruned(clip_b16):
    try:
        torch.manual_seed(0)
        method = Adapt()
        method.attach(clip_b16)
        assert method.num_trainable_parameters() == 12 * 16 * 768 + 12 * 16 * 512 == 245_760
        # the default fraction gives the paper's T_target = 128 on its own backbone
        assert method.initial_tokens() == 384 and method.target_tokens() == 128
        assert method.context_lengths() == {"image": [16] * 12, "text": [16] * 12}
        image = torch.full((12, 16), 2.0)
        image[0] = 0.5
        text = torch.full((12, 16), 3.0)
        text[:6] = 1.0
        # lowest first: image layer 0 (0.5), text layers 0-5 (1.0), then image layers 1.. (2.0) in order
        pruned = method.prune_lowest({"image": image, "text": text}, 10_000)
        assert len(pruned) == 384 - 128
        assert pruned[:16] == [("image", 0, t) for t in range(16)]
        assert pruned[16:112] == [("text", layer, t) for layer in range(6) for t in range(16)]
        assert method.active_total() == 128
        assert method.context_lengths() == {"image": [0] * 10 + [16, 16], "text": [0] * 6 + [16] * 6}
        assert method.num_trainable_parameters() == 32 * 768 + 96 * 512 == 73_728
        assert method.prune_lowest({"image": image, "text": text}, 4) == []  # never below the target
    finally:
        clip_b16.tower("image").clear_slots()
        clip_b16.tower("text").clear_slots()


def test_pruning_schedule_on_hand_built_scores():
    _, method = _tiny_clip(**SMALL, target_tokens=5, accumulation_steps=3, prune_rate=4, warmup_epochs=1)
    (pruner,) = method.callbacks()
    hand = {
        "image": torch.tensor([[5.0, 1.0, 7.0, 1.0], [3.0, 3.0, 9.0, 0.0]]),
        "text": torch.tensor([[1.0, 8.0, 8.0, 8.0], [2.0, 6.0, 0.5, 4.0]]),
    }

    def give(scores):
        pruner.scores = {b: s.clone() for b, s in scores.items()}

    give(hand)
    pruner.on_step_end(_ctx(step=3, epoch=0))  # a multiple of n_k, but in the warmup: reset only
    assert method.active_total() == 16 and pruner.scores is None
    for step in (4, 5, 7, 8):  # not multiples of n_k: nothing happens, scores are kept
        give(hand)
        pruner.on_step_end(_ctx(step=step, epoch=1))
        assert method.active_total() == 16 and pruner.scores is not None
    pruner.on_step_end(_ctx(step=6, epoch=1))
    # the 4 lowest: 0 (image L1 t3), 0.5 (text L1 t2), then the ties at 1: image before text
    assert pruner.history == [(6, "image", 1, 3), (6, "text", 1, 2), (6, "image", 0, 1), (6, "image", 0, 3)]
    assert method.active_total() == 12 and pruner.scores is None
    assert method.mask("image").tolist() == [[True, False, True, False], [True, True, True, False]]

    give(hand)  # pruned tokens are never picked again, however low their score
    pruner.on_step_end(_ctx(step=9, epoch=1))
    assert pruner.history[4:] == [
        (9, "text", 0, 0),
        (9, "text", 1, 0),
        (9, "image", 1, 0),
        (9, "image", 1, 1),
    ]
    assert method.active_total() == 8
    give(hand)
    pruner.on_step_end(_ctx(step=12, epoch=2))  # the last prune removes fewer than r_p: 8 -> 5
    assert [h[1:] for h in pruner.history[8:]] == [("text", 1, 3), ("image", 0, 0), ("text", 1, 1)]
    assert method.active_total() == 5
    give(hand)
    pruner.on_step_end(_ctx(step=15, epoch=2))
    assert method.active_total() == 5 and len(pruner.history) == 11
    assert method.num_trainable_parameters() == 5 * 64


def test_score_functions():
    for kind in ("snip", "grad", "l2"):
        _, method = _tiny_clip(**SMALL, score=kind)
        for params in method.prompts.values():
            for p in params:
                p.grad = torch.randn_like(p)
        scores = method.token_scores()
        p = method.prompts["text"][1]
        want = {"snip": (p.grad * p).abs().sum(-1), "grad": p.grad.abs().sum(-1), "l2": p.abs().sum(-1)}[kind]
        torch.testing.assert_close(scores["text"][1], want.detach())
        assert scores["image"].shape == (2, 4)


def _data(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, labels)


def _clip_model(seed=0, **cfg):
    backbone, method = _tiny_clip(seed=seed, **cfg)
    head = TextClassifierHead(backbone, ["red", "green", "blue"], ["a photo of a {}."])
    return ImageClassifier(backbone, head, method), method


def _train(model, method, epochs, data, path=None, progress=None):
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=0.05, seed=3)
    trainer = Trainer(
        model,
        method,
        cfg,
        head=model.head,
        device=torch.device("cpu"),
        checkpoint_path=path,
        callbacks=method.callbacks(),
        progress=progress,
    )
    return fit_classifier(trainer, model, data)


def test_training_prunes_to_the_target_at_multiples_of_n_k_after_warmup():
    cfg = dict(SMALL, target_tokens=5, accumulation_steps=2, prune_rate=4, warmup_epochs=1)
    model, method = _clip_model(**cfg)
    _train(model, method, epochs=4, data=_data())  # 3 steps per epoch, 12 steps
    (pruner,) = method.callbacks()
    steps = [h[0] for h in pruner.history]
    assert steps == [4] * 4 + [6] * 4 + [8] * 3  # first multiple of 2 in epoch 1 is step 4; 16 -> 5
    assert method.active_total() == 5 == sum(sum(v) for v in method.context_lengths().values())
    assert method.num_trainable_parameters() == 5 * 64
    facts = method.describe()
    json.dumps(facts)
    assert facts["active_total"] == 5 and len(facts["pruned"]) == 11
    assert facts["masks"]["image"] == method.mask("image").int().tolist()


def test_resumed_run_prunes_identically(tmp_path):
    """Killed mid-epoch, resumed from the epoch checkpoint: same masks, prompts and prune history.
    n_k = 4 does not divide the 3 steps of an epoch, so the checkpoint holds a half-filled window."""
    cfg = dict(SMALL, target_tokens=6, accumulation_steps=4, prune_rate=3, warmup_epochs=1)
    data = _data()
    model, method = _clip_model(**cfg)
    _train(model, method, epochs=6, data=data)
    want_history = list(method.callbacks()[0].history)
    assert [h[0] for h in want_history] == [4] * 3 + [8] * 3 + [12] * 3 + [16]

    def crash(step, total, loss):
        if step == 7:
            raise RuntimeError("killed")

    path = tmp_path / "ckpt.pt"
    model2, method2 = _clip_model(**cfg)
    with pytest.raises(RuntimeError, match="killed"):
        _train(model2, method2, epochs=6, path=path, progress=crash, data=data)
    from petlbench.harness.checkpoint import load_state

    saved = load_state(path)
    assert saved["epoch"] == 1 and saved["callbacks"][0]["accumulated"] == 2  # steps 5 and 6
    assert saved["method"]["mask_image"].dtype == torch.bool

    model3, method3 = _clip_model(seed=99, **cfg)  # different init: everything must come from disk
    result = _train(model3, method3, epochs=6, path=path, data=data)
    assert result.resumed_from_epoch == 2
    assert method3.callbacks()[0].history == want_history
    for key, value in method.method_state().items():
        torch.testing.assert_close(method3.method_state()[key], value, atol=0, rtol=0)


def test_tiny_vit_image_only():
    backbone = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    base = backbone.encode_image(pixels)
    method = Adapt(AdaptConfig(target_tokens=20, accumulation_steps=1, warmup_epochs=0))
    Adapt.check_compatible("tiny-vit", "vit", ("image",))
    method.attach(backbone)
    assert method.branches == ["image"] and list(method.prompts) == ["image"]
    assert method.num_trainable_parameters() == 2 * 16 * 64
    assert not torch.allclose(backbone.encode_image(pixels), base, atol=1e-4)
    model = ImageClassifier(backbone, LinearHead(backbone.feature_dim, 3), method)
    _train(model, method, epochs=2, data=_data())
    assert method.active_total() == 20 and method.num_trainable_parameters() == 20 * 64
    method.mask("image").zero_()
    torch.testing.assert_close(backbone.encode_image(pixels), base, atol=1e-5, rtol=1e-5)


def test_layers_clamp_to_tower_depth_and_masks_are_checkpointed():
    backbone, method = _tiny_clip(text_layers=1)  # 12 image layers asked, tiny-clip has 2
    assert method.context_lengths() == {"image": [16, 16], "text": [16]}
    assert backbone.tower("text").slots[1].kv_residual is None
    method.mask("text")[0, :5] = False
    state = method.method_state()
    _, other = _tiny_clip(seed=1, text_layers=1)
    other.load_method_state(state)
    assert other.context_lengths() == {"image": [16, 16], "text": [11]}
    torch.testing.assert_close(other.prompt("image"), method.prompt("image"))
    assert other.prompt("image").shape == (2, 16, 64)


def _color_task(n=9, seed=0):
    """Images tinted by their label's colour channel: learnable from image features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    pixels = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    pixels[torch.arange(n), labels] += 0.7
    return pixels, labels


def test_loss_falls_on_a_learnable_task():
    model, method = _clip_model(target_tokens=10_000)  # no pruning: only learning is tested
    pixels, labels = _color_task()
    opt = torch.optim.Adam(method.trainable_parameters(), lr=0.05)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(pixels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_plot_context_lengths_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _, method = _tiny_clip(**SMALL)
    method.mask("text")[1, 1:] = False
    out = plot_context_lengths(method.describe(), tmp_path / "fig" / "masks.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2_000
    with pytest.raises(UserError, match="masks"):
        plot_context_lengths({}, tmp_path / "x.png")


# ----- the target as a fraction; pruning where it runs (micro-clip) -----------------------------


def test_effective_target_is_a_fraction_of_the_attached_tokens():
    _, method = _tiny_clip()  # 2 + 2 layers x 16 = 64 tokens
    assert method.initial_tokens() == 64 and method.target_tokens() == 21  # 64 / 3 = 21.33
    _, method = _tiny_clip(**SMALL, target_fraction=0.28125)  # 16 x 0.28125 = 4.5: rounded half up
    assert method.initial_tokens() == 16 and method.target_tokens() == 5
    _, method = _tiny_clip(**SMALL, target_fraction=0.5, target_tokens=3)  # an absolute target wins
    assert method.target_tokens() == 3
    assert method.describe()["target_source"] == "target_tokens"
    _, method = _tiny_clip(text_layers=1)  # clamped layers count as attached: (2 + 1) x 16 = 48
    assert method.initial_tokens() == 48 and method.target_tokens() == 16
    scores = {b: torch.rand(method.mask(b).shape) for b in method.branches}
    assert len(method.prune_lowest(scores, 1_000)) == 48 - 16 and method.active_total() == 16
    backbone = build_backbone("micro-clip")
    micro = Adapt()
    micro.attach(backbone)
    assert micro.context_lengths() == {"image": [16] * 4, "text": [16] * 3}
    assert micro.initial_tokens() == 112 and micro.target_tokens() == 37  # 112 / 3 = 37.33
    assert micro.pruning_steps_needed() == 19  # ceil(75 / 4): the last prune removes 3
    with pytest.raises(UserError, match="target_fraction"):
        Adapt({"target_fraction": 1.5})
    assert Adapt({"target_tokens": "none"}).config.target_tokens is None


def _micro_model(seed=0, **cfg):
    backbone = build_backbone("micro-clip")
    torch.manual_seed(seed)
    method = Adapt(AdaptConfig(**cfg))
    method.attach(backbone)
    head = TextClassifierHead(backbone, ["red", "green", "blue"], ["a photo of a {} thing."])
    return ImageClassifier(backbone, head, method), method


FAST = {"accumulation_steps": 2, "warmup_epochs": 1}  # default fraction, prune rate and layers


@pytest.fixture(scope="module")
def micro_pruned():
    """micro-clip, default fraction: 12 images, batch 4 = 3 steps an epoch; the first prune is at step 4
    (epoch 1), then every 2 steps: 19 prunes end at step 40, inside the 14 epochs (42 steps)."""
    model, method = _micro_model(**FAST)
    _train(model, method, epochs=14, data=_data())
    return method


def test_micro_clip_default_fraction_prunes_exactly_to_the_target(micro_pruned):
    method = micro_pruned
    facts = method.describe()
    json.dumps(facts)
    assert method.active_total() == 37 == facts["target_tokens"] == facts["active_total"]
    assert facts["initial_tokens"] == 112 and facts["reached_target"] is True and "warning" not in facts
    assert facts["pruning_steps"] == 19 == facts["pruning_steps_needed"]
    steps = [h[0] for h in facts["pruned"]]
    assert steps == [s for s in range(4, 41, 2) for _ in range(4)][:75]  # 18 prunes of 4, then 3
    assert facts["steps_needed"] == 40 == steps[-1] and facts["steps_run"] == 42
    assert facts["depths"] == {"image": 4, "text": 3}
    lengths = facts["context_lengths"]
    assert [len(lengths["image"]), len(lengths["text"])] == [4, 3] and sum(map(sum, lengths.values())) == 37
    assert method.num_trainable_parameters() == 37 * 128


def test_too_few_steps_after_warmup_is_reported():
    model, method = _micro_model(**FAST)
    _train(model, method, epochs=6, data=_data())  # 18 steps: prunes at 4, 6, ..., 18
    facts = method.describe()
    assert facts["reached_target"] is False and facts["pruning_steps"] == 8
    assert facts["active_total"] == 112 - 8 * 4 == 80
    assert facts["warning"].startswith(
        "pruning stopped at 80 tokens, above the target 37: the run had too few steps after warmup "
        "(15 steps, 37 needed"
    )
    assert "train at least 14 epochs" in facts["warning"]

    model, method = _micro_model()  # the paper's n_k = 80 and 5 warmup epochs: 2 epochs prune nothing
    _train(model, method, epochs=2, data=_data())
    facts = method.describe()
    assert facts["reached_target"] is False and facts["pruning_steps"] == 0 and facts["active_total"] == 112
    # first prune at step 80 (the first multiple of 80 after the 15 warmup steps), the 19th at 80 + 18 x 80
    assert facts["steps_needed"] == 1520
    assert "(0 steps, 1505 needed" in facts["warning"]
    _, fresh = _tiny_clip()
    assert (
        fresh.describe()["warning"]
        == "pruning stopped at 64 tokens, above the target 21: no training step ran"
    )


def test_plot_shows_the_per_layer_lengths_of_both_branches(micro_pruned, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    facts = micro_pruned.describe()
    fig, drawn = draw_context_lengths(facts)
    try:
        masks = {b: micro_pruned.mask(b) for b in micro_pruned.branches}
        want = {b: m.sum(dim=1).tolist() for b, m in masks.items()}
        assert drawn == want == context_length_series(facts) == facts["context_lengths"]
        assert [len(v) for v in drawn.values()] == [4, 3]  # the backbone's real depths, not 12
        bars = fig.axes[0]
        labels = [t.get_text() for t in bars.get_legend().get_texts()]
        assert len(labels) == 2 and labels[0].startswith("image") and labels[1].startswith("text")
        assert [len(c.patches) for c in bars.containers] == [4, 3]
        title = fig._suptitle.get_text()
        assert "target 37 (reached)" in title and "19 pruning steps" in title
    finally:
        plt.close(fig)
    out = plot_context_lengths(facts, tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="score"):
        Adapt({"score": "magnitude"})
    with pytest.raises(UserError, match="prune_rate"):
        Adapt({"prune_rate": 0})
    with pytest.raises(UserError, match="no option"):
        Adapt({"tokens": 3})
    assert Adapt({"target_tokens": "32", "score": "grad"}).config.target_tokens == 32


def test_mask_snapshots_rebuild_the_pruning_process_of_a_committed_run(tmp_path):
    """The committed micro-CLIP Adapt cell (colors-16shot, seed 1) pruned 112 -> 37 tokens in 19
    steps; the snapshots start all-active, lose tokens monotonically and end at the stored masks."""
    import json
    from pathlib import Path

    from petlbench.methods.adapt import mask_snapshots

    records = Path(__file__).resolve().parents[2] / "leaderboard" / "records" / "mini.jsonl"
    (facts,) = [
        json.loads(line)["result"]["method"]
        for line in records.read_text().splitlines()
        if json.loads(line)["run_id"] == "bc678c55d955ba84"
    ]
    snapshots = mask_snapshots(facts)
    assert len(snapshots) == 4 and snapshots[0][0] == 0
    active = [sum(sum(row) for mask in masks.values() for row in mask) for _, masks in snapshots]
    assert active[0] == facts["initial_tokens"] == 112 and active[-1] == facts["active_total"] == 37
    assert active == sorted(active, reverse=True) and len(set(active)) == 4
    assert snapshots[-1][1] == facts["masks"]
    steps = [step for step, _ in snapshots]
    assert steps == sorted(steps) and steps[-1] == max(h[0] for h in facts["pruned"])
    # a history that does not rebuild the final masks: only the final masks, never a wrong picture
    broken = {**facts, "pruned": facts["pruned"][:-1]}
    assert mask_snapshots(broken) == [(facts["steps_run"], facts["masks"])]
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig, drawn = draw_context_lengths(facts)
    try:
        assert drawn == facts["context_lengths"]
        titles = [ax.get_title() for ax in fig.axes[1:]]
        assert len(titles) == 2 * 4  # two branches x four points of the pruning process
        assert titles[0] == "image M(t), step 0: 64 active" and titles[4].startswith("text M(t), step 0: 48")
    finally:
        plt.close(fig)
