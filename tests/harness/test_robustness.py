"""FGSM through adversarial-robustness-toolbox, in pixel space with normalisation inside the model."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead
from petlbench.benchmarks.data import TensorImageDataset
from petlbench.harness.objectives.classification import fit_classifier
from petlbench.harness.robustness import fgsm
from petlbench.harness.trainer import TrainConfig, Trainer
from petlbench.methods.linear import LinearProbe


def _colour_task(n, seed):
    """Three classes: the dominant channel of a noisy image (learnable, not trivially robust)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.6
    images[torch.arange(n), labels] += 0.25
    return TensorImageDataset((images.clamp(0, 1) * 255).to(torch.uint8), labels)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    backbone = build_backbone("tiny-vit")
    method = LinearProbe()
    method.attach(backbone)
    model = ImageClassifier(backbone, LinearHead(backbone.feature_dim, 3), method)
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=30, batch_size=32, lr=0.5, seed=0),
        head=model.head,
        device=torch.device("cpu"),
    )
    fit_classifier(trainer, model, _colour_task(256, 0), cache_features=True)
    return model


def test_fgsm_eps_zero_is_clean_and_accuracy_falls_with_eps(trained):
    data = _colour_task(200, 1)
    eps = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 32 / 255]
    out = fgsm(trained, data, 3, epsilons=eps, batch_size=64)
    assert out["clean"] > 60.0  # the model learned the task
    assert out["accuracy"][0] == out["clean"] and out["drop"][0] == 0.0
    assert all(a >= b for a, b in zip(out["accuracy"], out["accuracy"][1:], strict=False)), out["accuracy"]
    assert out["accuracy"][-1] < out["clean"]  # a large budget really hurts
    for e, norm in zip(eps, out["max_perturbation"], strict=True):
        assert norm == pytest.approx(e, abs=1e-6)  # the budget is spent in pixel space, exactly


def test_one_gradient_for_all_eps_gives_arts_fgsm_at_each_eps(trained):
    """The shared direction reproduces ART's FastGradientMethod run separately at every epsilon."""
    import numpy as np
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    from petlbench.harness.robustness import _FloatLogits

    data = _colour_task(96, 2)
    eps = [1 / 255, 4 / 255, 16 / 255]
    out = fgsm(trained, data, 3, epsilons=eps, batch_size=32)
    x = data.images.float().div(255.0).numpy().astype(np.float32)
    y = data.labels.numpy()
    art = PyTorchClassifier(
        model=_FloatLogits(trained),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=3,
        clip_values=(0.0, 1.0),
    )
    for e, acc in zip(eps, out["accuracy"], strict=True):
        adv = FastGradientMethod(art, norm=np.inf, eps=e, batch_size=32).generate(x=x, y=y)
        expected = float((art.predict(adv).argmax(axis=1) == y).mean() * 100.0)
        assert acc == pytest.approx(expected, abs=1e-9), (e, acc, expected)
