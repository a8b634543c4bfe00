"""OFA task metrics against hand-computed values (reference A5)."""

import math
import random

import pytest

from petlbench.benchmarks.metrics import caption as caption_mod
from petlbench.benchmarks.metrics import get_metric
from petlbench.benchmarks.metrics.ofa import (
    bleu,
    bleu4,
    box_iou,
    caption_scores,
    cider_d,
    cider_d_per_caption,
    meteor_exact,
    normalize_vqa_answer,
    ptb_tokenize,
    refcoco_accuracy,
    snli_ve_accuracy,
    vqa_official_accuracy,
    vqa_official_overall,
    vqa_process_punctuation,
    vqa_results,
    vqa_soft_accuracy,
    vqa_soft_score,
    write_vqa_results,
)
from petlbench.errors import UserError

# ----- RefCOCO ------------------------------------------------------------------------------------


def test_box_iou_values_and_edge_cases():
    sq = (0, 0, 10, 10)
    assert box_iou(sq, sq) == pytest.approx(1.0, abs=1e-6)
    assert box_iou(sq, (5, 0, 15, 10)) == pytest.approx(50 / 150)  # half-shifted: 50 / (100 + 100 - 50)
    assert box_iou(sq, (10, 0, 20, 10)) == 0.0  # touching edges: no positive-width intersection
    assert box_iou(sq, (20, 20, 30, 30)) == 0.0  # disjoint
    assert box_iou(sq, (5, 5, 5, 5)) == 0.0  # zero-area box inside
    assert box_iou((10, 10, 0, 0), sq) == 0.0  # inverted prediction: not sorted, so it misses
    assert box_iou((10, 0, 0, 10), sq) == 0.0  # inverted in x only
    assert box_iou(sq, (2.5, 2.5, 7.5, 7.5)) == pytest.approx(0.25)


def test_refcoco_accuracy_threshold_epsilon_and_missing_predictions():
    gt = (0, 0, 10, 10)
    # IoU exactly 0.5 misses: OFA's +1e-6 in the union makes it 0.4999999995
    assert refcoco_accuracy([(0, 0, 10, 5)], [gt]) == 0.0
    assert refcoco_accuracy([(0, 0, 10, 6)], [gt]) == 100.0  # 60 / 100
    preds = [(0, 0, 10, 10), None, (0, 0, 10, 6), (50, 50, 60, 60)]
    assert refcoco_accuracy(preds, [gt] * 4) == 50.0
    assert refcoco_accuracy([(0, 0, 10, 6)], [gt], threshold=0.7) == 0.0
    with pytest.raises(ValueError):
        refcoco_accuracy([gt], [gt, gt])


def test_snli_ve_accuracy():
    assert snli_ve_accuracy(["yes", "no ", "maybe"], ["yes", "no", "no"]) == pytest.approx(200 / 3)
    assert get_metric("snli_ve_accuracy", generative=True)(["maybe"], ["maybe"]) == 100.0
    with pytest.raises(UserError, match="unknown metric 'nope'; known metrics: acc@0.5, accuracy, bleu4"):
        get_metric("nope", generative=True)
    with pytest.raises(
        UserError,
        match=r"metric 'accuracy' does not score a sequence-to-sequence task; known sequence-to-sequence "
        r"metrics: acc@0.5, bleu4, cider, meteor_exact, snli_ve_accuracy, vqa_soft_accuracy$",
    ):
        get_metric("accuracy", generative=True)
    with pytest.raises(UserError, match="metric 'bleu4' does not score a classification task"):
        get_metric("bleu4")


# ----- VQA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Two", "2"),
        ("ten dogs", "10 dogs"),
        ("None", "0"),
        ("dont", "don't"),
        ("the cat.", "cat"),
        ("a dog", "dog"),
        ("10,000", "10000"),  # digit-comma-digit: every mark is deleted, not spaced
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes. ", "yes"),
        ("mr. smith", "mr smith"),  # periods are deleted, not turned into spaces
        ("red,blue", "red blue"),  # a mark with no space beside it becomes a space
        ("black, white", "black white"),  # a mark next to a space is deleted
        ("hello!", "hello"),
        ("man's hat", "man's hat"),  # the apostrophe is not in the punctuation list
        ("left/right", "left right"),
        ("  Yes\n", "yes"),
    ],
)
def test_normalize_vqa_answer_quirks(raw, norm):
    assert normalize_vqa_answer(raw) == norm


def test_vqa_period_strip_stops_after_32():
    # the official code passes re.UNICODE (32) as re.sub's count
    assert vqa_process_punctuation("." * 40) == "." * 8
    assert vqa_process_punctuation("x." * 3) == "xxx"


