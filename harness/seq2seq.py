"""The generative path of a run: an encoder-decoder backbone (OFA) on an image+text -> text task.

Same conventions as the classification path (``runner.py``): the backbone is frozen and built
under the run's seed, the method attaches through slots, the trainer's loop (optimizer, warmup +
cosine per step, clipping, per-epoch checkpoints, exact resume) runs unchanged through
:meth:`Trainer.fit_loss`, and the result carries metrics, trainable parameters and cost.

* Training: teacher-forced cross-entropy over the target tokens with label smoothing 0.1 (OFA's
  ``adjust_label_smoothed_cross_entropy``: ``(1 - eps - eps_i) * nll + eps_i * sum(-log p)``, eps_i
  = eps / (allowed - 1)); on the closed-set tasks the logits are masked to the tokens the candidate
  trie allows at each position, as OFA's constraint masks do.
* Evaluation: beam search (RefCOCO, caption) or all-candidate scoring (SNLI-VE, VQA), then the
  task metric (Acc@0.5, accuracy, VQA soft accuracy, CIDEr-D; caption BLEU-4 / METEOR beside it).
  The result's ``eval.split`` is the dataset's own name of the split scored (the loader's
  ``split_names``, e.g. ``val`` or ``test2015``), ``eval.protocol_split`` the protocol's name.
* A VQA eval split without answers (OFA's ``vqa_test.tsv``: test-dev / test-std are scored only by
  EvalAI) is not scored here: the metric is left out of the run's metrics and the predictions are
  written as the official VQA results file (``benchmarks/metrics/ofa.py`` ``write_vqa_results``)
  next to the store's artifacts, ``<artifacts>/<run_id>.vqa-<split>-results.json``.
* FGSM (``harness/seq2seq_robustness.py``) attacks the input embeddings, in embedding units; the
  measure option's ``unit`` decides whether its epsilons apply (see that module).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from petlbench.backbones.ofa.backbone import OFABackbone, build_ofa_backbone, find_checkpoint
from petlbench.backbones.ofa.decoding import DecodeConfig, Trie
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData
from petlbench.benchmarks.datasets.ofa_tsv import OFASample
from petlbench.benchmarks.metrics import get_metric
from petlbench.benchmarks.metrics.ofa import CaptionReport, caption_scores
from petlbench.benchmarks.ofa_tasks.formatting import (
    OFAExample,
    decode_box,
    format_example,
    strip_punctuation,
)
from petlbench.benchmarks.ofa_tasks.tokenizer import OFATokenizer
from petlbench.errors import UserError

from .building import attach_method, refuse_nothing_to_train
from .leakage import refuse_leakage
from .memory import PeakMemory

if TYPE_CHECKING:
    from petlbench.benchmarks.suites import TaskSpec
    from petlbench.methods.base import Method

    from .runner import Runner
    from .spec import RunSpec

LABEL_SMOOTHING = 0.1
CACHE_LIMIT = 4096  # formatted examples kept in memory per split (smoke sets fit; big splits stream)


# ----- examples ---------------------------------------------------------------------------------


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


# ----- the task: tries, loss masks, predictions, metric -----------------------------------------


class GenerativeTask:
    """What training and evaluation need to know about one task."""

    def __init__(self, data: Seq2SeqTaskData, tokenizer: OFATokenizer, metric: str) -> None:
        self.data = data
        self.task = data.task
        self.tokenizer = tokenizer
        self.metric_name = metric
        self.metric = get_metric(metric, generative=True)
        o = data.decode_options
        self.inference = o["inference"]
        self.decode = DecodeConfig(
            beam=o["beam"],
            max_len=o["max_len"],
            min_len=o["min_len"],
            no_repeat_ngram_size=o["no_repeat_ngram_size"],
            length_penalty=o["length_penalty"],
        )
        self.candidates = list(data.candidates) if data.candidates is not None else None
        self.trie: Trie | None = None
        self.candidate_ids: list[list[int]] = []
        if self.candidates is not None:
            self.candidate_ids = [tokenizer.encode(f" {a}") for a in self.candidates]
            self.trie = Trie(self.candidate_ids, tokenizer.eos_id)
        self.constrained_training = bool(data.options["constrained_training"]) and self.trie is not None
        self.prompt_type = str(data.options["prompt_type"])

    def collate(self, examples: list[OFAExample], device: torch.device) -> Batch:
        return collate(examples, self.tokenizer.pad_id, self.tokenizer.bos_id, device, self.prompt_type)

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


def predict_split(
    model: OFAGenerator, task: GenerativeTask, examples: ExampleSet, device: torch.device, batch_size: int
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


def evaluate_split(
    model: OFAGenerator, task: GenerativeTask, examples: ExampleSet, device: torch.device, batch_size: int
) -> tuple[float, list[Any]]:
    """(metric, predictions) of a whole split, in eval mode."""
    preds = predict_split(model, task, examples, device, batch_size)
    return task.score(preds, [examples[i] for i in range(len(examples))]), preds


# ----- building ---------------------------------------------------------------------------------


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


def build_generator(
    spec: RunSpec, data: Seq2SeqTaskData, device: torch.device
) -> tuple[OFAGenerator, OFATokenizer]:
    """Tokenizer, backbone (vocabulary checked against it), method attached under the run's seed."""
    from .runner import seed_everything

    pretrained = spec.pretrained
    tokenizer = run_tokenizer(spec.backbone, data)
    seed_everything(spec.seed)
    vocab = len(tokenizer) if spec.backbone == "ofa-test" else None
    backbone = build_ofa_backbone(spec.backbone, pretrained, vocab_size=vocab)
    if len(tokenizer) != backbone.ofa_config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but {spec.backbone} has a vocabulary of "
            f"{backbone.ofa_config.vocab_size}; use the checkpoint's vocab.json/merges.txt"
        )
    backbone.tokenizer = tokenizer  # type: ignore[assignment]  # Backbone types CLIP's callable tokenizers
    model = OFAGenerator(backbone, attach_method(spec, backbone))
    refuse_nothing_to_train(spec, model)
    return model.to(device), tokenizer


