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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from petlbench.benchmarks.data import TensorImageDataset
from petlbench.errors import UserError

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
PIXEL_UNIT = "pixel"  # epsilons are pixel fractions in [0, 1] (this module)
EMBEDDING_UNIT = "embedding"  # epsilons are per-coordinate embedding budgets (harness/seq2seq_robustness.py)
UNITS = (PIXEL_UNIT, EMBEDDING_UNIT)
CHUNK_BATCHES = 4  # FGSM holds this many batches of float pixels at a time


def check_fgsm_options(options: Mapping[str, Any] | None) -> None:
    """Refuse a bad FGSM measure option when a run is planned, not after it trained: an unknown
    ``unit``, an epsilon that is not a finite number >= 0 (or above 1 in pixel units, the whole pixel
    range), a ``max_examples`` that is not a positive integer."""
    if not options:
        return
    unit = options.get("unit", PIXEL_UNIT)
    if unit not in UNITS:
        raise UserError(f"fgsm: unit must be one of {', '.join(UNITS)}, not {unit!r}")
    eps = options.get("epsilons")
    if eps is not None:
        if isinstance(eps, str | bytes) or not isinstance(eps, Sequence) or not eps:
            raise UserError(f"fgsm: epsilons must be a non-empty list of numbers, got {eps!r}")
        for e in eps:
            if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e < 0:
                raise UserError(f"fgsm: epsilons must be finite numbers >= 0, got {e!r}")
            if unit == PIXEL_UNIT and e > 1:
                raise UserError(
                    f"fgsm: epsilon {e:g} is above 1, the whole pixel range (pixel epsilons are "
                    "fractions such as 8/255)"
                )
    examples = options.get("max_examples")
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise UserError(f"fgsm: max_examples (--fgsm-examples) must be a positive integer, got {examples!r}")


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
    was_training = model.training
    model.eval()

    def estimator(clip_values: tuple[float, float] | None) -> PyTorchClassifier:
        return PyTorchClassifier(
            model=_FloatLogits(model),
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(data.images.shape[1:]),
            nb_classes=num_classes,
            clip_values=clip_values,
            device_type="gpu" if device.type == "cuda" else "cpu",
        )

    classifier = estimator((0.0, 1.0))
    attack = any(float(e) > 0 for e in epsilons)
    unit = (
        FastGradientMethod(estimator(None), norm=np.inf, eps=1.0, eps_step=1.0, batch_size=batch_size)
        if attack
        else None
    )
    # The examples go through in chunks of whole ART batches (memory: one chunk of float pixels, not
    # the split; a cached split streams from disk). ART batches every call by ``batch_size`` from
    # the start, so chunks of a multiple of it see exactly the batches one call over all would.
    chunk = batch_size * CHUNK_BATCHES
    clean_hits, hits = 0, [0] * len(epsilons)
    norms = [0.0] * len(epsilons)

    def correct(inputs: np.ndarray, y: np.ndarray) -> int:
        preds = classifier.predict(inputs, batch_size=batch_size).argmax(axis=1)
        return int((preds == y).sum())

    try:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x = data.images[start:stop].float().div(255.0).numpy().astype(np.float32)
            y = data.labels[start:stop].numpy()
            clean_hits += correct(x, y)
            if unit is not None:
                direction = np.sign(unit.generate(x=x, y=y) - x)  # sign(grad): exactly -1, 0 or 1
            for k, eps in enumerate(epsilons):
                if float(eps) == 0:
                    adv = x
                else:
                    adv = np.clip(x + np.float32(eps) * direction, 0.0, 1.0).astype(np.float32)
                hits[k] += correct(adv, y)
                norms[k] = max(norms[k], float(np.abs(adv - x).max()))
    finally:
        model.train(was_training)
    clean = float(np.float64(clean_hits) / n * 100.0)
    robust = [float(np.float64(h) / n * 100.0) for h in hits]
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


def merge_fgsm(stored: dict[str, Any] | None, measured: dict[str, Any]) -> dict[str, Any]:
    """A re-measurement added to a run's stored FGSM results, keyed by epsilon: epsilons measured
    again take the new values, the others are kept (``bench robust`` never drops a grid point). The
    two must be the same measurement (unit, example count), else they cannot share one grid."""
    if not stored or not stored.get("eps"):
        return measured
    for key in ("unit", "examples"):
        if stored.get(key, PIXEL_UNIT if key == "unit" else None) != measured.get(
            key, PIXEL_UNIT if key == "unit" else None
        ):
            raise UserError(
                f"the stored FGSM results were measured with {key} {stored.get(key)!r}, this one with "
                f"{measured.get(key)!r}: they cannot share one grid (give --fgsm-examples "
                f"{stored.get('examples')} to add to it)"
            )
    per_eps = [k for k, v in measured.items() if isinstance(v, list) and len(v) == len(measured["eps"])]
    points: dict[float, dict[str, Any]] = {}
    for source in (stored, measured):
        keys = [
            k for k in per_eps if isinstance(source.get(k), list) and len(source[k]) == len(source["eps"])
        ]
        for i, eps in enumerate(source["eps"]):
            points[float(eps)] = {k: source[k][i] for k in keys}
    grid = sorted(points)
    merged = {**stored, **measured, "eps": grid}
    for key in per_eps:
        if key != "eps":
            merged[key] = [points[e].get(key) for e in grid]
    if isinstance(merged.get("clean"), float) and "drop" in per_eps:  # against the newest clean score
        merged["drop"] = [None if a is None else merged["clean"] - a for a in merged["accuracy"]]
    merged["remeasured_eps"] = [float(e) for e in measured["eps"]]
    return merged
