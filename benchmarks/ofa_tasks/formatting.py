"""How OFA turns a tsv sample into model inputs and targets, per task (reference A3).

Every instruction starts with a space (the BPE convention) and the source is ``<s> + BPE(instruction)
+ </s>``. Text fields go through :func:`pre_caption` / :func:`pre_question` (lowercase, strip *leading*
punctuation, ``-`` and ``/`` to spaces, squeeze spaces, truncate to a word budget), as OFA's
``data/ofa_dataset.py`` does.

| task    | instruction                                                  | target                         |
|---------|--------------------------------------------------------------|--------------------------------|
| refcoco | `` which region does the text " {expr} " describe?``         | 4 bin tokens + ``</s>``        |
| snli_ve | `` does the image describe " {hypothesis} "?`` (or the       | `` yes`` / `` no`` / `` maybe``|
|         | ``add_caption`` form `` can image and text1 " {premise} "    |                                |
|         | imply text2 " {hypothesis} "?``)                             |                                |
| caption | `` what does the image describe?``                           | `` {caption}``, punctuation    |
|         |                                                              | stripped                       |
| vqa     | `` {question}`` (``?`` appended when missing)                | `` {highest-confidence answer}``|

Pixels are the image resized to S x S with bicubic filtering, as floats in [0, 1]; the mean = std
= 0.5 normalisation belongs to the model. For RefCOCO OFA's ``RandomResize([S], max_size=S)`` also
ends at S x S for every aspect ratio, so one resize serves all four tasks.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from petlbench.benchmarks.datasets.ofa_tsv import TASKS, OFASample

from .tokenizer import OFATokenizer

REFCOCO_TEMPLATE = ' which region does the text " {} " describe?'
SNLI_TEMPLATE = ' does the image describe " {} "?'
SNLI_CAPTION_TEMPLATE = ' can image and text1 " {} " imply text2 " {} "?'
CAPTION_INSTRUCTION = " what does the image describe?"
SNLI_ANSWERS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
SNLI_CANDIDATES = ("yes", "no", "maybe")

_LEADING = ",.!?*#:;~"
_NO_PUNCT = str.maketrans({c: None for c in string.punctuation})


def _pre_text(text: str, max_words: int | None, *, person: bool) -> str:
    text = text.lower().lstrip(_LEADING).replace("-", " ").replace("/", " ")
    if person:
        text = text.replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_caption(text: str, max_words: int | None = None) -> str:
    """OFA's ``pre_caption``: note only *leading* punctuation goes (``"a dog."`` keeps its period)."""
    return _pre_text(text, max_words, person=True)


def pre_question(text: str, max_words: int | None = None) -> str:
    """OFA's ``pre_question`` (as ``pre_caption`` without the ``<person>`` rewrite)."""
    return _pre_text(text, max_words, person=False)


def strip_punctuation(text: str) -> str:
    """Every ``string.punctuation`` character removed (OFA's caption targets and references)."""
    return text.translate(_NO_PUNCT).strip()


# ----- boxes <-> location bins --------------------------------------------------------------------


def box_to_bins(
    box: Sequence[float],
    image_size: tuple[int, int],
    *,
    patch_image_size: int,
    max_image_size: int = 512,
    num_bins: int = 1000,
) -> list[int]:
    """Bin indices of an xyxy box in original pixels: ``round(x * (S / W) / max_image_size * (B - 1))``.

    The box is scaled with the S x S resize and then divided by ``max_image_size``, not by S (OFA's
    ``Normalize(max_image_size)``), so with S = 480 and the default 512 bins only reach ~937; decoding
    multiplies by ``max_image_size`` again, so the two stay consistent. Arithmetic is in float32 and
    rounding is half-to-even, like OFA's torch code. Bins are clipped to [0, B - 1] (OFA does not
    clip; it only matters for boxes outside the image or S > max_image_size).
    """
    w, h = image_size
    ratio = np.array([patch_image_size / w, patch_image_size / h] * 2, dtype=np.float32)
    scaled = np.asarray(box, dtype=np.float32) * ratio / np.float32(max_image_size)
    bins = np.round(scaled * np.float32(num_bins - 1))
    return [int(v) for v in np.clip(bins, 0, num_bins - 1)]


