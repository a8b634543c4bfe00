"""Generated smoke data for OFA's four tasks, in OFA's real tsv formats, from the synthetic world.

Scenes come from ``benchmarks/synthetic/world.py`` (its sampler, renderer and caption grammar), so
text and pixels agree and a small model can learn every task:

- ``refcoco``: 2-3 single-object world scenes in distinct quadrants composited into one image; the
  expression names one object by its (unique) colour, e.g. ``"the red circle"``, ``"blue square in
  the top left"``; the box is that object's pixel box (found by thresholding the object against the
  plain background, so it is exact, xyxy with exclusive x1/y1).
- ``snli_ve``: premise = the world caption; hypothesis true (entailment), false (contradiction, a
  wrong colour/shape/count) or about something no image shows (neutral).
- ``caption``: world captions; train has one per line, val joins three references with ``&&``.
- ``vqa``: colour, shape, count and yes/no questions; answers ``1.0|!+answer``, sometimes with a
  wrong ``0.3`` one beside it (one annotator disagreeing), in either order.

Layout under ``root``::

    refcoco/refcoco_{train,val}.tsv    snli_ve/snli_ve_{train,dev}.tsv
    caption/caption_stage1_train.tsv   caption/caption_val.tsv
    vqa/vqa_{train,val}.tsv            bpe/{vocab.json,merges.txt,ofa_tokenizer.json}
    ofa_smoke.json                     (version, seed, counts, sha256 of every file)

Everything is a pure function of the arguments: the same seed writes byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from petlbench.benchmarks.datasets.ofa_tsv import OFASample, write_ofa_tsv
from petlbench.benchmarks.datasets.synthetic import COUNTS, POSITIONS, SHAPES
from petlbench.benchmarks.synthetic import world

from .formatting import (
    CAPTION_INSTRUCTION,
    REFCOCO_TEMPLATE,
    SNLI_CANDIDATES,
    SNLI_CAPTION_TEMPLATE,
    SNLI_TEMPLATE,
    pre_caption,
    pre_question,
    strip_punctuation,
)
from .tokenizer import train_tiny_bpe

SMOKE_VERSION = "ofa-smoke-v2"  # bump when generation changes; recorded in ofa_smoke.json
FILES: dict[str, dict[str, str]] = {
    "refcoco": {"train": "refcoco/refcoco_train.tsv", "val": "refcoco/refcoco_val.tsv"},
    "snli_ve": {"train": "snli_ve/snli_ve_train.tsv", "val": "snli_ve/snli_ve_dev.tsv"},
    "caption": {"train": "caption/caption_stage1_train.tsv", "val": "caption/caption_val.tsv"},
    "vqa": {"train": "vqa/vqa_train.tsv", "val": "vqa/vqa_val.tsv"},
}
NEUTRAL_HYPOTHESES = (
    "the shape is made of wood",
    "someone drew the picture yesterday",
    "the object is moving fast",
    "the picture was taken at night",
    "the shape is very heavy",
)
_COLORS = list(world.ALL_COLORS)
_FG_THRESHOLD = 30  # background noise stays under ~20 grey levels, object colours differ by > 40


def _rng(seed: int, task: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{task}/{split}".encode())])


def _png(chw: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _foreground(images: np.ndarray) -> np.ndarray:
    """(N, S, S) masks of the object in single-object world images (background = border median)."""
    border = np.concatenate([images[:, :, 0, :], images[:, :, -1, :]], axis=2)
    bg = np.median(border, axis=2)
    return np.abs(images.astype(np.int32) - bg[:, :, None, None]).max(axis=1) > _FG_THRESHOLD


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _render(scenes: world.Scenes, image_size: int, rng: np.random.Generator) -> np.ndarray:
    return world.render_scenes(scenes, image_size, np.random.default_rng(int(rng.integers(0, 1 << 30))))


# ----- per-task samples ---------------------------------------------------------------------------


def refcoco_samples(rng: np.random.Generator, n: int, image_size: int, split: str) -> list[OFASample]:
    k = rng.integers(2, 4, n)  # objects per image
    total = int(k.sum())
    quadrants = np.concatenate([rng.permutation(4)[:m] for m in k])
    colors = np.concatenate([rng.permutation(len(world.PRETRAIN_COLORS))[:m] for m in k])
    scenes = world.Scenes(
        shape=rng.integers(0, len(SHAPES), total),
        color=np.asarray([_COLORS.index(world.PRETRAIN_COLORS[c]) for c in colors]),
        size=rng.integers(0, 2, total),
        position=quadrants,
        count=np.ones(total, dtype=np.int64),
        striped=np.zeros(total, dtype=bool),
    )
    images = _render(scenes, image_size, rng)
    masks = _foreground(images)
    starts = np.concatenate([[0], np.cumsum(k)[:-1]])
    targets = rng.integers(0, k)
    forms = rng.integers(0, 4, n)
    out = []
    for i in range(n):
        objs = range(starts[i], starts[i] + k[i])
        canvas = images[starts[i]].copy()
        for j in objs:
            canvas[:, masks[j]] = images[j][:, masks[j]]
        t = starts[i] + targets[i]
        color, shape = _COLORS[scenes.color[t]], SHAPES[scenes.shape[t]]
        where, size = POSITIONS[scenes.position[t]], world.SIZES[scenes.size[t]]
        text = (
            f"the {color} {shape}",
            f"{color} {shape} in the {where}",
            f"the {size} {color} object",
            f"the {color} one",
        )[forms[i]]
        out.append(
            OFASample(uid=f"{i}_{split}", image_id=str(i), image=_png(canvas), text=text, box=_box(masks[t]))
        )
    return out


def _snli_hypothesis(scenes: world.Scenes, i: int, label: str, rng: np.random.Generator) -> str:
    if label == "neutral":
        return NEUTRAL_HYPOTHESES[int(rng.integers(len(NEUTRAL_HYPOTHESES)))]
    multi = scenes.count[i] > 1
    kind = ("color", "shape", "count")[int(rng.integers(3 if multi else 2))]
    true = label == "entailment"
    if kind == "color":
        c = scenes.color[i] if true else rng.choice([j for j in range(6) if j != scenes.color[i]])
        return f"the {'shapes are' if multi else 'shape is'} {_COLORS[c]}"
    if kind == "shape":
        s = scenes.shape[i] if true else rng.choice([j for j in range(len(SHAPES)) if j != scenes.shape[i]])
        return f"there are {world.PLURALS[SHAPES[s]]}" if multi else f"there is a {SHAPES[s]}"
    c = scenes.count[i] if true else rng.choice([j for j in range(2, 5) if j != scenes.count[i]])
    return f"there are {COUNTS[c - 1]} shapes"


def snli_ve_samples(rng: np.random.Generator, n: int, image_size: int, split: str) -> list[OFASample]:
    scenes = world.sample_scenes(rng, n, multi_fraction=0.3)
    images = _render(scenes, image_size, rng)
    premises = world.captions(scenes, rng)
    labels = [("entailment", "contradiction", "neutral")[v] for v in rng.integers(0, 3, n)]
    return [
        OFASample(
            uid=f"{i}.png#{split}r{labels[i][0]}",
            image_id=str(i),
            image=_png(images[i]),
            hypothesis=_snli_hypothesis(scenes, i, labels[i], rng),
            premise=premises[i],
            label=labels[i],
        )
        for i in range(n)
    ]


def _objects(scenes: world.Scenes, i: int) -> list[str]:
    shape = SHAPES[scenes.shape[i]]
    return [world.PLURALS[shape] if scenes.count[i] > 1 else shape]


def caption_samples(rng: np.random.Generator, n: int, image_size: int, split: str) -> list[OFASample]:
    scenes = world.sample_scenes(rng, n, multi_fraction=0.3)
    images = _render(scenes, image_size, rng)
    n_refs = 1 if split == "train" else 3
    refs = [world.captions(scenes, rng) for _ in range(n_refs)]
    return [
        OFASample(
            uid=str(i),
            image_id=str(i),
            image=_png(images[i]),
            captions=[r[i] for r in refs],
            objects=_objects(scenes, i),
        )
        for i in range(n)
    ]


def _vqa_qa(scenes: world.Scenes, i: int, rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, answer, a plausible wrong answer)."""
    multi = scenes.count[i] > 1
    kind = int(rng.integers(4))
    if kind == 0:
        wrong = rng.choice([j for j in range(6) if j != scenes.color[i]])
        q = "what color are the shapes?" if multi else "what color is the shape?"
        return q, _COLORS[scenes.color[i]], _COLORS[wrong]
    if kind == 1:
        wrong = rng.choice([j for j in range(len(SHAPES)) if j != scenes.shape[i]])
        return "what shape is in the image?", SHAPES[scenes.shape[i]], SHAPES[wrong]
    if kind == 2:
        c = int(scenes.count[i])
        return "how many shapes are there?", str(c), str(c + 1 if c == 1 or rng.random() < 0.5 else c - 1)
    asked = (
        scenes.color[i] if rng.random() < 0.5 else rng.choice([j for j in range(6) if j != scenes.color[i]])
    )
    yes = asked == scenes.color[i]
    return f"is there a {_COLORS[asked]} shape?", "yes" if yes else "no", "no" if yes else "yes"


