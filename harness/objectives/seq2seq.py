"""Tasks that output text: an encoder-decoder backbone (OFA) on image + text -> text.

Same skeleton as classification (``Runner.execute``); what differs:

* Training: OFA's label-smoothed token cross-entropy (``benchmarks/ofa_tasks/task.py``
  ``sequence_loss``), teacher-forced; on the closed-set tasks the logits are masked to the tokens
  the candidate trie allows at each position, as OFA's constraint masks do.
* Evaluation: beam search (RefCOCO, caption) or all-candidate scoring (SNLI-VE, VQA), then the task
  metric. The result's ``eval.split`` is the dataset's own name of the split scored (the loader's
  ``split_names``, e.g. ``val`` or ``test2015``), ``eval.protocol_split`` the protocol's name.
* A VQA eval split without answers (OFA's ``vqa_test.tsv``: test-dev / test-std are scored only by
  EvalAI) is not scored here: the metric is left out of the run's metrics and the predictions are
  written as the official VQA results file (``benchmarks/metrics/ofa.py`` ``write_vqa_results``)
  next to the store's artifacts, ``<artifacts>/<run_id>.vqa-<split>-results.json``.
* FGSM (``harness/seq2seq_robustness.py``) attacks the input embeddings, in embedding units; the
  measure option's ``unit`` decides whether its epsilons apply (see that module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from petlbench.backbones.ofa.backbone import OFABackbone, build_ofa_backbone, find_checkpoint
from petlbench.backbones.ofa.decoding import DecodeConfig, Trie
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData
from petlbench.benchmarks.ofa_tasks.formatting import OFAExample, decode_box, strip_punctuation
from petlbench.benchmarks.ofa_tasks.task import (
    LABEL_SMOOTHING,
    Batch,
    ExampleSet,
    OFATask,
    collate,
    sequence_loss,
)
from petlbench.benchmarks.ofa_tasks.tokenizer import OFATokenizer
from petlbench.errors import UserError

from ..building import attach_method, refuse_nothing_to_train
from ..flops import count_macs
from ..robustness import check_fgsm_options
from ..seq2seq_robustness import PIXEL_UNIT, fgsm_from_options
from ..trainer import Trainer, TrainResult
from .base import Batches, Evaluation, Objective, Splits, seed_everything, train_split_name


class DecodingTask(OFATask):
    """An OFA task with its decoding: the candidate trie, the beam settings, and predictions."""

    def __init__(self, data: Seq2SeqTaskData, tokenizer: OFATokenizer, metric: str) -> None:
        super().__init__(data, tokenizer, metric)
        o = data.decode_options
        self.decode = DecodeConfig(
            beam=o["beam"],
            max_len=o["max_len"],
            min_len=o["min_len"],
            no_repeat_ngram_size=o["no_repeat_ngram_size"],
            length_penalty=o["length_penalty"],
        )
        self.trie = Trie(self.candidate_ids, tokenizer.eos_id) if self.candidates is not None else None

    def allowed_mask(self, target: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
        """(B, T, V) True where the candidate trie allows a token at a target position, or None."""
        if not self.constrained_training or self.trie is None:
            return None
        mask = torch.zeros(*target.shape, vocab_size, dtype=torch.bool, device=target.device)
        pad = self.tokenizer.pad_id
        for b, row in enumerate(target.tolist()):
            start = next((t for t, tok in enumerate(row) if tok != pad), len(row))  # after the prompt
            for t, tok in enumerate(row):
                if tok == pad:
                    mask[b, t, :] = True  # ignored by the loss anyway
                    continue
                allowed = self.trie.allowed(row[start:t])
                mask[b, t, allowed if allowed else list(range(vocab_size))] = True
        return mask

    @torch.no_grad()
    def predict(
        self,
        model: OFAGenerator,
        batch: Batch,
        *,
        text_offset: torch.Tensor | None = None,
        image_offset: torch.Tensor | None = None,
    ) -> list[Any]:
        """Predictions of one batch: boxes (RefCOCO, None when undecodable) or strings."""
        memory = model.encode(batch.src, batch.pixels, text_offset=text_offset, image_offset=image_offset)
        if self.inference == "allcand":
            assert self.candidates is not None
            prompts = batch.prompts if self.prompt_type != "none" else None
            scores = model.score(memory, self.candidate_ids, self.trie, prompts)
            return [self.candidates[int(i)] for i in scores.argmax(dim=1)]
        trie = self.trie if self.candidates else None
        if self.prompt_type == "none":
            tokens = model.generate(memory, self.decode, trie=trie)
        else:  # a prompt per example: decode one at a time
            tokens = [
                model.generate(
                    memory.select(torch.tensor([i], device=batch.src.device)),
                    self.decode,
                    trie=trie,
                    prompt=p,
                )[0]
                for i, p in enumerate(batch.prompts)
            ]
        if self.task == "refcoco":
            return [
                decode_box(t, e.meta, self.tokenizer, strict=False)
                for t, e in zip(tokens, batch.examples, strict=True)
            ]
        texts = [self.tokenizer.decode(t).strip() for t in tokens]
        return [strip_punctuation(t) for t in texts] if self.task == "caption" else texts


def predict_split(
    model: OFAGenerator, task: DecodingTask, examples: ExampleSet, device: torch.device, batch_size: int
) -> list[Any]:
    """Predictions for a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    preds: list[Any] = []
    try:
        for start in range(0, len(examples), batch_size):
            exs = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
            preds += task.predict(model, task.collate(exs, device))
    finally:
        model.train(was_training)
    return preds