def bins_to_box(
    bins: Sequence[int],
    image_size: tuple[int, int],
    *,
    patch_image_size: int,
    max_image_size: int = 512,
    num_bins: int = 1000,
) -> tuple[float, float, float, float]:
    """Inverse of :func:`box_to_bins`: ``bin / (B - 1) * max_image_size / (S / W)`` (OFA refcoco.py)."""
    w, h = image_size
    rw, rh = patch_image_size / w, patch_image_size / h
    x0, y0, x1, y1 = (b / (num_bins - 1) * max_image_size for b in bins)
    return (x0 / rw, y0 / rh, x1 / rw, y1 / rh)


# ----- examples -----------------------------------------------------------------------------------


@dataclass
class OFAExample:
    """One model-ready example. ``src_ids`` = bos + instruction + eos; ``target_ids`` end with eos;
    ``pixels`` (3, S, S) float in [0, 1], not normalised. ``meta`` holds what evaluation needs:
    ``task``, ``uid``, ``image_id``, ``size`` (original w, h), ``w_resize_ratio``/``h_resize_ratio``,
    ``instruction`` and ``target`` text, and per task ``box`` (gt, original pixels),
    ``patch_image_size``/``max_image_size``/``num_bins`` (refcoco), ``label`` and ``candidates``
    (snli_ve), ``refs`` (caption), ``answers`` (dict answer -> soft score) and ``candidates`` (vqa)."""

    src_ids: list[int]
    target_ids: list[int]
    pixels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def resize_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """(3, S, S) float tensor in [0, 1] of an RGB image resized with bicubic filtering."""
    arr = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown OFA task {task!r}; known: {', '.join(TASKS)}")


def format_example(
    task: str,
    sample: OFASample,
    tokenizer: OFATokenizer,
    *,
    patch_image_size: int,
    max_image_size: int = 512,
    num_bins: int = 1000,
    train: bool,
    add_caption: bool = False,
    max_src_words: int | None = 80,
    max_caption_words: int | None = 20,
) -> OFAExample:
    """Format one sample as OFA does. ``train`` picks the caption target (the first/only caption,
    truncated to ``max_caption_words``; eval keeps every reference in ``meta['refs']``);
    ``add_caption`` is SNLI-VE's premise-in-the-prompt variant; ``max_src_words`` truncates the text
    put into the instruction (OFA's ``max_src_length``)."""
    _check_task(task)
    if num_bins > tokenizer.num_bins:
        raise ValueError(f"num_bins={num_bins} but the tokenizer has only {tokenizer.num_bins} bin tokens")
    image = sample.pil()
    w, h = image.size
    meta: dict[str, Any] = {
        "task": task,
        "uid": sample.uid,
        "image_id": sample.image_id,
        "size": (w, h),
        "w_resize_ratio": patch_image_size / w,
        "h_resize_ratio": patch_image_size / h,
        "patch_image_size": patch_image_size,
    }
    eos = [tokenizer.eos_id]
    if task == "refcoco":
        if sample.box is None:
            raise ValueError(f"refcoco sample {sample.uid!r} has no box")
        instruction = REFCOCO_TEMPLATE.format(pre_caption(sample.text, max_src_words))
        bins = box_to_bins(
            sample.box,
            (w, h),
            patch_image_size=patch_image_size,
            max_image_size=max_image_size,
            num_bins=num_bins,
        )
        target_ids = [tokenizer.bin_id(b) for b in bins] + eos
        meta.update(box=tuple(sample.box), bins=bins, max_image_size=max_image_size, num_bins=num_bins)
        meta["target"] = " ".join(f"<bin_{b}>" for b in bins)
    elif task == "snli_ve":
        hyp = pre_caption(sample.hypothesis, max_src_words)
        if add_caption:
            instruction = SNLI_CAPTION_TEMPLATE.format(pre_caption(sample.premise, max_src_words), hyp)
        else:
            instruction = SNLI_TEMPLATE.format(hyp)
        label = SNLI_ANSWERS[sample.label]
        target_ids = tokenizer.encode(f" {label}") + eos
        meta.update(label=label, target=f" {label}", candidates=list(SNLI_CANDIDATES))
    elif task == "caption":
        instruction = CAPTION_INSTRUCTION
        refs = [strip_punctuation(" ".join(c.split())) for c in sample.captions]
        if train:
            words = strip_punctuation(sample.captions[0] if sample.captions else "").split()
            target = " ".join(words[:max_caption_words] if max_caption_words is not None else words)
        else:
            target = refs[0] if refs else ""
        target_ids = tokenizer.encode(f" {target}") + eos
        meta.update(refs=refs, target=f" {target}")
    else:  # vqa
        question = pre_question(sample.question, max_src_words)
        if not question.endswith("?"):
            question += "?"
        instruction = f" {question}"
        # the first of the highest-confidence answers, like Python's max over OFA's ref_dict
        answer = max(sample.answers, key=sample.answers.__getitem__) if sample.answers else ""
        target_ids = tokenizer.encode(f" {answer}") + eos
        meta.update(answers=dict(sample.answers), answer=answer, target=f" {answer}")
    meta["instruction"] = instruction
    src_ids = [tokenizer.bos_id] + tokenizer.encode(instruction) + eos
    return OFAExample(src_ids, target_ids, resize_pixels(image, patch_image_size), meta)


