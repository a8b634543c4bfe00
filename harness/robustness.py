"""FGSM robustness with adversarial-robustness-toolbox, attacking in pixel space.

The attacked model is the whole :class:`ImageClassifier`: pixels in [0, 1] go in and normalisation
happens inside, so epsilon is a pixel-space L-infinity budget (e.g. 8/255) and adversarial images are
clipped to the valid pixel range, whatever the backbone's mean and std are.

FGSM is one signed-gradient step, ``clip(x + eps * sign(grad_x L(x, y)))``, and its direction does not
depend on ``eps``. So the gradient is taken once, by ART's FastGradientMethod on an unclipped
estimator with ``eps = 1`` (which returns ``x + sign(grad)``), and every epsilon of the grid reuses
that direction with the valid-range clip ART applies. This gives ART's result at each epsilon (a test
checks it against ART run per epsilon) for one backward pass instead of one per epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from petlbench.benchmarks.data import TensorImageDataset

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


class _FloatLogits(nn.Module):
    """ART expects float32 logits from a module whose forward takes the attacked input only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels).float()


def fgsm(
    model: nn.Module,
    data: TensorImageDataset,
    num_classes: int,
    *,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    device: torch.device | None = None,
    batch_size: int = 128,
    max_examples: int | None = None,
) -> dict[str, Any]:
    """Clean and FGSM-robust accuracy (percent) at each epsilon, the drop, and the measured
    perturbation L-inf norm. Untargeted, using the true labels (ART's FastGradientMethod)."""
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    device = device or next(model.parameters()).device
    n = len(data) if max_examples is None else min(len(data), max_examples)
    x = data.images[:n].float().div(255.0).numpy().astype(np.float32)
    y = data.labels[:n].numpy()
    was_training = model.training
    model.eval()
    def estimator(clip_values: tuple[float, float] | None) -> PyTorchClassifier:
        return PyTorchClassifier(
            model=_FloatLogits(model),
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes,
            clip_values=clip_values,
            device_type="gpu" if device.type == "cuda" else "cpu",
        )

    classifier = estimator((0.0, 1.0))

    def accuracy(inputs: np.ndarray) -> float:
        preds = classifier.predict(inputs, batch_size=batch_size).argmax(axis=1)
        return float((preds == y).mean() * 100.0)

    clean = accuracy(x)
    robust, norms = [], []
    try:
        if any(float(e) > 0 for e in epsilons):
            unit = FastGradientMethod(
                estimator(None), norm=np.inf, eps=1.0, eps_step=1.0, batch_size=batch_size
            )
            direction = np.sign(unit.generate(x=x, y=y) - x)  # sign(grad): exactly -1, 0 or 1
        for eps in epsilons:
            if float(eps) == 0:
                adv = x
            else:
                adv = np.clip(x + np.float32(eps) * direction, 0.0, 1.0).astype(np.float32)
            robust.append(accuracy(adv))
            norms.append(float(np.abs(adv - x).max()))
    finally:
        model.train(was_training)
    return {
        "attack": "FGSM (adversarial-robustness-toolbox FastGradientMethod, L-inf, untargeted)",
        "space": "pixels in [0, 1], normalisation inside the model",
        "examples": n,
        "clean": clean,
        "unit": "pixel",
        "eps": [float(e) for e in epsilons],
        "accuracy": robust,
        "drop": [clean - r for r in robust],
        "max_perturbation": norms,
    }