def run_tokenizer(backbone: str, data: Seq2SeqTaskData) -> OFATokenizer:
    """The data's tokenizer (the smoke BPE, or the task's ``tokenizer`` arg), else the released
    checkpoint's ``vocab.json`` + ``merges.txt`` (found offline, also for a random-init run)."""
    if data.tokenizer_dir is not None:
        return OFATokenizer.load(data.tokenizer_dir)
    if backbone == "ofa-test":
        raise UserError(
            f"task {data.name!r} names no tokenizer and ofa-test has none; set the task's `tokenizer` "
            "arg to a folder with vocab.json and merges.txt"
        )
    return OFATokenizer.load(find_checkpoint(backbone.removeprefix("ofa-")))


def generative_cost(model: OFAGenerator, examples: ExampleSet, tokenizer: OFATokenizer) -> dict[str, Any]:
    """GMACs of one teacher-forced pass (encoder + decoder over the target) for the first example,
    with fvcore under the convention of ``harness/flops.py``; None when tracing fails."""
    if len(examples) == 0:
        return {"unit": "GMACs", "per_example": None}
    batch = collate([examples[0]], tokenizer.pad_id, tokenizer.bos_id, next(model.parameters()).device)
    try:
        macs, _ = count_macs(model, (batch.src, batch.pixels, batch.prev))
        value: float | None = macs / 1e9
    except Exception:  # noqa: BLE001 - counting is best effort, never fails a run
        value = None
    return {
        "unit": "GMACs",
        "per_example": value,
        "what": "encoder + teacher-forced decoder over the target, batch 1 (decoding reruns the decoder)",
        "image_size": int(examples[0].pixels.shape[-1]),
        "source_tokens": len(examples[0].src_ids),
        "target_tokens": len(examples[0].target_ids),
    }


def _show(pred: Any) -> Any:
    return [round(float(v), 1) for v in pred] if isinstance(pred, tuple) else pred