def vqa_samples(rng: np.random.Generator, n: int, image_size: int, split: str) -> list[OFASample]:
    scenes = world.sample_scenes(rng, n, multi_fraction=0.3)
    images = _render(scenes, image_size, rng)
    out = []
    for i in range(n):
        question, answer, wrong = _vqa_qa(scenes, i, rng)
        u = rng.random(4)
        if u[0] < 0.2:  # the formatter must append the "?" again
            question = question.rstrip("?")
        if u[1] < 0.2:  # and lowercase
            question = question[0].upper() + question[1:]
        answers = {answer: 1.0}
        if u[2] < 0.3:
            answers = {wrong: 0.3, answer: 1.0} if u[3] < 0.5 else {answer: 1.0, wrong: 0.3}
        out.append(
            OFASample(
                uid=str(i),
                image_id=str(i),
                image=_png(images[i]),
                question=question,
                answers=answers,
                objects=_objects(scenes, i),
            )
        )
    return out


MAKERS = {
    "refcoco": refcoco_samples,
    "snli_ve": snli_ve_samples,
    "caption": caption_samples,
    "vqa": vqa_samples,
}


def smoke_texts(samples: dict[str, list[OFASample]]) -> list[str]:
    """Every instruction and target the formatter will build from these samples: the BPE's corpus."""
    texts = [CAPTION_INSTRUCTION] + [f" {a}" for a in SNLI_CANDIDATES]
    for task, rows in samples.items():
        for s in rows:
            if task == "refcoco":
                texts.append(REFCOCO_TEMPLATE.format(pre_caption(s.text)))
            elif task == "snli_ve":
                hyp, prem = pre_caption(s.hypothesis), pre_caption(s.premise)
                texts += [SNLI_TEMPLATE.format(hyp), SNLI_CAPTION_TEMPLATE.format(prem, hyp)]
            elif task == "caption":
                texts += [f" {strip_punctuation(c)}" for c in s.captions]
            else:
                texts.append(f" {pre_question(s.question).rstrip('?')}?")
                texts += [f" {a}" for a in s.answers]
    return texts


