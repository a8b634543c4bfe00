"""OFA's tsv files (reference A3.1): one sample per line, tab-separated, the image as
``base64.urlsafe_b64encode`` of the raw image file bytes.

Columns, in order:

- ``refcoco``: uniq-id, image-id, text, region-coord ``x0,y0,x1,y1`` (absolute pixels), image-base64
- ``snli_ve``: uniq-id, image-id, image-base64, hypothesis, caption (the premise), label
  (``entailment`` / ``neutral`` / ``contradiction``)
- ``caption``: uniq-id, image-id, caption (val/test: references joined by ``&&``), object labels
  (``&&``-joined, unused by OFA, may be empty), image-base64
- ``vqa``: question-id, image-id, question, answers ``conf|!+answer&&conf|!+answer...``, object labels,
  image-base64

Every malformed line raises one :class:`~petlbench.errors.UserError` naming the file and the line.
Real files are large (base64 images, ~100 GB for VQA), so :func:`iter_ofa_tsv` streams and
:class:`OFATsvIndex` keeps only line offsets and parses a line when it is asked for.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import overload

from PIL import Image

from petlbench.errors import UserError

TASKS = ("refcoco", "snli_ve", "caption", "vqa")
COLUMNS: dict[str, tuple[str, ...]] = {
    "refcoco": ("uniq-id", "image-id", "text", "region-coord", "image-base64"),
    "snli_ve": ("uniq-id", "image-id", "image-base64", "hypothesis", "caption", "label"),
    "caption": ("uniq-id", "image-id", "caption", "object-labels", "image-base64"),
    "vqa": ("question-id", "image-id", "question", "answers", "object-labels", "image-base64"),
}
SNLI_LABELS = ("entailment", "neutral", "contradiction")
ANSWER_SEP = "|!+"
LIST_SEP = "&&"
_URLSAFE = bytes.maketrans(b"-_", b"+/")


@dataclass
class OFASample:
    """One tsv line. ``image`` is the encoded image file (JPEG/PNG bytes); the task fields that a
    format does not have keep their defaults. ``answers`` maps answer -> soft score (VQA's ``conf``);
    ``captions`` holds one caption (train) or the references (val/test)."""

    uid: str
    image_id: str
    image: bytes
    text: str = ""
    box: tuple[float, float, float, float] | None = None
    hypothesis: str = ""
    premise: str = ""
    label: str = ""
    captions: list[str] = field(default_factory=list)
    question: str = ""
    answers: dict[str, float] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)

    def pil(self) -> Image.Image:
        """The image, decoded and converted to RGB."""
        return Image.open(BytesIO(self.image)).convert("RGB")


# ----- field codecs -------------------------------------------------------------------------------


def encode_image(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def decode_image_field(text: str) -> bytes:
    """Bytes of a base64 field; the url-safe alphabet (OFA's) and the standard one are both accepted,
    anything else (stray characters, bad padding) raises ``binascii.Error``."""
    return base64.b64decode(text.strip().encode("ascii", errors="replace").translate(_URLSAFE), validate=True)


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.strip().split(",")
    if len(parts) != 4:
        raise ValueError(f"expected 4 comma-separated numbers x0,y0,x1,y1, got {len(parts)}")
    x0, y0, x1, y1 = (float(p) for p in parts)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError("coordinates must be finite")
    if x1 < x0 or y1 < y0:
        raise ValueError("x1 < x0 or y1 < y0 (the box is xyxy in absolute pixels)")
    return (x0, y0, x1, y1)


def format_box(box: Sequence[float]) -> str:
    return ",".join(repr(float(v)) for v in box)


def parse_answers(text: str) -> dict[str, float]:
    """``conf|!+answer&&...`` -> {answer: conf}; an empty field (test splits) gives {}. A repeated
    answer keeps its last score, as OFA's dict comprehension does."""
    out: dict[str, float] = {}
    if not text.strip():
        return out
    for item in text.split(LIST_SEP):
        conf, sep, answer = item.partition(ANSWER_SEP)
        if not sep:
            raise ValueError(f"answer {item!r} lacks the {ANSWER_SEP!r} separator (expected conf|!+answer)")
        score = float(conf)
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ValueError(f"answer {item!r}: the confidence must be a number in [0, 1]")
        out[answer] = score
    return out


def format_answers(answers: dict[str, float]) -> str:
    for a in answers:
        if LIST_SEP in a or ANSWER_SEP in a:
            raise ValueError(
                f"answer {a!r} contains {LIST_SEP!r} or {ANSWER_SEP!r}, which the format cannot hold"
            )
    return LIST_SEP.join(f"{float(c)!r}{ANSWER_SEP}{a}" for a, c in answers.items())


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(LIST_SEP)] if text.strip() else []


# ----- reading ------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown OFA tsv format {task!r}; known formats: {', '.join(TASKS)}")


def parse_line(line: str, task: str, *, where: str = "<line>", check_images: bool = True) -> OFASample:
    """One tsv line (without its newline) as a sample; errors name ``where`` (``file:line``)."""
    cols = COLUMNS[task]
    fields = line.split("\t")
    if len(fields) != len(cols):
        raise UserError(
            f"{where}: expected {len(cols)} tab-separated columns for an OFA {task} tsv "
            f"({', '.join(cols)}), found {len(fields)}"
        )
    row = dict(zip(cols, fields, strict=True))
    try:
        image = decode_image_field(row["image-base64"])
    except (binascii.Error, ValueError) as err:
        raise UserError(f"{where}: column image-base64 is not valid base64 ({err})") from None
    if check_images:
        try:
            with Image.open(BytesIO(image)) as im:
                im.verify()
        except Exception as err:  # PIL raises several types for a corrupt file
            raise UserError(f"{where}: column image-base64 does not decode to an image ({err})") from None
    uid = row.get("uniq-id", row.get("question-id", ""))
    sample = OFASample(uid=uid, image_id=row["image-id"], image=image)
    if task == "refcoco":
        sample.text = row["text"]
        try:
            sample.box = parse_box(row["region-coord"])
        except ValueError as err:
            raise UserError(f"{where}: bad region-coord {row['region-coord']!r}: {err}") from None
    elif task == "snli_ve":
        sample.hypothesis, sample.premise = row["hypothesis"], row["caption"]
        sample.label = row["label"].strip()
        if sample.label not in SNLI_LABELS:
            raise UserError(
                f"{where}: unknown SNLI-VE label {sample.label!r}; expected one of {', '.join(SNLI_LABELS)}"
            )
    elif task == "caption":
        sample.captions = [" ".join(c.split()) for c in row["caption"].split(LIST_SEP)]
        sample.objects = _split_list(row["object-labels"])
    else:
        sample.question = row["question"]
        try:
            sample.answers = parse_answers(row["answers"])
        except ValueError as err:
            raise UserError(f"{where}: bad answers field: {err}") from None
        sample.objects = _split_list(row["object-labels"])
    return sample


def _open(path: Path, task: str) -> Path:
    _check_task(task)
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"OFA {task} tsv file {path} not found; expected tab-separated lines with columns "
            f"{', '.join(COLUMNS[task])} (OFA's released data, or generated by "
            "petlbench.benchmarks.ofa_tasks.smoke.write_ofa_smoke)"
        )
    return path


