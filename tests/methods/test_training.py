"""The contract every method shares: only its parameters train, the backbone stays bitwise frozen,
and loss falls / accuracy beats chance on a learnable offline task."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead, TextClassifierHead
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.metrics import accuracy
from petlbench.benchmarks.suites import load_suite
from petlbench.harness.trainer import TrainConfig, Trainer, predict
from petlbench.methods.registry import get_method

SMOKE = load_suite("smoke")


@pytest.fixture(scope="module")
def colors():
    return load_task(SMOKE.task("colors"), None)


def _train(method_name, backbone_name, data, epochs=6, lr=0.1, **config):
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    method = get_method(method_name)(config)
    method.attach(backbone)
    if backbone.kind == "clip":
        head = TextClassifierHead(backbone, data.class_names, data.templates)
    else:
        head = LinearHead(backbone.feature_dim, len(data.class_names))
    model = ImageClassifier(backbone, head, method)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=epochs, batch_size=32, lr=lr, warmup_epochs=1, grad_clip=1.0, seed=0),
        device=torch.device("cpu"),
    )
    result = trainer.fit(data.split("train"))
    preds = predict(model, data.split("val"), torch.device("cpu"), 256)
    acc = accuracy(preds, data.split("val").labels)
    return model, method, before, result, acc


@pytest.mark.parametrize(("method", "backbone"), [("vpt", "tiny-vit"), ("vpt", "tiny-clip")])
def test_only_method_parameters_train_and_backbone_is_bitwise_unchanged(colors, method, backbone):
    model, method_obj, before, result, _ = _train(method, backbone, colors, epochs=2, deep=True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    owned = {id(p) for p in method_obj.trainable_parameters()} | {
        id(p) for p in model.head.parameters() if p.requires_grad
    }
    assert trainable == owned and len(trainable) > 0
    assert not any(p.requires_grad for p in model.backbone.parameters())
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize("method", ["vpt", "linear"])
def test_vpt_and_linear_probe_beat_chance_clearly_through_bench_run(tmp_path, method):
    """The README's main job, on the in-distribution tasks of the smoke suite with the tiny ViT."""
    from petlbench.harness.cli import main
    from petlbench.harness.store import Store

    tasks = ["colors", "position", "digits"]
    args = [
        "run",
        "--method",
        method,
        "--suite",
        "smoke",
        "--backbone",
        "tiny-vit",
        "--tasks",
        ",".join(tasks),
    ]
    assert main([*args, "--store", str(tmp_path / "s.sqlite"), "--no-fgsm"]) == 0
    with Store(tmp_path / "s.sqlite") as store:
        accuracy_by_task = {r.task: r.metrics["accuracy"] for r in store.records()}
    for task in tasks:
        chance = 100.0 / len(load_task(SMOKE.task(task), None).class_names)
        assert accuracy_by_task[task] > 2.5 * chance, (task, accuracy_by_task[task], chance)