def candidate_answers(task: str, samples_or_answers: Iterable[OFASample] | Iterable[str]) -> list[str]:
    """The closed answer set: SNLI-VE's yes/no/maybe, or for VQA every answer of the given samples
    (or the given answer strings) in order of first appearance, duplicates dropped."""
    _check_task(task)
    if task == "snli_ve":
        return list(SNLI_CANDIDATES)
    if task != "vqa":
        raise ValueError(f"task {task!r} has no candidate answer set (only snli_ve and vqa do)")
    seen: dict[str, None] = {}
    for item in samples_or_answers:
        for ans in item.answers if isinstance(item, OFASample) else (item,):
            seen.setdefault(ans, None)
    return list(seen)


def candidates_for(
    task: str, samples_or_answers: Iterable[OFASample] | Iterable[str], tokenizer: OFATokenizer
) -> list[list[int]]:
    """Token ids (each `` {answer}`` + eos) of :func:`candidate_answers`, in the same order: for
    OFA's ``allcand`` scoring and the constrained-decoding trie."""
    return [
        tokenizer.encode(f" {a}") + [tokenizer.eos_id] for a in candidate_answers(task, samples_or_answers)
    ]


def decode_box(
    bin_token_ids: Sequence[int],
    meta: dict[str, Any],
    tokenizer: OFATokenizer,
    *,
    strict: bool = True,
) -> tuple[float, float, float, float] | None:
    """The xyxy box in original-image pixels from generated tokens (bos/eos/pad skipped, the first
    four kept). A token that is not a bin, or fewer than four, raises ValueError, or gives None when
    ``strict`` is False (score it as a miss)."""
    skip = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    ids = [int(t) for t in bin_token_ids if int(t) not in skip][:4]
    bins = [tokenizer.bin_index(t) for t in ids]
    if len(bins) < 4 or any(b is None for b in bins):
        if not strict:
            return None
        raise ValueError(f"expected four <bin_i> tokens, got {[tokenizer.token(t) for t in ids]}")
    return bins_to_box(
        [int(b) for b in bins if b is not None],
        tuple(meta["size"]),
        patch_image_size=int(meta["patch_image_size"]),
        max_image_size=int(meta["max_image_size"]),
        num_bins=int(meta["num_bins"]),
    )
