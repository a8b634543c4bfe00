"""Caption metrics: coco-caption's official scorers (pycocoevalcap, with Java) by default, and a
pure-Python transcription of BLEU and CIDEr-D as the fallback where they cannot run (reference A5.1).

:func:`caption_scores` is the entry point. With pycocoevalcap installed (``pip install -e ".[ofa]"``)
and ``java`` on PATH it runs coco-caption itself: Stanford's Java PTB tokenizer, then BLEU-1..4,
CIDEr-D and METEOR 1.5, and SPICE only when its Stanford CoreNLP models are already present (they
are never downloaded here). Otherwise the report is computed here, labelled ``backend="python"``
and carries the deviation :data:`FALLBACK_DEVIATION`:

- :func:`bleu` / :func:`bleu4`: corpus BLEU of coco-caption's ``bleu_scorer`` (clipped n-gram counts
  summed over the corpus, the "closest" reference length for the brevity penalty, its 1e-15/1e-9
  smoothing constants).
- :func:`cider_d`: CIDEr-D of coco-caption's ``cider_scorer`` (tf-idf n-gram vectors with document
  frequencies from the evaluated references, hypothesis counts clipped by the reference's, a
  Gaussian length penalty with sigma 6, the x10 scaling, averaged over references and n = 1..4).
- :func:`meteor_exact`: METEOR's formula with the **exact-match module only** (plus Porter stems when
  nltk is importable). Official METEOR 1.5 also matches WordNet synonyms and paraphrases and weights
  function words, so this is *not* METEOR and is reported under its own name.

The python functions take raw strings; :func:`ptb_tokenize` (lowercase, clitics split, punctuation
tokens dropped, an approximation of the Stanford PTB tokenizer) is applied first unless
``tokenize=False``. They return coco-caption's own scale (BLEU and METEOR in [0, 1], CIDEr-D about
[0, 10]); :func:`caption_scores` reports x100, as papers do (CIDEr 141.4).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

NGRAMS = 4
_PUNCT_ONLY = re.compile(r"""^[.,?!:;\-'"`()\[\]{}]+$""")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|m|ll|d)\b|\d+(?:[.,]\d+)+|\w+(?:[-']\w+)*|[^\w\s]")


