"""FGSM on the generative backbone, as the OFA prompt-tuning paper attacks it: one gradient step on
the *embeddings* of the input, not on pixels (shared/papers/ofa-prompt-tuning.md section 4.3
"Robustness Analysis": FGSM "requires only one step of gradient computation on text and image
embeddings"; results in Figure 3). The paper states no epsilon.

For each example the loss of the gold target (teacher-forced token cross-entropy, no smoothing) is
differentiated with respect to the encoder's two input embeddings: the text token embeddings and
the projected image patch embeddings (before the type embedding and the embedding LayerNorms).
Both are moved by ``eps * sign(grad)`` and the task metric is measured again by the task's own
decoding; the drop from the clean metric is reported per epsilon. ``eps = 0`` reproduces the clean
metric exactly (the offsets are zeros).

Units. Epsilons here are in **embedding units**: an L-infinity budget per embedding coordinate, the
same number for the text and the image embeddings. The result says so (``"unit": "embedding"``) and
gives each epsilon also as a fraction of the token-embedding table's per-coordinate RMS
(``eps_relative``), with the RMS of the table and of the attacked image embeddings beside it.

The measure option (``spec.measure["fgsm"]``) says which unit its ``epsilons`` are in, with
``unit``: ``"pixel"`` (the default: ``bench run --fgsm-eps`` takes pixel fractions such as 8/255 for
the pixel-space FGSM of ``harness/robustness.py``) or ``"embedding"``. Rule: the given epsilons are
used on OFA only when their unit is ``"embedding"``; pixel epsilons cannot be converted (there is
no pixel -> embedding map), so they are not applied: the embedding default grid below is used and
the result records the pixel request under ``grid.ignored``.

The default grid (ours, since the paper gives none): fractions of the per-coordinate RMS of the
model's token-embedding table, computed from the model, ``eps = f * rms`` for f in
:data:`DEFAULT_RMS_FRACTIONS`. The fractions mirror the pixel grid's relative size: the pixel FGSM
steps of 1/255, 2/255, 4/255, 8/255 (``harness/robustness.py`` ``DEFAULT_EPSILONS``) are, on images
in [0, 1] whose per-channel standard deviation is about 0.225 (ImageNet's (0.229, 0.224, 0.225),
the std the ViT backbones here normalise with, backbones/vit.py), k / 255 / 0.225 = 1.7%, 3.5%, 7.0%
and 13.9% of the signal's spread. Relative to the RMS the budget means the same on a random tiny model
and on the released checkpoints, whose tables differ in scale; the embedding LayerNorms right after
the perturbation also make the effect scale-relative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .robustness import EMBEDDING_UNIT, PIXEL_UNIT, UNITS, check_fgsm_options

if TYPE_CHECKING:
    from petlbench.backbones.ofa.generator import OFAGenerator
    from petlbench.benchmarks.ofa_tasks.task import ExampleSet

    from .objectives.seq2seq import DecodingTask

# The pixel grid's steps k/255 (harness/robustness.py DEFAULT_EPSILONS) over the per-channel pixel std
# of natural images in [0, 1] (ImageNet's 0.229, 0.224, 0.225): 0.0174, 0.0349, 0.0697, 0.1394.
PIXEL_STEPS = (1, 2, 4, 8)
NATURAL_PIXEL_STD = 0.225
DEFAULT_RMS_FRACTIONS = tuple(round(k / 255 / NATURAL_PIXEL_STD, 4) for k in PIXEL_STEPS)


def token_embedding_rms(model: OFAGenerator) -> float:
    """Per-coordinate RMS of the shared token-embedding table, ``sqrt(mean(W**2))`` over its rows
    other than the padding row (which the encoder never perturbs into meaning)."""
    weight = model.backbone.embed_tokens.weight.detach().double()
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    pad = model.vocab.pad
    if 0 <= pad < weight.shape[0]:
        keep[pad] = False
    return float(weight[keep].pow(2).mean().sqrt())


def embedding_grid(
    model: OFAGenerator, options: Mapping[str, Any] | None
) -> tuple[list[float], dict[str, Any]]:
    """The epsilons (embedding units) a run attacks with, and how they were chosen (see the module
    docstring for the rule): the option's epsilons when its unit is ``embedding``, else the default
    grid ``DEFAULT_RMS_FRACTIONS * token_embedding_rms(model)``."""
    check_fgsm_options(options)
    options = options or {}
    unit = options.get("unit", PIXEL_UNIT)
    given = options.get("epsilons")
    if given is not None and unit == EMBEDDING_UNIT:
        eps = [float(e) for e in given]
        return eps, {"source": "user", "rule": "the measure option's epsilons, unit 'embedding'"}
    rms = token_embedding_rms(model)
    grid: dict[str, Any] = {
        "source": "default",
        "rule": "fractions of the token-embedding table's per-coordinate RMS (k/255 / 0.225, k = 1, 2, 4, 8)",
        "fractions": list(DEFAULT_RMS_FRACTIONS),
    }
    if given is not None:
        grid["ignored"] = {
            "unit": unit,
            "eps": [float(e) for e in given],
            "why": "pixel-space epsilons do not apply to embeddings; give unit 'embedding' to set them",
        }
    return [f * rms for f in DEFAULT_RMS_FRACTIONS], grid


def _signs_and_embeddings(
    model: OFAGenerator, batch: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        text, image = model.embed_inputs(batch.src, batch.pixels)
    dt = torch.zeros_like(text, requires_grad=True)
    di = torch.zeros_like(image, requires_grad=True)
    with torch.enable_grad():
        memory = model.encode(batch.src, batch.pixels, text_offset=dt, image_offset=di)
        logits = model.logits(batch.prev, memory).float()
        loss = F.cross_entropy(logits.transpose(1, 2), batch.target, ignore_index=model.vocab.pad)
        g_text, g_image = torch.autograd.grad(loss, (dt, di))
    return g_text.sign(), g_image.sign(), text, image


def embedding_gradient_signs(model: OFAGenerator, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """sign(d loss / d text embedding), sign(d loss / d image embedding) of one batch."""
    s_text, s_image, _, _ = _signs_and_embeddings(model, batch)
    return s_text, s_image


def fgsm_embeddings(
    model: OFAGenerator,
    task: DecodingTask,
    examples: ExampleSet,
    *,
    epsilons: Sequence[float] | None = None,
    device: torch.device | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    grid: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean and FGSM-attacked task metric at each epsilon (embedding units; None: the default grid
    of this model), and the drop (metric points). ``grid`` describes where given epsilons came from."""
    if epsilons is None:
        eps_list, grid = embedding_grid(model, None)
    else:
        eps_list = [float(e) for e in epsilons]
        grid = (
            dict(grid)
            if grid is not None
            else {"source": "user", "rule": "epsilons given in embedding units"}
        )
    rms = token_embedding_rms(model)
    device = device or next(model.parameters()).device
    n = len(examples) if max_examples is None else min(len(examples), int(max_examples))
    exs = [examples[i] for i in range(n)]
    was_training = model.training
    model.eval()
    clean: list[Any] = []
    attacked: list[list[Any]] = [[] for _ in eps_list]
    norms = [0.0 for _ in eps_list]
    image_sq, image_count = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            batch = task.collate(exs[start : start + batch_size], device)
            clean += task.predict(model, batch)
            s_text, s_image, _, image = _signs_and_embeddings(model, batch)
            image_sq += float(image.double().pow(2).sum())
            image_count += image.numel()
            for k, eps in enumerate(eps_list):
                dt, di = eps * s_text, eps * s_image
                attacked[k] += task.predict(model, batch, text_offset=dt, image_offset=di)
                norms[k] = max(norms[k], float(dt.abs().max()), float(di.abs().max()))
    finally:
        model.train(was_training)
    clean_score = task.score(clean, exs)
    scores = [task.score(p, exs) for p in attacked]
    return {
        "attack": "FGSM on the encoder's input embeddings (text tokens and image patches), one step",
        "space": "embeddings before the type embedding and embedding LayerNorms, L-inf per coordinate",
        "unit": EMBEDDING_UNIT,
        "metric": task.metric_name,
        "examples": n,
        "clean": clean_score,
        "eps": eps_list,
        "eps_relative": [e / rms if rms > 0 else None for e in eps_list],  # of the table's RMS
        "reference_rms": {
            "token_embedding_table": rms,
            "image_embeddings": math.sqrt(image_sq / image_count) if image_count else None,
        },
        "grid": dict(grid),
        "accuracy": scores,  # the task metric under attack (named by "metric"), as in the pixel FGSM
        "drop": [clean_score - s for s in scores],
        "max_perturbation": norms,
    }


def fgsm_from_options(
    model: OFAGenerator,
    task: DecodingTask,
    examples: ExampleSet,
    options: Mapping[str, Any] | None,
    *,
    device: torch.device | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`fgsm_embeddings` with the epsilons the measure option allows (:func:`embedding_grid`)."""
    eps, grid = embedding_grid(model, options)
    return fgsm_embeddings(
        model,
        task,
        examples,
        epsilons=eps,
        device=device,
        batch_size=batch_size,
        max_examples=(options or {}).get("max_examples"),
        grid=grid,
    )


__all__ = [
    "DEFAULT_RMS_FRACTIONS",
    "EMBEDDING_UNIT",
    "PIXEL_UNIT",
    "UNITS",
    "check_fgsm_options",
    "embedding_gradient_signs",
    "embedding_grid",
    "fgsm_embeddings",
    "fgsm_from_options",
    "token_embedding_rms",
]