def write_ofa_smoke(
    root: str | Path,
    *,
    seed: int = 0,
    n_train: int,
    n_val: int,
    image_size: int = 64,
    num_merges: int = 300,
) -> dict[str, Any]:
    """Write ``n_train`` / ``n_val`` rows per task (the layout in the module docstring) and a BPE
    trained on their texts. Returns ``{"version", "root", "bpe": Path, "files": {task: {"train":
    Path, "val": Path}}, "counts", "sha256"}`` (also saved as ``ofa_smoke.json``, paths relative)."""
    if n_train < 1 or n_val < 1:
        raise ValueError("n_train and n_val must be at least 1")
    root = Path(root)
    samples: dict[str, list[OFASample]] = {}
    files: dict[str, dict[str, Path]] = {}
    for task, maker in MAKERS.items():
        files[task] = {}
        for split, n in (("train", n_train), ("val", n_val)):
            rows = maker(_rng(seed, task, split), n, image_size, split)
            files[task][split] = write_ofa_tsv(root / FILES[task][split], task, rows)
            samples.setdefault(task, []).extend(rows)
    bpe = root / "bpe"
    train_tiny_bpe(smoke_texts(samples), num_merges, bpe)
    written = [p for split_files in files.values() for p in split_files.values()]
    written += sorted(bpe.iterdir())
    sha = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in written}
    manifest = {
        "version": SMOKE_VERSION,
        "world": world.WORLD_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_merges": num_merges,
        "counts": {"train": n_train, "val": n_val},
        "files": {t: dict(FILES[t]) for t in FILES},
        "bpe": "bpe",
        "sha256": sha,
    }
    (root / "ofa_smoke.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return {**manifest, "root": root, "bpe": bpe, "files": files}


def write_ofa_tiny(root: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """A few rows per task at 32 px with a ~100-merge BPE, for tests (well under a second)."""
    return write_ofa_smoke(root, seed=seed, n_train=6, n_val=3, image_size=32, num_merges=100)