def ptb_tokenize(text: str) -> str:
    """Lowercased, space-joined tokens with punctuation tokens removed, like coco-caption's
    ``PTBTokenizer`` (``don't`` -> ``do n't``, ``dog's`` -> ``dog 's``, ``3.5`` and ``black-and-white``
    stay whole). An approximation: the official tokenizer is Stanford's Java PTBTokenizer."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"(\w)n't\b", r"\1 n't", text)
    text = re.sub(r"(\w)'(s|re|ve|m|ll|d)\b", r"\1 '\2", text)
    return " ".join(t for t in _TOKEN.findall(text) if not _PUNCT_ONLY.match(t))


def _prepare(
    preds: Sequence[str], refs: Sequence[Sequence[str]], tokenize: bool
) -> tuple[list[list[str]], list[list[list[str]]]]:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} reference lists")
    if not preds:
        raise ValueError("no captions to score")
    tok = ptb_tokenize if tokenize else (lambda s: s)
    hyp = [tok(p).split() for p in preds]
    ref = []
    for i, rs in enumerate(refs):
        if not rs:
            raise ValueError(f"caption {i} has no reference")
        ref.append([tok(r).split() for r in rs])
    return hyp, ref


def _ngrams(words: Sequence[str], n: int = NGRAMS) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


# ----- BLEU ---------------------------------------------------------------------------------------


def bleu(
    preds: Sequence[str], refs: Sequence[Sequence[str]], *, n: int = NGRAMS, tokenize: bool = True
) -> list[float]:
    """Corpus BLEU-1..n as coco-caption computes it.

    Per n-gram order k: ``p_k = (sum of clipped matches + 1e-15) / (sum of hypothesis k-grams +
    1e-9)`` over the whole corpus; BLEU-k is the geometric mean of p_1..p_k, times the brevity
    penalty ``exp(1 - R/H)`` when the summed hypothesis length H is below R, the sum over captions of
    the reference length closest to each hypothesis's length (ties to the shorter).
    """
    hyp, ref = _prepare(preds, refs, tokenize)
    guess, correct = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for h, rs in zip(hyp, ref, strict=True):
        counts = _ngrams(h, n)
        maxref: Counter[tuple[str, ...]] = Counter()
        for r in rs:
            for g, c in _ngrams(r, n).items():
                maxref[g] = max(maxref[g], c)
        for g, c in counts.items():
            correct[len(g) - 1] += min(c, maxref[g])
        for k in range(n):
            guess[k] += max(0, len(h) - k)
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (hyp_len + 1e-15) / (ref_len + 1e-9)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu4(preds: Sequence[str], refs: Sequence[Sequence[str]], *, tokenize: bool = True) -> float:
    """Corpus BLEU-4 in [0, 1] (see :func:`bleu`)."""
    return bleu(preds, refs, n=4, tokenize=tokenize)[3]


# ----- CIDEr-D ------------------------------------------------------------------------------------


def cider_d_per_caption(
    preds: Sequence[str], refs: Sequence[Sequence[str]], *, sigma: float = 6.0, tokenize: bool = True
) -> list[float]:
    """CIDEr-D of each caption (coco-caption's ``CiderScorer``; its mean is the corpus score).

    ``df(g)`` = number of captions whose references contain n-gram g; a vector entry is
    ``tf(g) * (log(N) - log(max(1, df(g))))`` with N the number of captions. For each reference and
    n: ``sum_g min(v_h, v_r) * v_r / (|v_h| |v_r|)`` times ``exp(-(l_h - l_r)^2 / (2 sigma^2))``,
    where coco-caption's lengths count bigrams (so single-word captions have length 0). The score
    is the mean over n = 1..4 and over references, times 10.
    """
    hyp, ref = _prepare(preds, refs, tokenize)
    ref_counts = [[_ngrams(r) for r in rs] for rs in ref]
    df: Counter[tuple[str, ...]] = Counter()
    for per_caption in ref_counts:
        df.update({g for c in per_caption for g in c})
    log_n = math.log(float(len(hyp)))

    def vectorize(counts: Counter[tuple[str, ...]]) -> tuple[list[dict], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(NGRAMS)]
        norm = [0.0] * NGRAMS
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v = float(tf) * (log_n - math.log(max(1.0, df[g])))
            vec[k][g] = v
            norm[k] += v * v
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for h, rcs in zip(hyp, ref_counts, strict=True):
        vh, nh, lh = vectorize(_ngrams(h))
        total = [0.0] * NGRAMS
        for rc in rcs:
            vr, nr, lr = vectorize(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(NGRAMS):
                val = sum(min(v, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, v in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(sum(total) / NGRAMS / len(rcs) * 10.0)
    return scores


def cider_d(
    preds: Sequence[str], refs: Sequence[Sequence[str]], *, sigma: float = 6.0, tokenize: bool = True
) -> float:
    """Corpus CIDEr-D (coco-caption scale, e.g. 1.414 for a reported 141.4)."""
    per = cider_d_per_caption(preds, refs, sigma=sigma, tokenize=tokenize)
    return sum(per) / len(per)


# ----- METEOR (exact matching only) ---------------------------------------------------------------

METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.85, 0.20, 0.60  # METEOR 1.5 English defaults


def _stemmer() -> Callable[[str], str] | None:
    try:
        from nltk.stem.porter import PorterStemmer  # needs no nltk data download
    except ImportError:
        return None
    return PorterStemmer().stem


def _align(h: Sequence[str], r: Sequence[str]) -> tuple[int, int]:
    """(matches, chunks) of the one-to-one exact alignment with the most matches and, among those,
    the fewest chunks (runs contiguous and in order in both strings), by memoised search."""
    need = {w: min(c, Counter(r)[w]) for w, c in Counter(h).items()}
    matches = sum(need.values())
    if matches == 0:
        return 0, 0
    left_after = [Counter(h[i + 1 :]) for i in range(len(h))]
    positions = {w: [j for j, x in enumerate(r) if x == w] for w in need}
    memo: dict[tuple[int, int, int], int] = {}

    def best(i: int, used: int, prev: int) -> int:
        if i == len(h):
            return 0
        key = (i, used, prev)
        if key in memo:
            return memo[key]
        w = h[i]
        done = sum(1 for j in positions[w] if used >> j & 1)
        out = math.inf
        if done + left_after[i][w] >= need[w]:  # skipping still leaves enough occurrences of w
            out = best(i + 1, used, -1)
        if done < need[w]:
            for j in positions[w]:
                if not used >> j & 1:
                    cost = 0 if prev >= 0 and j == prev + 1 else 1
                    out = min(out, cost + best(i + 1, used | 1 << j, j))
        memo[key] = int(out)
        return memo[key]

    return matches, best(0, 0, -1)


def _meteor_from_stats(m: int, chunks: int, hyp_len: int, ref_len: int) -> float:
    if m == 0:
        return 0.0
    p, r = m / hyp_len, m / ref_len
    fmean = p * r / (METEOR_ALPHA * p + (1 - METEOR_ALPHA) * r)
    # METEOR 1.5: a complete, single-chunk match has no fragmentation penalty
    frag = 0.0 if (m == hyp_len == ref_len and chunks == 1) else chunks / m
    return fmean * (1 - METEOR_GAMMA * frag**METEOR_BETA)


def meteor_exact(
    preds: Sequence[str], refs: Sequence[Sequence[str]], *, tokenize: bool = True, stem: bool = True
) -> float:
    """METEOR's score with exact (and, with nltk importable and ``stem``, Porter-stem) matching only.

    Not METEOR 1.5: no WordNet synonyms, no paraphrase table, no function-word weighting (every word
    counts as content), single-stage alignment. Parameters are METEOR 1.5's English defaults
    (alpha 0.85, beta 0.2, gamma 0.6). Per caption the best-scoring reference is chosen, and the
    corpus score is computed from the summed statistics (matches, chunks, lengths), as METEOR does.
    """
    hyp, ref = _prepare(preds, refs, tokenize)
    stemmer = _stemmer() if stem else None
    norm = (lambda ws: [stemmer(w) for w in ws]) if stemmer else (lambda ws: list(ws))
    tot = [0, 0, 0, 0]  # matches, chunks, hyp length, ref length
    for h, rs in zip(hyp, ref, strict=True):
        hn = norm(h)
        best_stats, best_score = None, -1.0
        for r in rs:
            m, ch = _align(hn, norm(r))
            score = _meteor_from_stats(m, ch, len(h), len(r))
            if score > best_score:
                best_stats, best_score = (m, ch, len(h), len(r)), score
        assert best_stats is not None
        tot = [a + b for a, b in zip(tot, best_stats, strict=True)]
    return _meteor_from_stats(*tot)


# ----- official scorers and the combined report ---------------------------------------------------

FALLBACK_DEVIATION = "caption-metrics-python"
"""The deviation id a result carries when its caption metrics are this module's, not coco-caption's."""
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def coco_caption_unavailable() -> str | None:
    """Why the official pycocoevalcap scorers cannot run here, or None when they can."""
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        return 'pycocoevalcap is not installed (pip install -e ".[ofa]")'
    if shutil.which("java") is None:
        return (
            "java is not on PATH (coco-caption's PTB tokenizer and METEOR 1.5 are Java programs; "
            "install a Java runtime, e.g. apt-get install default-jre-headless)"
        )
    spec = importlib.util.find_spec("pycocoevalcap.tokenizer")
    folder = next(iter(spec.submodule_search_locations or []), None) if spec else None
    if folder is None or not os.access(folder, os.W_OK):
        return f"pycocoevalcap's folder {folder} is not writable (its PTB tokenizer writes a file there)"
    return None


def spice_unavailable() -> str | None:
    """Why SPICE cannot run here, or None when it can: besides pycocoevalcap and Java it needs
    Stanford CoreNLP 3.6.0's jars in pycocoevalcap's ``spice/lib``, which pycocoevalcap downloads on
    SPICE's first use; they are looked for, never fetched."""
    why = coco_caption_unavailable()
    if why is not None:
        return why
    spec = importlib.util.find_spec("pycocoevalcap.spice")
    if spec is None or not spec.submodule_search_locations:
        return "this pycocoevalcap has no spice package"
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    missing = [j for j in SPICE_JARS if not (lib / j).is_file()]
    if missing:
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 models: {', '.join(missing)} not in {lib} "
            "(python -m pycocoevalcap.spice.get_stanford_models downloads them)"
        )
    return None