def _check_pairing(spec: RunSpec, data: Any) -> None:
    from petlbench.backbones.registry import backbone_entry

    generative_data = isinstance(data, Seq2SeqTaskData)
    generative_backbone = backbone_entry(spec.backbone).generative
    if generative_data and not generative_backbone:
        raise UserError(
            f"task {spec.task!r} is generative (image + text -> text): it needs an encoder-decoder backbone "
            f"(ofa-*), not {spec.backbone!r}"
        )
    if generative_backbone and not generative_data:
        raise UserError(
            f"{spec.backbone!r} is a generative encoder-decoder; task {spec.task!r} is classification. "
            "Use a generative suite (ofa-smoke, ofa)"
        )


# ----- one run ------------------------------------------------------------------------------------


def run_seq2seq(
    runner: Runner,
    spec: RunSpec,
    task_spec: TaskSpec,
    data: Any,
    on_step: Callable[[int, int, float], None] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and evaluate one generative spec; returns (metrics, result) like the classification path."""
    from .robustness import check_fgsm_options
    from .runner import _dtype_name, count_parameters, protocol_of

    _check_pairing(spec, data)
    check_fgsm_options(spec.measure.get("fgsm"))  # a bad unit fails before training, not after
    device = runner.device
    protocol = protocol_of(spec)
    model, tokenizer = build_generator(spec, data, device)
    backbone, method = model.backbone, cast("Method | None", model.method)  # attach_method's
    assert isinstance(backbone, OFABackbone) and method is not None
    task = GenerativeTask(data, tokenizer, task_spec.metric)
    size = int(data.options["patch_image_size"] or backbone.image_size)
    searching = spec.stage == "search"
    refuse_leakage(
        task_spec, runner.data_root, (protocol.train_split, protocol.selection_split), protocol.eval_split
    )
    train = ExampleSet(data.split(protocol.train_split), data.task, tokenizer, data.options, size, train=True)
    selection = ExampleSet(
        data.split(protocol.selection_split), data.task, tokenizer, data.options, size, train=False
    )
    final = (
        selection
        if searching
        else ExampleSet(
            data.split(protocol.eval_split), data.task, tokenizer, data.options, size, train=False
        )
    )
    bs = protocol.eval_batch_size
    selection_key = f"selection_{task.metric_name}"

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        batch = task.collate([train[int(i)] for i in idx], device)
        logits = model(batch.src, batch.pixels, batch.prev)
        return sequence_loss(
            logits, batch.target, tokenizer.pad_id, allowed=task.allowed_mask(batch.target, logits.shape[-1])
        )

    def batches() -> Iterator[Batch]:
        for start in range(0, len(train), protocol.batch_size):
            exs = [train[i] for i in range(start, min(start + protocol.batch_size, len(train)))]
            yield task.collate(exs, device)

    result: dict[str, Any] = {}
    if type(method).trains:
        with PeakMemory(device) as train_peak:
            trained = runner._train_stages(
                spec,
                protocol,
                model,  # type: ignore[arg-type]  # the stage loop uses its .head and nn.Module API only
                method,
                None,
                on_step,
                lambda: {selection_key: evaluate_split(model, task, selection, device, bs)[0]},
                False,
                fit=lambda trainer, evaluate: trainer.fit_loss(len(train), batch_loss, evaluate),
                batches=batches,
                train_examples=len(train),
            )
        trained["train"]["memory"] = train_peak.result()
        trained["train"]["loss"] = f"label-smoothed ({LABEL_SMOOTHING}) token cross-entropy" + (
            ", logits masked to the candidate trie" if task.constrained_training else ""
        )
        result.update(trained)
    selection_score = evaluate_split(model, task, selection, device, bs)[0]
    examples = [final[i] for i in range(len(final))]
    unanswered = task.unanswered(examples)
    with PeakMemory(device) as eval_peak:
        t0 = time.perf_counter()
        preds = predict_split(model, task, final, device, bs)
        report = None if unanswered else task.caption_report(preds, examples)
        final_score = task.score(preds, examples, report)  # the caption report's, not a second run
        eval_time = time.perf_counter() - t0
    split_key = protocol.selection_split if searching else protocol.eval_split
    metrics = {selection_key: selection_score}
    if not unanswered:
        metrics[task.metric_name] = final_score
    result["parameters"] = count_parameters(method, model.head, backbone)
    result["eval"] = {
        "split": data.split_name(split_key),  # the dataset's own name of the split scored
        "protocol_split": split_key,
        "scored": not unanswered,
        "examples": len(final),
        "examples_per_second": len(final) / max(1e-9, eval_time),
        "inference": task.inference,
        "decoding": {**task.decode.__dict__, "trie": task.trie is not None and task.inference == "beam"},
        "candidates": len(task.candidates) if task.candidates is not None else None,
        "patch_image_size": size,
        "dtype": _dtype_name(device),
        "memory": eval_peak.result(),
        "extra": report.scores if report is not None else {},
        "samples": [_show(p) for p in preds[:5]],
    }
    if report is not None:  # backend, what was skipped and why; the python fallback names its deviation
        result["eval"]["caption_metrics"] = report.info()
    if unanswered:
        result["eval"]["why_unscored"] = (
            f"split {data.split_name(split_key)!r} has no answers (VQA test-dev/test-std are scored by "
            "EvalAI); its predictions are in the submission file"
        )
        result["eval"]["submission"] = _write_vqa_submission(
            runner, spec, data.split_name(split_key), preds, examples
        )
    result["cost"] = generative_cost(model, final, tokenizer)
    if "fgsm" in spec.measure and not searching:
        from .seq2seq_robustness import fgsm_from_options

        if unanswered:
            fgsm: dict[str, Any] = {"skipped": "the eval split has no gold answers to attack the loss of"}
        else:
            fgsm = fgsm_from_options(model, task, final, spec.measure["fgsm"], device=device, batch_size=bs)
        result["robustness"] = {"fgsm": fgsm}
    if not searching:
        runner._save_artifact(spec, model)  # type: ignore[arg-type]
    result["method"] = method.describe()
    result["metric"] = task.metric_name
    result["task"] = {
        "format": data.task,
        "options": {k: v for k, v in data.options.items() if k != "max_examples"},
    }
    return metrics, result


def remeasure_seq2seq(
    runner: Runner,
    spec: RunSpec,
    task_spec: TaskSpec,
    data: Seq2SeqTaskData,
    tensors: dict[str, torch.Tensor],
    epsilons: Sequence[float] | None,
    max_examples: int | None,
    unit: str | None = None,
) -> dict[str, Any]:
    """`bench robust RUN` for a generative run: rebuild it from its saved method state, attack again.
    ``epsilons`` are applied only when ``unit`` is ``"embedding"``; otherwise (pixel epsilons, or
    none) the embedding default grid is used (``harness/seq2seq_robustness.py``)."""
    from .runner import protocol_of
    from .seq2seq_robustness import PIXEL_UNIT, fgsm_from_options

    model, tokenizer = build_generator(spec, data, runner.device)
    method = cast("Method | None", model.method)
    assert method is not None
    method.load_method_state(
        {k[7:]: v.to(runner.device) for k, v in tensors.items() if k.startswith("method.")}
    )
    task = GenerativeTask(data, tokenizer, task_spec.metric)
    size = int(data.options["patch_image_size"] or model.backbone.image_size)
    protocol = protocol_of(spec)
    final = ExampleSet(data.split(protocol.eval_split), data.task, tokenizer, data.options, size, train=False)
    n = len(final) if max_examples is None else min(len(final), int(max_examples))
    if task.unanswered([final[i] for i in range(n)]):
        raise UserError(
            f"run {spec.run_id}: split {data.split_name(protocol.eval_split)!r} has no answers, so there is "
            "no gold loss to attack"
        )
    options = {
        "epsilons": None if epsilons is None else list(epsilons),
        "unit": unit or PIXEL_UNIT,
        "max_examples": max_examples,
    }
    return fgsm_from_options(
        model, task, final, options, device=runner.device, batch_size=protocol.eval_batch_size
    )


def _write_vqa_submission(
    runner: Runner, spec: RunSpec, split: str, preds: Sequence[Any], examples: Sequence[OFAExample]
) -> dict[str, Any]:
    """The official VQA results file of an unanswered split, beside the run's saved model in the
    store's artifacts folder; None (with the reason) when the runner keeps no artifacts."""
    from petlbench.benchmarks.metrics.ofa import write_vqa_results

    artifact = runner.artifact_path(spec.run_id)
    if artifact is None:
        return {"path": None, "why": "the runner has no artifacts folder (no checkpoint_dir)"}
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in split)
    path = artifact.with_name(f"{spec.run_id}.vqa-{safe}-results.json")
    ids = [e.meta["uid"] for e in examples]
    return {"split": split, **write_vqa_results(path, ids, [str(p) for p in preds])}


def _show(pred: Any) -> Any:
    return [round(float(v), 1) for v in pred] if isinstance(pred, tuple) else pred


def generative_cost(model: OFAGenerator, examples: ExampleSet, tokenizer: OFATokenizer) -> dict[str, Any]:
    """GMACs of one teacher-forced pass (encoder + decoder over the target) for the first example,
    with fvcore under the convention of ``harness/flops.py``; None when tracing fails."""
    from .flops import count_macs

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


__all__ = [
    "Batch",
    "ExampleSet",
    "GenerativeTask",
    "build_generator",
    "collate",
    "evaluate_split",
    "run_seq2seq",
    "sequence_loss",
]
