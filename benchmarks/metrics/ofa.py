"""Metrics of OFA's four tasks (reference A5): RefCOCO Acc@0.5, SNLI-VE accuracy, VQA accuracy
(OFA's soft score and the official ``vqaEval.py``), and the caption metrics of ``caption.py``.

Unlike the classification metrics of this package these score boxes and strings: they register as
generative metrics, ``fn(predictions, references) -> float`` in percent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .caption import (
    CaptionReport,
    bleu,
    bleu4,
    caption_scores,
    cider_d,
    cider_d_per_caption,
    coco_caption_unavailable,
    meteor_exact,
    ptb_tokenize,
)
from .registry import METRICS, MetricEntry

Box = Sequence[float]

# ----- RefCOCO ------------------------------------------------------------------------------------


def box_iou(a: Box, b: Box) -> float:
    """IoU of two xyxy boxes as OFA scores grounding (``utils/eval_utils.py``), with no "+1 pixel".

    ``inter / (area_a + area_b - inter + 1e-6)``, and 0 when the intersection has no positive width
    and height: disjoint or edge-touching boxes, zero-area boxes, and inverted boxes (x1 < x0 or
    y1 < y0, which a model can emit); coordinates are not sorted, so an inverted prediction misses
    as it does in OFA.
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / (union + 1e-6)


def refcoco_accuracy(
    pred_boxes: Sequence[Box | None], gt_boxes: Sequence[Box], threshold: float = 0.5
) -> float:
    """Acc@threshold in percent: the share of predictions with IoU >= threshold against the tsv's
    ground-truth box, both in original-image pixels. A None prediction (no decodable box) misses."""
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} predicted boxes for {len(gt_boxes)} ground-truth boxes")
    if not gt_boxes:
        raise ValueError("no boxes to score")
    hits = sum(
        1 for p, g in zip(pred_boxes, gt_boxes, strict=True) if p is not None and box_iou(p, g) >= threshold
    )
    return 100.0 * hits / len(gt_boxes)


# ----- SNLI-VE ------------------------------------------------------------------------------------


def snli_ve_accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Exact-match accuracy in percent of predicted answers (``yes``/``no``/``maybe``) against the
    labels, both stripped (OFA's ``ref_dict = {label: 1.0}``)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")
    return 100.0 * sum(p.strip() == y.strip() for p, y in zip(preds, labels, strict=True)) / len(labels)


# ----- VQA ----------------------------------------------------------------------------------------

# vqaEval.py (GT-Vision-Lab/VQA) normalisation tables. Keys with capitals ("Im", "Ive", "Id've") can
# never match after lowercasing; they are kept because the official table has them.
_CONTRACTIONS_SRC = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've something'dve:something'd've
somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've
therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
VQA_CONTRACTIONS: dict[str, str] = dict(item.split(":", 1) for item in _CONTRACTIONS_SRC.split())
VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
VQA_ARTICLES = ("a", "an", "the")
VQA_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
# "(?!<=\d)" is a typo for a look-behind in the official code; as written it never fails, so any period
# not followed by a digit goes ("3.5" keeps its period, "cat." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def vqa_process_punctuation(text: str) -> str:
    """vqaEval's ``processPunctuation``. A mark next to a space, or any mark at all when the answer
    has a digit-comma-digit (``10,000``), is deleted; otherwise it becomes a space (``red,blue`` ->
    ``red blue``). Then periods not followed by a digit are deleted, at most 32 of them (the official
    code passes ``re.UNICODE`` = 32 as ``sub``'s ``count``)."""
    out = text
    comma_number = _COMMA_STRIP.search(text) is not None
    for p in VQA_PUNCT:
        if (p + " " in text or " " + p in text) or comma_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def vqa_process_digit_article(text: str) -> str:
    """vqaEval's ``processDigitArticle``: lowercase, number words to digits, articles dropped,
    apostrophe-less contractions restored (``dont`` -> ``don't``)."""
    words = [VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation of a predicted answer: newlines/tabs to spaces, strip, then
    :func:`vqa_process_punctuation` and :func:`vqa_process_digit_article`
    (``"Two"`` -> ``"2"``, ``"the cat."`` -> ``"cat"``, ``"10,000"`` -> ``"10000"``)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(answer))


def vqa_official_accuracy(pred: str, human_answers: Sequence[str]) -> float:
    """One question's official VQA accuracy in [0, 1]: the mean over the leave-one-out subsets of the
    human answers of ``min(1, #matches in the subset / 3)``.

    As vqaEval.py: the prediction is normalised (:func:`normalize_vqa_answer`); the human answers get
    only :func:`vqa_process_punctuation`, and only when they are not all identical.
    """
    if not human_answers:
        raise ValueError("no human answers to score against")
    res = normalize_vqa_answer(pred)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in human_answers]
    if len(set(gts)) > 1:
        gts = [vqa_process_punctuation(a) for a in gts]
    return _leave_one_out(res, gts)


def _leave_one_out(res: str, answers: Sequence[str]) -> float:
    """Mean over i of ``min(1, #{j != i: answers[j] == res} / 3)``: each subset drops exactly one
    answer (the official code drops one answer dict, and dicts differ by ``answer_id``)."""
    accs = [
        min(1.0, sum(1 for j, a in enumerate(answers) if j != i and a == res) / 3.0)
        for i in range(len(answers))
    ]
    return sum(accs) / len(accs)