def _decode_line(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: not UTF-8 text ({err})") from None


def iter_ofa_tsv(path: str | Path, task: str, *, check_images: bool = True) -> Iterator[OFASample]:
    """Stream the samples of a tsv file, one line at a time; blank lines are skipped.
    ``check_images`` verifies that each image decodes (cheap header/CRC check, no full decode)."""
    path = _open(Path(path), task)
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            line = _decode_line(raw, where)
            if line.strip():
                yield parse_line(line, task, where=where, check_images=check_images)


def read_ofa_tsv(path: str | Path, task: str, *, check_images: bool = True) -> list[OFASample]:
    """Every sample of a tsv file (see :func:`iter_ofa_tsv`)."""
    return list(iter_ofa_tsv(path, task, check_images=check_images))


class OFATsvIndex(Sequence[OFASample]):
    """Random access to a large tsv: one scan records the byte offset of every non-blank line; a
    sample is parsed (and its base64 decoded) only when indexed. The file is reopened per access so
    the index can be shared with DataLoader worker processes."""

    def __init__(self, path: str | Path, task: str, *, check_images: bool = True) -> None:
        self.path = _open(Path(path), task)
        self.task = task
        self.check_images = check_images
        self._offsets: list[tuple[int, int]] = []  # (byte offset, line number)
        with self.path.open("rb") as f:
            pos = 0
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    self._offsets.append((pos, n))
                pos += len(raw)

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, i: int) -> OFASample: ...
    @overload
    def __getitem__(self, i: slice) -> list[OFASample]: ...

    def __getitem__(self, i: int | slice) -> OFASample | list[OFASample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        pos, n = self._offsets[i]
        with self.path.open("rb") as f:
            f.seek(pos)
            raw = f.readline()
        where = f"{self.path}:{n}"
        return parse_line(_decode_line(raw, where), self.task, where=where, check_images=self.check_images)


# ----- writing ------------------------------------------------------------------------------------


def _clean(value: str, what: str, uid: str) -> str:
    if any(c in value for c in "\t\r\n"):
        raise ValueError(
            f"sample {uid!r}: {what} contains a tab or newline, which the tsv format cannot hold"
        )
    return value


def format_line(task: str, s: OFASample) -> str:
    """The tsv line (no newline) of a sample."""
    _check_task(task)
    img = encode_image(s.image)
    if task == "refcoco":
        if s.box is None:
            raise ValueError(f"refcoco sample {s.uid!r} has no box")
        fields = [s.uid, s.image_id, s.text, format_box(s.box), img]
    elif task == "snli_ve":
        if s.label not in SNLI_LABELS:
            raise ValueError(f"sample {s.uid!r}: SNLI-VE label must be one of {SNLI_LABELS}, got {s.label!r}")
        fields = [s.uid, s.image_id, img, s.hypothesis, s.premise, s.label]
    elif task == "caption":
        if any(LIST_SEP in c for c in s.captions):
            raise ValueError(f"sample {s.uid!r}: a caption contains {LIST_SEP!r}, the reference separator")
        fields = [s.uid, s.image_id, LIST_SEP.join(s.captions), LIST_SEP.join(s.objects), img]
    else:
        fields = [s.uid, s.image_id, s.question, format_answers(s.answers), LIST_SEP.join(s.objects), img]
    return "\t".join(_clean(v, COLUMNS[task][k], s.uid) for k, v in enumerate(fields))


def write_ofa_tsv(path: str | Path, task: str, samples: Iterable[OFASample]) -> Path:
    """Write samples in the task's tsv format (``\\n`` line ends, UTF-8); returns the path."""
    _check_task(task)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for s in samples:
            f.write(format_line(task, s) + "\n")
    return path
