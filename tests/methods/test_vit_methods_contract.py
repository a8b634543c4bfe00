"""The shared method contract for SSF, AdaptFormer, FacT-TT/TK, Convpass, DoRA and VeRA: registered,
every option documented, attach trains only the method's parameters, the backbone stays bitwise
frozen, the loss falls on the smoke suite, and the method state round-trips onto a fresh backbone."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead, TextClassifierHead
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import load_suite
from petlbench.harness.trainer import TrainConfig, Trainer
from petlbench.methods.registry import get_method, method_entries, method_options

METHODS = ("ssf", "adaptformer", "fact-tt", "fact-tk", "convpass", "dora", "vera")
PAIRS = [(m, "tiny-vit") for m in METHODS] + [
    ("ssf", "tiny-swin"),
    ("adaptformer", "tiny-swin"),
    ("convpass", "tiny-swin"),
    ("dora", "tiny-clip"),
    ("fact-tk", "tiny-clip"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colors():
    return load_task(load_suite("smoke").task("colors"), None)


@pytest.mark.parametrize("name", METHODS)
def test_registered_with_documented_options(name):
    entry = method_entries()[name]
    assert not entry.plugin
    cls = get_method(name)
    assert cls.name == name and cls.paper
    missing = [o.name for o in method_options(cls) if not o.help]
    assert not missing, f"{name}: options without help: {missing}"


def _model(name, backbone, data):
    method = get_method(name)({})
    method.attach(backbone)
    if backbone.kind == "clip":
        head = TextClassifierHead(backbone, data.class_names, data.templates)
    else:
        head = LinearHead(backbone.feature_dim, len(data.class_names))
    return ImageClassifier(backbone, head, method), method


@pytest.mark.parametrize(("name", "backbone_name"), PAIRS)
def test_only_its_parameters_train_and_its_state_round_trips(colors, name, backbone_name):
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    model, method = _model(name, backbone, colors)
    owned = {id(p) for p in method.trainable_parameters()} | {
        id(p) for p in model.head.parameters() if p.requires_grad
    }
    assert {id(p) for p in model.parameters() if p.requires_grad} == owned
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.tower("image").has_trainable_parameters()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=1, grad_clip=1.0, seed=0),
        device=torch.device("cpu"),
    )
    result = trainer.fit(colors.split("train"))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    pixels = torch.rand(2, 3, 32, 32)
    method.eval()
    with torch.no_grad():
        expected = backbone.encode_image(pixels)
    fresh = build_backbone(backbone_name)
    torch.manual_seed(123)  # a different init: the loaded state must replace it all
    other = get_method(name)({})
    other.attach(fresh)
    other.load_method_state(method.method_state())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(pixels), expected, atol=1e-6, rtol=1e-6)