class Seq2SeqObjective(Objective):
    """Image + text -> text."""

    output = "text"
    model: OFAGenerator
    backbone: OFABackbone
    data: Seq2SeqTaskData

    @property
    def metric_name(self) -> str:
        return self.task.metric

    def check(self) -> None:
        check_fgsm_options(self.spec.measure.get("fgsm"))  # a bad unit fails before training, not after

    def build(self) -> OFAGenerator:
        """Tokenizer, backbone (vocabulary checked against it), method attached under the run's seed."""
        spec, data = self.spec, self.data
        tokenizer = run_tokenizer(spec.backbone, data)
        seed_everything(spec.seed)
        vocab = len(tokenizer) if spec.backbone == "ofa-test" else None
        backbone = build_ofa_backbone(spec.backbone, spec.pretrained, vocab_size=vocab)
        if len(tokenizer) != backbone.ofa_config.vocab_size:
            raise UserError(
                f"the tokenizer has {len(tokenizer)} tokens but {spec.backbone} has a vocabulary of "
                f"{backbone.ofa_config.vocab_size}; use the checkpoint's vocab.json/merges.txt"
            )
        method = attach_method(spec.method, spec.method_config, backbone)
        model = OFAGenerator(backbone, method)
        refuse_nothing_to_train(spec, model)
        self.model, self.backbone, self.method, self.head = model.to(self.device), backbone, method, None
        self.tokenizer = tokenizer
        self.decoding = DecodingTask(data, tokenizer, self.task.metric)
        self.patch_image_size = int(data.options["patch_image_size"] or backbone.image_size)
        return self.model

    def _examples(self, split: str, *, train: bool) -> ExampleSet:
        return self.decoding.examples(split, self.patch_image_size, train=train)

    def splits(self) -> Splits:
        self.refuse_leakage()
        protocol = self.protocol
        train = self._examples(train_split_name(self.spec, protocol), train=True)
        selection = self._examples(protocol.selection_split, train=False)
        return Splits(train, selection, selection if self.searching else self.evaluation_split())

    def evaluation_split(self) -> ExampleSet:
        return self._examples(self.protocol.eval_split, train=False)

    def fit(self, trainer: Trainer, train: Any, evaluate: Callable[[], dict[str, float]]) -> TrainResult:
        task, pad = self.decoding, self.tokenizer.pad_id

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            batch = task.collate([train[int(i)] for i in idx], self.device)
            logits = self.model(batch.src, batch.pixels, batch.prev)
            return sequence_loss(
                logits, batch.target, pad, allowed=task.allowed_mask(batch.target, logits.shape[-1])
            )

        return trainer.fit(len(train), batch_loss, evaluate)

    def batches(self, train: Any) -> Batches:
        size = self.protocol.batch_size

        def batches() -> Iterator[Batch]:
            for start in range(0, len(train), size):
                exs = [train[i] for i in range(start, min(start + size, len(train)))]
                yield self.decoding.collate(exs, self.device)

        return batches

    def train_info(self) -> dict[str, Any]:
        masked = ", logits masked to the candidate trie" if self.decoding.constrained_training else ""
        return {"loss": f"label-smoothed ({LABEL_SMOOTHING}) token cross-entropy{masked}"}

    def _predict(self, split: ExampleSet) -> list[Any]:
        return predict_split(self.model, self.decoding, split, self.device, self.protocol.eval_batch_size)

    def score(self, split: Any) -> float:
        return self.decoding.score(self._predict(split), [split[i] for i in range(len(split))])

    def _split_key(self) -> str:
        return self.protocol.selection_split if self.searching else self.protocol.eval_split

    def evaluate(self, final: Any) -> Evaluation:
        task = self.decoding
        examples = [final[i] for i in range(len(final))]
        unanswered = task.unanswered(examples)
        preds = self._predict(final)
        report = None if unanswered else task.caption_report(preds, examples)
        metrics = {} if unanswered else {self.metric_name: task.score(preds, examples, report)}
        split = self.data.split_name(self._split_key())  # the dataset's own name of the split scored
        info: dict[str, Any] = {
            "split": split,
            "protocol_split": self._split_key(),
            "scored": not unanswered,
            "inference": task.inference,
            "decoding": {**task.decode.__dict__, "trie": task.trie is not None and task.inference == "beam"},
            "candidates": len(task.candidates) if task.candidates is not None else None,
            "patch_image_size": self.patch_image_size,
            "extra": report.scores if report is not None else {},
            "samples": [_show(p) for p in preds[:5]],
        }
        if report is not None:  # backend, what was skipped and why; the python fallback names its deviation
            info["caption_metrics"] = report.info()
        if unanswered:
            info["why_unscored"] = (
                f"split {split!r} has no answers (VQA test-dev/test-std are scored by EvalAI); its "
                "predictions are in the submission file"
            )
            info["submission"] = self._write_vqa_submission(split, preds, examples)
        self._unanswered = unanswered
        return Evaluation(metrics, info)

    def _write_vqa_submission(
        self, split: str, preds: Sequence[Any], examples: Sequence[OFAExample]
    ) -> dict[str, Any]:
        """The official VQA results file of an unanswered split, beside the run's saved model in the
        store's artifacts folder; None (with the reason) when the runner keeps no artifacts."""
        from petlbench.benchmarks.metrics.ofa import write_vqa_results

        artifact = self.context.artifact_path(self.spec.run_id)
        if artifact is None:
            return {"path": None, "why": "the runner has no artifacts folder (no checkpoint_dir)"}
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in split)
        path = artifact.with_name(f"{self.spec.run_id}.vqa-{safe}-results.json")
        ids = [e.meta["uid"] for e in examples]
        return {"split": split, **write_vqa_results(path, ids, [str(p) for p in preds])}

    def cost(self, final: Any) -> dict[str, Any]:
        return generative_cost(self.model, final, self.tokenizer)

    def attack(self, final: Any, options: dict[str, Any]) -> dict[str, Any]:
        n = (
            len(final)
            if options.get("max_examples") is None
            else min(len(final), int(options["max_examples"]))
        )
        if self.decoding.unanswered([final[i] for i in range(n)]):
            return {"skipped": "the eval split has no gold answers to attack the loss of"}
        return fgsm_from_options(
            self.model,
            self.decoding,
            final,
            options,
            device=self.device,
            batch_size=self.protocol.eval_batch_size,
        )

    def remeasure_options(self, epsilons: list[float] | None, max_examples: int | None) -> dict[str, Any]:
        """Epsilons given to ``bench robust`` are pixel fractions: the embedding default grid is used
        instead (``harness/seq2seq_robustness.py``)."""
        return {"epsilons": epsilons, "unit": PIXEL_UNIT, "max_examples": max_examples}

    def task_info(self) -> dict[str, Any] | None:
        return {
            "format": self.data.task,
            "options": {k: v for k, v in self.data.options.items() if k != "max_examples"},
        }


__all__ = ["DecodingTask", "Seq2SeqObjective", "generative_cost", "predict_split", "run_tokenizer"]
