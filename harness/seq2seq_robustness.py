"""FGSM on the generative backbone, as the OFA prompt-tuning paper attacks it: one gradient step on
the *embeddings* of the input, not on pixels.

For each example the loss of the gold target (teacher-forced token cross-entropy, no smoothing) is
differentiated with respect to the encoder's two input embeddings: the text token embeddings and
the projected image patch embeddings (before the type embedding and the embedding LayerNorms).
Both are moved by ``eps * sign(grad)`` and the task metric is measured again by the task's own
decoding; the drop from the clean metric is reported per epsilon. ``eps = 0`` reproduces the clean
metric exactly (the offsets are zeros). Epsilons are in embedding units (L-infinity per coordinate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from petlbench.backbones.ofa.generator import OFAGenerator

    from .seq2seq import ExampleSet, GenerativeTask

DEFAULT_EMBEDDING_EPSILONS = (0.001, 0.01, 0.05)


def embedding_gradient_signs(model: OFAGenerator, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """sign(d loss / d text embedding), sign(d loss / d image embedding) of one batch."""
    with torch.no_grad():
        text, image = model.embed_inputs(batch.src, batch.pixels)
    dt = torch.zeros_like(text, requires_grad=True)
    di = torch.zeros_like(image, requires_grad=True)
    with torch.enable_grad():
        memory = model.encode(batch.src, batch.pixels, text_offset=dt, image_offset=di)
        logits = model.logits(batch.prev, memory).float()
        loss = F.cross_entropy(logits.transpose(1, 2), batch.target, ignore_index=model.vocab.pad)
        g_text, g_image = torch.autograd.grad(loss, (dt, di))
    return g_text.sign(), g_image.sign()


def fgsm_embeddings(
    model: OFAGenerator,
    task: GenerativeTask,
    examples: ExampleSet,
    *,
    epsilons: Sequence[float] | None = None,
    device: torch.device | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
) -> dict[str, Any]:
    """Clean and FGSM-attacked task metric at each epsilon, and the drop (metric points)."""
    eps_list = [float(e) for e in (epsilons if epsilons is not None else DEFAULT_EMBEDDING_EPSILONS)]
    device = device or next(model.parameters()).device
    n = len(examples) if max_examples is None else min(len(examples), int(max_examples))
    exs = [examples[i] for i in range(n)]
    was_training = model.training
    model.eval()
    clean: list[Any] = []
    attacked: list[list[Any]] = [[] for _ in eps_list]
    norms = [0.0 for _ in eps_list]
    try:
        for start in range(0, n, batch_size):
            batch = task.collate(exs[start : start + batch_size], device)
            clean += task.predict(model, batch)
            s_text, s_image = embedding_gradient_signs(model, batch)
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
        "metric": task.metric_name,
        "examples": n,
        "clean": clean_score,
        "eps": eps_list,
        "accuracy": scores,  # the task metric under attack (named by "metric"), as in the pixel FGSM
        "drop": [clean_score - s for s in scores],
        "max_perturbation": norms,
    }
