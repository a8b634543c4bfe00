"""An OFA task as data: formatted examples, padded batches, the references and the task metric, and the
training loss (OFA's label-smoothed token cross-entropy). Decoding (beam search, candidate tries)
needs the model and lives with the generative objective (``harness/objectives/seq2seq.py``).

* Training: teacher-forced cross-entropy over the target tokens with label smoothing 0.1 (OFA's
  ``adjust_label_smoothed_cross_entropy``: ``(1 - eps - eps_i) * nll + eps_i * sum(-log p)``, eps_i
  = eps / (allowed - 1)); on the closed-set tasks the logits are masked to the tokens the candidate
  trie allows at each position, as OFA's constraint masks do.
* Scoring: the task metric (Acc@0.5, accuracy, VQA soft accuracy, CIDEr-D; caption BLEU-4 / METEOR
  beside it, from coco-caption's own scorers where they can run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData
from petlbench.benchmarks.datasets.ofa_tsv import OFASample
from petlbench.benchmarks.metrics import get_metric
from petlbench.benchmarks.metrics.ofa import CaptionReport, caption_scores

from .formatting import OFAExample, format_example
from .tokenizer import OFATokenizer

LABEL_SMOOTHING = 0.1
CACHE_LIMIT = 4096  # formatted examples kept in memory per split (smoke sets fit; big splits stream)


class ExampleSet:
    """A split's samples formatted for the model, on access (cached when the split is small)."""

    def __init__(
        self,
        samples: Sequence[OFASample],
        task: str,
        tokenizer: OFATokenizer,
        options: dict[str, Any],
        patch_image_size: int,
        *,
        train: bool,
    ) -> None:
        self.samples = samples
        self.task = task
        self.tokenizer = tokenizer
        self.options = options
        self.patch_image_size = patch_image_size
        self.train = train
        self._cache: dict[int, OFAExample] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> OFAExample:
        if i in self._cache:
            return self._cache[i]
        o = self.options
        ex = format_example(
            self.task,
            self.samples[i],
            self.tokenizer,
            patch_image_size=self.patch_image_size,
            max_image_size=o["max_image_size"],
            num_bins=o["num_bins"],
            train=self.train,
            add_caption=o["add_caption"],
            max_src_words=o["max_src_words"],
            max_caption_words=o["max_caption_words"],
        )
        if len(self.samples) <= CACHE_LIMIT:
            self._cache[i] = ex
        return ex


@dataclass
class Batch:
    src: torch.Tensor  # (B, L) bos + instruction + eos, right-padded
    pixels: torch.Tensor  # (B, 3, S, S) in [0, 1]
    prev: torch.Tensor  # (B, T) decoder prompt + target[:-1]
    target: torch.Tensor  # (B, T) pad under the prompt, then the target (ends with eos), then pad
    examples: list[OFAExample]
    prompts: list[list[int]]  # each example's decoder prompt ([bos], or src[:-1] with prev_output)


def decoder_prompt(example: OFAExample, bos: int, prompt_type: str = "none") -> list[int]:
    """OFA's ``prompt_type``: ``none`` starts the decoder at BOS, ``prev_output`` after the source
    tokens without their EOS (which begin with BOS)."""
    return list(example.src_ids[:-1]) if prompt_type == "prev_output" else [bos]


def collate(
    examples: list[OFAExample], pad: int, bos: int, device: torch.device, prompt_type: str = "none"
) -> Batch:
    """Right-padded tensors; the loss sees only the target positions (prompt positions are pad)."""
    prompts = [decoder_prompt(e, bos, prompt_type) for e in examples]
    src = torch.full((len(examples), max(len(e.src_ids) for e in examples)), pad, dtype=torch.long)
    length = max(len(p) + len(e.target_ids) - 1 for p, e in zip(prompts, examples, strict=True))
    prev = torch.full((len(examples), length), pad, dtype=torch.long)
    target = torch.full_like(prev, pad)
    for i, (p, e) in enumerate(zip(prompts, examples, strict=True)):
        src[i, : len(e.src_ids)] = torch.tensor(e.src_ids)
        row = [*p, *e.target_ids[:-1]]
        prev[i, : len(row)] = torch.tensor(row)
        target[i, len(p) - 1 : len(row)] = torch.tensor(e.target_ids)
    pixels = torch.stack([e.pixels for e in examples])
    return Batch(src.to(device), pixels.to(device), prev.to(device), target.to(device), examples, prompts)


