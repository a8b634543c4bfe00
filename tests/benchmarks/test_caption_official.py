"""Caption metrics are coco-caption's own: ``caption_scores`` equals pycocoevalcap (its Java PTB
tokenizer, BLEU-1..4, METEOR 1.5, CIDEr-D) where pycocoevalcap and Java are installed (CI installs
both), and where they are not the pure-Python fallback is labelled as a deviation."""

from __future__ import annotations

import json
import re

import pytest

from petlbench.benchmarks.metrics import caption as caption_mod
from petlbench.benchmarks.metrics.caption import (
    FALLBACK_DEVIATION,
    bleu,
    caption_scores,
    cider_d,
    coco_caption_unavailable,
    spice_unavailable,
)
from petlbench.errors import UserError

# raw captions as a model writes them: case, punctuation, clitics, hyphens, numbers, non-ASCII, a
# repeated word, an empty hypothesis
PREDS = [
    "A man rides a brown horse along the beach.",
    "two dogs playing in the snow",
    "A red double-decker bus, parked by the road!",
    "a cat's sitting on top of a laptop keyboard",
    "people don't walk near 3.5 m tall café signs",
    "a a a a",
    "",
    "A plate with broccoli and rice and chicken",
]
REFS = [
    ["A man rides a horse along the beach.", "a person on a brown horse near the ocean", "Horse riding."],
    ["Two dogs play in the snow!", "dogs running through snow", "two puppies playing outside in winter"],
    ["A red bus parked on the side of the road.", "a double-decker bus by the street"],
    ["A cat sitting on a laptop's keyboard.", "the cat is lying on the computer", "a kitten on a laptop"],
    ["People walking past a café sign.", "a tall sign outside a cafe", "pedestrians near a 3.5 m sign"],
    ["a man holding a surfboard", "a surfer on the beach"],
    ["a giraffe standing in a field", "a tall giraffe near trees"],
    ["A plate with broccoli, rice and chicken.", "food on a white plate", "a dish of rice and vegetables"],
]

needs_coco = pytest.mark.skipif(
    coco_caption_unavailable() is not None,
    reason=f"official caption metrics unavailable: {coco_caption_unavailable()}",
)


def _pycocoevalcap(preds, refs):
    """coco-caption's evaluation, step by step, as its ``COCOEvalCap.evaluate`` runs it."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    out = {f"bleu{k + 1}": 100 * v for k, v in enumerate(b)}
    out["meteor"] = 100 * meteor.compute_score(gts, res)[0]
    out["cider"] = 100 * Cider().compute_score(gts, res)[0]
    del meteor
    return out, gts, res


@needs_coco
def test_caption_scores_equal_pycocoevalcap():
    expected, gts, res = _pycocoevalcap(PREDS, REFS)
    report = caption_scores(PREDS, REFS)  # auto: the official scorers here
    assert report.backend == "coco" and report.deviations == []
    assert set(report.scores) >= {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider"}
    assert "meteor_exact" not in report.scores
    for name, value in expected.items():
        assert report.scores[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    again = caption_scores(PREDS, REFS, backend="coco")  # the kept METEOR process scores the same
    assert again.scores == report.scores
    # the transcribed BLEU and CIDEr-D agree with coco-caption's on coco-caption's tokens
    keys = sorted(gts)
    toks = [res[k][0] for k in keys], [gts[k] for k in keys]
    assert [100 * v for v in bleu(*toks, tokenize=False)] == pytest.approx(
        [expected[f"bleu{k}"] for k in (1, 2, 3, 4)]
    )
    assert 100 * cider_d(*toks, tokenize=False) == pytest.approx(expected["cider"])
    json.dumps(report.info())


@needs_coco
def test_spice_is_reported_only_when_its_models_are_present():
    report = caption_scores(PREDS[:2], REFS[:2])
    why = spice_unavailable()
    if why is None:  # pragma: no cover - the Stanford CoreNLP models are not fetched in CI
        assert "spice" in report.scores
    else:
        assert "spice" not in report.scores and report.skipped["spice"] == why
        assert "Stanford CoreNLP" in why
    off = caption_scores(PREDS[:2], REFS[:2], spice=False)
    assert "spice" not in off.scores and "spice" in off.skipped


def test_the_python_fallback_is_labelled_as_such(monkeypatch):
    monkeypatch.setattr(caption_mod, "coco_caption_unavailable", lambda: "java is not on PATH")
    report = caption_scores(PREDS, REFS)
    assert report.backend == "python"
    assert "meteor" not in report.scores and "spice" not in report.scores  # never a stand-in by name
    assert "meteor_exact" in report.scores and {"meteor", "spice"} <= set(report.skipped)
    (deviation,) = report.deviations
    assert deviation["id"] == FALLBACK_DEVIATION and "java is not on PATH" in deviation["what"]
    assert report.info()["deviations"] == [deviation]
    assert json.loads(json.dumps(report.info()))["backend"] == "python"
    chosen = caption_scores(PREDS, REFS, backend="python")  # asked for: still a named deviation
    assert [d["id"] for d in chosen.deviations] == [FALLBACK_DEVIATION]
    assert chosen.scores == report.scores


def test_the_coco_backend_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setattr(caption_mod.shutil, "which", lambda name: None)  # no java on PATH
    why = coco_caption_unavailable()
    assert why is not None
    assert "apt-get install default-jre-headless" in why or "pycocoevalcap is not installed" in why
    with pytest.raises(UserError, match=re.escape(why)):
        caption_scores(PREDS, REFS, backend="coco")
    assert caption_scores(PREDS, REFS).backend == "python"