def test_vqa_official_accuracy_leave_one_out():
    # 3 of 10 say "2": subsets without one of them have 2 matches (2/3), the 7 others 3 (1) -> 0.9
    assert vqa_official_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_official_accuracy("3", ["2"] * 3 + ["3"] * 7) == pytest.approx(1.0)
    assert vqa_official_accuracy("4", ["2"] * 3 + ["3"] * 7) == 0.0
    assert vqa_official_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    # ground truth gets punctuation processing only, and only when the answers differ:
    assert vqa_official_accuracy("two", ["two"] * 10) == 0.0  # prediction -> "2", gts stay "two"
    assert vqa_official_accuracy("two", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    assert vqa_official_accuracy("yes", ["yes."] * 10) == 0.0  # identical gts keep their period
    assert vqa_official_accuracy("yes", ["yes."] * 9 + ["no"]) == pytest.approx(1.0)
    assert vqa_official_overall(["two", "4"], [["2"] * 3 + ["3"] * 7] * 2) == 45.0


def test_vqa_soft_score_is_the_closed_form():
    for n, conf in [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0)]:
        scores = vqa_soft_score(["a"] * n + ["b"] * (10 - n))
        assert scores["a"] == pytest.approx(conf)


def test_vqa_soft_accuracy_uses_the_tsv_scores():
    preds = ["yes", "no", "2 ", "Two"]
    refs = [{"yes": 1.0}, {"yes": 0.6, "no": 0.3}, {"2": 0.9}, {"2": 1.0}]
    assert vqa_soft_accuracy(preds, refs) == pytest.approx(100 * (1.0 + 0.3 + 0.9 + 0.0) / 4)
    assert vqa_soft_accuracy(preds, refs, normalize=True) == pytest.approx(100 * (1.0 + 0.3 + 0.9 + 1.0) / 4)


# ----- captions -----------------------------------------------------------------------------------


def test_ptb_tokenize():
    assert ptb_tokenize("A man's hat, (red)!") == "a man 's hat red"
    assert ptb_tokenize("Don't stop.") == "do n't stop"
    assert ptb_tokenize("a 3.5 m black-and-white cat...") == "a 3.5 m black-and-white cat"


def test_bleu4_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (both 6 words, no brevity penalty):
    # 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3 ("the cat sat on")
    # BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25
    b = bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx((5 / 6 * 3 / 5) ** 0.5)
    assert b[3] == pytest.approx((1 / 12) ** 0.25)
    assert bleu4(["The cat sat on the mat."], [["the cat sat on a mat"]]) == pytest.approx(0.537284965)


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    # hyp of 3 words, closest ref has 4 -> BP = exp(1 - 4/3); precisions 1, so BLEU-3 = BP
    assert bleu(["a b c"], [["a b c d", "a b c d e f g"]])[2] == pytest.approx(math.exp(1 - 4 / 3))
    # lengths 2 and 4 are equally close to 3: the shorter wins, 3 > 2 so there is no penalty
    assert bleu(["a b c"], [["a b", "a b c d"]])[0] == pytest.approx(1.0)


def test_cider_d_by_hand():
    # N = 2 captions, so an n-gram's idf is L = log(2) - log(df) = log(2) when df = 1
    # 1) identical single-reference captions: n=1 and n=2 cosines are 1, no 3/4-grams (0):
    #    10 * (1 + 1 + 0 + 0) / 4 = 5 each
    assert cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    # 2) "a" is in both captions' references (df 2): its idf is 0, so image 2 ("a d" vs "a c")
    #    shares only a zero-weight unigram and scores 0; image 1 still scores 5
    assert cider_d_per_caption(["a b", "a d"], [["a b"], ["a c"]]) == pytest.approx([5.0, 0.0])
    # 3) hyp "a b" vs ref "a b c": n=1 cosine 2L^2 / (sqrt2 L * sqrt3 L) = sqrt(2/3), n=2 1/sqrt2,
    #    bigram lengths 1 vs 2 -> penalty exp(-1 / (2 * 6^2))
    expected = 10 * (math.sqrt(2 / 3) + math.sqrt(0.5)) * math.exp(-1 / 72) / 4
    assert cider_d_per_caption(["a b", "x y"], [["a b c"], ["x y"]])[0] == pytest.approx(expected)
    # 4) clipping: hyp "a a" vs ref "a b": min(2L, L) * L / (2L * sqrt2 L) = 1 / (2 sqrt2)
    assert cider_d_per_caption(["a a", "x y"], [["a b"], ["x y"]])[0] == pytest.approx(
        10 / (2 * math.sqrt(2)) / 4
    )
    # 5) two references: the sum of per-reference similarities is divided by their number
    two = cider_d_per_caption(["a b", "x y"], [["a b", "a b c"], ["x y"]])[0]
    assert two == pytest.approx((cider_d_per_caption(["a b", "x y"], [["a b"], ["x y"]])[0] + expected) / 2)