class OFATask:
    """What training and scoring need to know about one task: its candidates (closed-set tasks),
    the decoder prompt, how references are read from examples and how predictions are scored."""

    def __init__(self, data: Seq2SeqTaskData, tokenizer: OFATokenizer, metric: str) -> None:
        self.data = data
        self.task = data.task
        self.tokenizer = tokenizer
        self.metric_name = metric
        self.metric = get_metric(metric, generative=True)
        self.inference = data.decode_options["inference"]
        self.candidates = list(data.candidates) if data.candidates is not None else None
        self.candidate_ids: list[list[int]] = []
        if self.candidates is not None:
            self.candidate_ids = [tokenizer.encode(f" {a}") for a in self.candidates]
        self.constrained_training = bool(data.options["constrained_training"]) and self.candidates is not None
        self.prompt_type = str(data.options["prompt_type"])

    def examples(self, split: str, patch_image_size: int, *, train: bool) -> ExampleSet:
        """The protocol split ``split`` formatted for the model."""
        return ExampleSet(
            self.data.split(split),
            self.task,
            self.tokenizer,
            self.data.options,
            patch_image_size,
            train=train,
        )

    def collate(self, examples: list[OFAExample], device: torch.device) -> Batch:
        return collate(examples, self.tokenizer.pad_id, self.tokenizer.bos_id, device, self.prompt_type)

    def references(self, examples: Sequence[OFAExample]) -> list[Any]:
        if self.task == "refcoco":
            return [e.meta["box"] for e in examples]
        if self.task == "snli_ve":
            return [e.meta["label"] for e in examples]
        if self.task == "vqa":
            return [e.meta["answers"] for e in examples]
        return [e.meta["refs"] for e in examples]

    def score(
        self, preds: Sequence[Any], examples: Sequence[OFAExample], report: CaptionReport | None = None
    ) -> float:
        """The task metric; for captions coco-caption's own scorers where they can run (``report``:
        the split's :meth:`caption_report` when the caller has it, so it is not computed twice)."""
        refs = self.references(examples)
        if self.task == "caption":
            scores = (report or caption_scores(list(preds), refs, spice=False)).scores
            if self.metric_name in scores:
                return scores[self.metric_name]
        return float(self.metric(list(preds), refs))

    def unanswered(self, examples: Sequence[OFAExample]) -> bool:
        """True for a VQA split whose samples carry no answers at all (the test splits), which can be
        predicted and submitted but not scored."""
        return self.task == "vqa" and len(examples) > 0 and not any(e.meta["answers"] for e in examples)

    def caption_report(self, preds: Sequence[Any], examples: Sequence[OFAExample]) -> CaptionReport | None:
        """Every caption metric beside the task metric, and which implementation ran (None off
        caption): ``benchmarks/metrics/caption.py`` ``caption_scores``."""
        if self.task != "caption":
            return None
        return caption_scores(list(preds), self.references(examples))


def sequence_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pad: int,
    smoothing: float = LABEL_SMOOTHING,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label-smoothed token cross-entropy, mean over the non-pad target tokens (OFA's criterion)."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    lp = F.log_softmax(logits, dim=-1)
    nll = -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if allowed is not None:
        smooth = -lp.masked_fill(~allowed, 0.0).sum(-1)
        n = allowed.sum(-1).float()
    else:
        smooth = -lp.sum(-1)
        n = torch.full_like(nll, float(lp.shape[-1]))
    eps_i = smoothing / (n - 1).clamp_min(1.0)
    loss = (1.0 - smoothing - eps_i) * nll + eps_i * smooth
    keep = target.ne(pad)
    return loss[keep].mean()


__all__ = ["LABEL_SMOOTHING", "Batch", "ExampleSet", "OFATask", "collate", "decoder_prompt", "sequence_loss"]