def vqa_official_overall(preds: Sequence[str], human_answers: Sequence[Sequence[str]]) -> float:
    """vqaEval's overall accuracy: percent, rounded to 2 decimals."""
    if len(preds) != len(human_answers):
        raise ValueError(f"{len(preds)} predictions for {len(human_answers)} questions")
    if not preds:
        raise ValueError("no questions to score")
    accs = [vqa_official_accuracy(p, a) for p, a in zip(preds, human_answers, strict=True)]
    return round(100.0 * sum(accs) / len(accs), 2)


def vqa_soft_score(answers: Sequence[str]) -> dict[str, float]:
    """The tsv's ``conf`` of each distinct human answer (answers compared as given): 0.3 / 0.6 / 0.9 /
    1.0 for 1 / 2 / 3 / >= 4 of 10 annotators, the closed form of the official score (A5.3)."""
    return {a: _leave_one_out(a, answers) for a in dict.fromkeys(answers)}


def vqa_soft_accuracy(
    preds: Sequence[str], answers: Sequence[dict[str, float]], *, normalize: bool = False
) -> float:
    """OFA's VQA accuracy in percent: the mean of ``answers[i].get(pred_i, 0)``, the tsv's soft
    score of the (stripped) predicted answer. The tsv answers are already normalised, so the
    prediction is compared as generated; ``normalize=True`` first applies the official normalisation
    (a variant, not OFA's)."""
    if len(preds) != len(answers):
        raise ValueError(f"{len(preds)} predictions for {len(answers)} answer sets")
    if not preds:
        raise ValueError("no questions to score")
    total = 0.0
    for p, ref in zip(preds, answers, strict=True):
        p = normalize_vqa_answer(p) if normalize else p.strip()
        total += float(ref.get(p, 0.0))
    return 100.0 * total / len(preds)


# ----- VQA test-dev / test-std submission --------------------------------------------------------


def vqa_results(question_ids: Sequence[int | str], answers: Sequence[str]) -> list[dict[str, Any]]:
    """The official VQA results format: a JSON list of ``{"question_id": int, "answer": str}``, one
    entry per question, in the order given.

    This is what the VQA evaluation API loads (GT-Vision-Lab/VQA ``PythonHelperTools/vqaTools/vqa.py``
    ``loadRes`` L161-165: a list whose question ids must be exactly the set's question ids) and what
    OFA writes for its test split (OFA-Sys/OFA ``utils/eval_utils.py`` L110 beam search and L168
    all-candidate: ``{"question_id": int(id), "answer": hyp}``; ``merge_results`` L426-429 dumps the list
    to ``{gen_subset}_predict.json``, which README L365 says to submit to EvalAI). Answers are stripped
    (OFA's ``.strip()``, L110); ids must be integers (or integer strings, as read from a tsv) and unique.
    """
    if len(question_ids) != len(answers):
        raise ValueError(f"{len(question_ids)} question ids for {len(answers)} answers")
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for qid, answer in zip(question_ids, answers, strict=True):
        try:
            value = int(qid) if not isinstance(qid, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or (isinstance(qid, float) and qid != value):
            raise ValueError(f"question id {qid!r} is not an integer (VQA question ids are ints)")
        if value in seen:
            raise ValueError(f"question id {value} appears twice; the results need one answer per question")
        if not isinstance(answer, str):
            raise ValueError(f"answer for question {value} is {type(answer).__name__}, not a string")
        seen.add(value)
        out.append({"question_id": value, "answer": answer.strip()})
    return out


def write_vqa_results(
    path: str | Path, question_ids: Sequence[int | str], answers: Sequence[str]
) -> dict[str, Any]:
    """Write :func:`vqa_results` as JSON to ``path`` (atomically: a temporary file, then renamed) and
    return ``{"path", "questions", "sha256", "format"}`` for the run's record."""
    results = vqa_results(question_ids, answers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(results).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {
        "path": str(path),
        "questions": len(results),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": 'VQA results json: [{"question_id": int, "answer": str}, ...] (EvalAI VQA challenge)',
    }


# ----- name -> metric -----------------------------------------------------------------------------

# boxes vs gt boxes, answers vs labels, answers vs answer->score dicts, captions vs reference lists
METRICS.register("acc@0.5", MetricEntry(refcoco_accuracy, generative=True))
METRICS.register("snli_ve_accuracy", MetricEntry(snli_ve_accuracy, generative=True))
METRICS.register("vqa_soft_accuracy", MetricEntry(vqa_soft_accuracy, generative=True))
METRICS.register("bleu4", MetricEntry(lambda p, r: 100.0 * bleu4(p, r), generative=True))
METRICS.register("cider", MetricEntry(lambda p, r: 100.0 * cider_d(p, r), generative=True))
METRICS.register("meteor_exact", MetricEntry(lambda p, r: 100.0 * meteor_exact(p, r), generative=True))


__all__ = [
    "CaptionReport",
    "bleu",
    "bleu4",
    "box_iou",
    "caption_scores",
    "cider_d",
    "cider_d_per_caption",
    "coco_caption_unavailable",
    "meteor_exact",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "refcoco_accuracy",
    "snli_ve_accuracy",
    "vqa_official_accuracy",
    "vqa_official_overall",
    "vqa_process_digit_article",
    "vqa_process_punctuation",
    "vqa_results",
    "vqa_soft_accuracy",
    "vqa_soft_score",
    "write_vqa_results",
]