@pytest.mark.parametrize(
    "hyp, ref, score",
    [
        # values checked against METEOR 1.5 (pycocoevalcap's jar) on content words only
        ("two blue squares", "two blue squares", 1.0),  # complete single chunk: no penalty
        ("blue two squares", "two blue squares", 0.4),  # P = R = 1, 3 chunks / 3 matches -> 1 - 0.6
        ("red circle big", "red circle small", 0.3184466),  # F = 2/3, pen 0.6 * 0.5^0.2
        ("red red red", "red blue", 0.1860465),  # P 1/3, R 1/2, one chunk of one match
        ("zebra", "red", 0.0),
    ],
)
def test_meteor_exact(hyp, ref, score):
    assert meteor_exact([hyp], [[ref]]) == pytest.approx(score, abs=1e-6)


def test_meteor_exact_picks_the_best_reference_and_minimal_chunks():
    assert meteor_exact(["two blue squares"], [["red", "two blue squares"]]) == pytest.approx(1.0)
    # "a b a" vs "a b": two alignments of "a"; the one keeping "a b" in one chunk is chosen
    # m = 2, P = 2/3, R = 1, F = (2/3) / (0.85 * 2/3 + 0.15) ; 1 chunk -> pen 0.6 * (1/2)^0.2
    p, r = 2 / 3, 1.0
    f = p * r / (0.85 * p + 0.15 * r)
    assert meteor_exact(["a b a"], [["a b"]]) == pytest.approx(f * (1 - 0.6 * 0.5**0.2))


def test_caption_scores_python_backend(monkeypatch):
    preds, refs = (
        ["a red circle", "two blue squares"],
        [["a red circle"], ["three blue squares", "two squares"]],
    )
    rep = caption_scores(preds, refs, backend="python", spice=True)
    assert rep.backend == "python"
    assert rep.scores["bleu4"] == pytest.approx(100 * bleu4(preds, refs))
    assert rep.scores["cider"] == pytest.approx(100 * cider_d(preds, refs))
    assert rep.scores["meteor_exact"] == pytest.approx(100 * meteor_exact(preds, refs))
    assert "meteor" not in rep.scores and "spice" in rep.skipped
    monkeypatch.setattr(caption_mod, "coco_caption_unavailable", lambda: "pycocoevalcap is not installed")
    auto = caption_scores(preds, refs)
    assert auto.backend == "python" and "pycocoevalcap is not installed" in auto.skipped["meteor"]
    with pytest.raises(UserError, match="pycocoevalcap is not installed"):
        caption_scores(preds, refs, backend="coco")
    with pytest.raises(UserError, match="unknown caption metric backend"):
        caption_scores(preds, refs, backend="java")


def test_bleu_and_cider_match_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    words = ["a", "the", "red", "blue", "circle", "square", "in", "top", "left", "of", "two", "shapes"]
    preds = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(30)]
    refs = [
        [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(3)] for _ in range(30)
    ]
    gts, res = dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)}
    assert bleu(preds, refs, tokenize=False) == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0])
    assert cider_d(preds, refs, tokenize=False) == pytest.approx(Cider().compute_score(gts, res)[0])


# ----- VQA submission file -----------------------------------------------------------------------


def test_vqa_results_are_the_official_submission_format(tmp_path):
    import hashlib
    import json

    # OFA writes {"question_id": int(id), "answer": hyp} (utils/eval_utils.py L110, L168); ids read
    # from a tsv are strings, answers are stripped as OFA's beam path does
    rows = vqa_results(["79459", 12, "  7 "], [" no", "2 ", "red"])
    assert rows == [
        {"question_id": 79459, "answer": "no"},
        {"question_id": 12, "answer": "2"},
        {"question_id": 7, "answer": "red"},
    ]
    out = write_vqa_results(tmp_path / "sub" / "r.json", ["3", "1"], ["yes", "cat"])
    data = (tmp_path / "sub" / "r.json").read_bytes()
    loaded = json.loads(data)
    assert isinstance(loaded, list) and loaded == [
        {"question_id": 3, "answer": "yes"},
        {"question_id": 1, "answer": "cat"},
    ]
    assert all(type(r["question_id"]) is int and isinstance(r["answer"], str) for r in loaded)
    assert out["questions"] == 2 and out["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list((tmp_path / "sub").glob("*.tmp"))


@pytest.mark.parametrize(
    ("ids", "answers", "message"),
    [
        (["1", "1"], ["a", "b"], "twice"),
        (["q1"], ["a"], "not an integer"),
        ([1.5], ["a"], "not an integer"),
        ([True], ["a"], "not an integer"),
        ([1, 2], ["a"], "question ids for"),
        ([1], [None], "not a string"),
    ],
)
def test_vqa_results_refuse_what_the_evaluator_would(ids, answers, message):
    with pytest.raises(ValueError, match=message):
        vqa_results(ids, answers)