@dataclass
class CaptionReport:
    """Caption scores x100 by metric name, what was skipped and why, which implementation ran
    (``backend``: ``coco`` = pycocoevalcap's scorers on its Java PTB tokenizer; ``python`` = this
    module's metrics on :func:`ptb_tokenize` tokens) and, for ``python``, the deviation naming it."""

    scores: dict[str, float]
    backend: str
    skipped: dict[str, str] = field(default_factory=dict)
    deviations: list[dict[str, str]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What a run's result records beside the scores (JSON-serialisable)."""
        return {
            "backend": self.backend,
            "skipped": dict(self.skipped),
            "deviations": [dict(d) for d in self.deviations],
        }


def _python_scores(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    b = bleu(preds, refs)
    return {
        **{f"bleu{k + 1}": 100.0 * v for k, v in enumerate(b)},
        "cider": 100.0 * cider_d(preds, refs),
        "meteor_exact": 100.0 * meteor_exact(preds, refs),
    }


@functools.lru_cache(maxsize=1)
def _meteor() -> Any:
    """One METEOR 1.5 process per Python process: its start (loading the paraphrase table) takes
    seconds, scoring after that is quick."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    meteor = _meteor()
    try:
        return float(meteor.compute_score(gts, res)[0])
    except Exception:
        # pycocoevalcap holds its lock past an error (and its __del__ takes it): free it, drop the process
        _meteor.cache_clear()
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.meteor_p.kill()
        raise


def _coco_scores(
    preds: Sequence[str], refs: Sequence[Sequence[str]], spice: bool, skipped: dict[str, str]
) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _prepare(preds, refs, tokenize=False)  # the same checks as the python backend
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    out: dict[str, float] = {}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu{k + 1}": 100.0 * v for k, v in enumerate(b)})
    out["cider"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    out["meteor"] = 100.0 * _meteor_score(gts, res)
    if not spice:
        skipped["spice"] = "not asked for (spice=False)"
        return out
    why = spice_unavailable()
    if why is not None:
        skipped["spice"] = why
        return out
    try:  # pragma: no cover - needs the Stanford models
        from pycocoevalcap.spice.spice import Spice

        out["spice"] = 100.0 * float(Spice().compute_score(gts, res)[0])
    except Exception as err:  # pragma: no cover - a scored run keeps its other metrics
        skipped["spice"] = f"SPICE failed ({type(err).__name__}: {err})"
    return out


def caption_scores(
    preds: Sequence[str], refs: Sequence[Sequence[str]], *, backend: str = "auto", spice: bool = True
) -> CaptionReport:
    """BLEU-1..4, CIDEr-D and METEOR 1.5 of captions against their references, x100.

    ``backend``: ``coco`` (the official pycocoevalcap scorers after its Java PTB tokenizer; a
    UserError when pycocoevalcap or Java is missing), ``python`` (this module: ``meteor_exact``
    instead of METEOR, an approximate PTB tokenizer) or ``auto`` (coco when available, else python).
    A python report carries the deviation :data:`FALLBACK_DEVIATION` saying so. ``spice``: report
    SPICE when it can run (coco, with Stanford CoreNLP's models present); otherwise it is listed in
    ``skipped`` with the reason, never replaced by another score.
    """
    if backend not in ("auto", "python", "coco"):
        raise UserError(f"unknown caption metric backend {backend!r}; use auto, python or coco")
    why = coco_caption_unavailable()
    if backend == "coco" and why is not None:
        raise UserError(f"the official caption metrics cannot run: {why}; or use backend 'python'")
    skipped: dict[str, str] = {}
    if backend == "coco" or (backend == "auto" and why is None):
        return CaptionReport(_coco_scores(preds, refs, spice, skipped), "coco", skipped)
    because = why if backend == "auto" else "the python backend was asked for"
    skipped["meteor"] = f"official METEOR 1.5 not run ({because}); meteor_exact reported instead"
    skipped["spice"] = f"SPICE needs pycocoevalcap, Java and Stanford CoreNLP models ({because})"
    deviation = {
        "id": FALLBACK_DEVIATION,
        "what": (
            f"caption metrics by petlbench's Python BLEU and CIDEr-D on an approximate PTB tokenizer, "
            f"with meteor_exact (exact and stem matches only) in place of METEOR 1.5: {because}"
        ),
    }
    return CaptionReport(_python_scores(preds, refs), "python", skipped, [deviation])
