"""Suite loaders for OFA's generative tasks: ``ofa_tsv`` (OFA's released tsv files under
``--data-root``) and ``ofa_smoke`` (the same formats generated offline on first use).

They return :class:`Seq2SeqTaskData` (image + instruction -> text), not the classification
``TaskData``: samples per split, the formatting and decoding options, the candidate answers of the
closed-set tasks and where the tokenizer comes from. The harness formats samples with
``benchmarks/ofa_tasks/formatting.py`` at the backbone's resolution and runs them through
``harness/seq2seq.py``.

Decoding defaults are OFA's evaluation settings (reference A3): RefCOCO beam 5, exactly 4 tokens,
no-repeat 3-grams, unconstrained; caption beam 5, at most 16 tokens, no-repeat 3-grams; SNLI-VE and
VQA score every candidate answer (``allcand``), with the trie of the candidates also constraining
the training loss (OFA's constraint masks; ``constrained_training: false`` turns it off).
``prompt_type: prev_output`` (OFA's SNLI-VE and VQA scripts) starts the decoder with the source
tokens (without their EOS) and scores / generates the answer after them. ``split_names`` gives the
dataset's own name of a split (``{test: test2015}``, ``{val: dev}``); results record it as
``eval.split``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petlbench.errors import UserError

from ._args import REQUIRED, check_choice, check_range, read_args
from .ofa_tsv import TASKS, OFASample, OFATsvIndex, read_ofa_tsv
from .registry import FORMATS, DatasetFormat

if TYPE_CHECKING:
    from ..suites import TaskSpec

SPLITS = ("train", "val", "test")
INFERENCE = ("beam", "allcand")
PROMPT_TYPES = ("none", "prev_output")
DECODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "refcoco": {"inference": "beam", "beam": 5, "max_len": 4, "min_len": 4, "no_repeat_ngram_size": 3},
    "snli_ve": {"inference": "allcand", "beam": 5, "max_len": 8, "min_len": 1, "no_repeat_ngram_size": 0},
    "caption": {"inference": "beam", "beam": 5, "max_len": 16, "min_len": 1, "no_repeat_ngram_size": 3},
    "vqa": {"inference": "allcand", "beam": 5, "max_len": 8, "min_len": 1, "no_repeat_ngram_size": 0},
}
CACHE_ENV = "PETLBENCH_CACHE"

_COMMON: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "task": (str, REQUIRED),
    "inference": ((str, type(None)), None),
    "beam": ((int, type(None)), None),
    "max_len": ((int, type(None)), None),
    "min_len": ((int, type(None)), None),
    "no_repeat_ngram_size": ((int, type(None)), None),
    "length_penalty": (float, 1.0),
    "patch_image_size": ((int, type(None)), None),  # None: the backbone's resolution
    "max_image_size": (int, 512),
    "num_bins": (int, 1000),
    "add_caption": (bool, False),
    "max_src_words": (int, 80),
    "max_caption_words": (int, 20),
    "constrained_training": ((bool, type(None)), None),  # None: on for the closed-set tasks
    "prompt_type": (str, "none"),  # none: the decoder starts at BOS; prev_output: after the source
    "max_examples": (dict, {}),  # split -> first n samples
    "split_names": (dict, {}),  # split -> the dataset's own name for it (recorded), e.g. test: test2015
}
TSV_SCHEMA = {
    **_COMMON,
    "files": (dict, REQUIRED),  # split -> tsv path relative to the data root
    "tokenizer": ((str, type(None)), None),  # folder with vocab.json + merges.txt; None: the checkpoint's
    "candidates": ((str, type(None)), None),  # vqa: "train" or an ans2label .pkl under the data root
}
SMOKE_SCHEMA = {
    **_COMMON,
    "n_train": (int, 64),
    "n_val": (int, 32),
    "image_size": (int, 64),
    "seed": (int, 0),
    "num_merges": (int, 300),
}
SMOKE_SPLITS = {"train": "train", "val": "val"}


@dataclass
class Seq2SeqTaskData:
    """One loaded generative task. ``splits`` hold raw samples (parsed lazily for big files);
    ``options`` are the formatting and decoding settings; ``candidates`` the closed answer set
    (SNLI-VE, VQA) or None; ``tokenizer_dir`` the data's tokenizer (None: the backbone's)."""

    name: str
    task: str
    splits: dict[str, Sequence[OFASample]]
    options: dict[str, Any]
    candidates: list[str] | None = None
    tokenizer_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    generative: bool = True  # what the runner dispatches on

    def split(self, name: str) -> Sequence[OFASample]:
        if name not in self.splits:
            raise UserError(
                f"task {self.name!r} has no split {name!r}; available splits: {', '.join(self.splits)}. "
                "Pick one of these in the suite protocol (train_split / selection_split / eval_split)."
            )
        return self.splits[name]

    def split_name(self, name: str) -> str:
        """The dataset's own name of split ``name`` (the ``split_names`` arg; else ``name``), e.g.
        ``test`` -> ``test2015`` for OFA's ``vqa_test.tsv``; results record it."""
        return str(self.options.get("split_names", {}).get(name, name))

    @property
    def decode_options(self) -> dict[str, Any]:
        keys = ("inference", "beam", "max_len", "min_len", "no_repeat_ngram_size", "length_penalty")
        return {k: self.options[k] for k in keys}


def _common(loader: str, a: dict[str, Any]) -> dict[str, Any]:
    check_choice(loader, "task", a["task"], TASKS)
    out = dict(a)
    for key, value in DECODE_DEFAULTS[a["task"]].items():
        if out.get(key) is None:
            out[key] = value
    check_choice(loader, "inference", out["inference"], INFERENCE)
    check_choice(loader, "prompt_type", out["prompt_type"], PROMPT_TYPES)
    if out["inference"] == "allcand" and a["task"] not in ("snli_ve", "vqa"):
        raise UserError(f"loader {loader!r}: inference 'allcand' needs a closed answer set (snli_ve or vqa)")
    check_range(loader, "beam", out["beam"], 1)
    check_range(loader, "max_len", out["max_len"], 1)
    check_range(loader, "min_len", out["min_len"], 0, out["max_len"])
    check_range(loader, "no_repeat_ngram_size", out["no_repeat_ngram_size"], 0)
    check_range(loader, "num_bins", out["num_bins"], 2)
    if out["constrained_training"] is None:
        out["constrained_training"] = a["task"] in ("snli_ve", "vqa")
    bad = sorted(set(out["max_examples"]) - set(SPLITS))
    if bad or not all(isinstance(v, int) and v > 0 for v in out["max_examples"].values()):
        raise UserError(
            f"loader {loader!r}: max_examples maps splits ({', '.join(SPLITS)}) to positive counts"
        )
    names = out["split_names"]
    if set(names) - set(SPLITS) or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise UserError(
            f"loader {loader!r}: split_names maps splits ({', '.join(SPLITS)}) to the dataset's own "
            "names for them (non-empty strings, e.g. {test: test2015})"
        )
    return out


def check_tsv_args(args: Mapping[str, Any]) -> None:
    a = _common("ofa_tsv", read_args("ofa_tsv", args, TSV_SCHEMA))
    bad = sorted(set(a["files"]) - set(SPLITS))
    if bad or "train" not in a["files"] or not all(isinstance(v, str) for v in a["files"].values()):
        raise UserError(
            f"loader 'ofa_tsv': files maps splits ({', '.join(SPLITS)}; train required) to tsv paths "
            "relative to the data root"
        )


def check_smoke_args(args: Mapping[str, Any]) -> None:
    a = _common("ofa_smoke", read_args("ofa_smoke", args, SMOKE_SCHEMA))
    check_range("ofa_smoke", "n_train", a["n_train"], 1)
    check_range("ofa_smoke", "n_val", a["n_val"], 1)
    check_range("ofa_smoke", "image_size", a["image_size"], 16, 1024)


def _limit(samples: Sequence[OFASample], n: int | None) -> Sequence[OFASample]:
    return samples if n is None or n >= len(samples) else samples[:n]


def _candidates(
    task: str, arg: str | None, splits: Mapping[str, Sequence[OFASample]], root: Path | None
) -> list[str] | None:
    """The closed answer set: SNLI-VE's three, VQA's from the train answers or OFA's ans2label file."""
    from petlbench.benchmarks.ofa_tasks.formatting import candidate_answers

    if task == "snli_ve":
        return candidate_answers(task, [])
    if task != "vqa":
        return None
    if arg is None or arg == "train":
        return candidate_answers(task, splits["train"])
    path = (root / arg) if root is not None else Path(arg)
    if not path.is_file():
        raise UserError(
            f"VQA candidate answers {path} not found (OFA's trainval_ans2label.pkl from vqa_data.zip)"
        )
    table = read_answer_table(path)
    return [a for a, _ in sorted(table.items(), key=lambda kv: kv[1])]


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads pickles of plain data only (dicts, lists, strings, numbers): every global - the way a
    pickle runs code - is refused, so a planted file cannot execute anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data is read")


def read_answer_table(path: Path) -> dict[str, int]:
    """OFA's VQA answer -> label id table: ``.json`` ({answer: id} or a list of answers in id order),
    or OFA's ``trainval_ans2label.pkl`` read as plain data only (no code can run from it)."""
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as f:
                raw = _PlainDataUnpickler(f).load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"{path}: not a readable answer table ({err})") from None
    if isinstance(raw, list):
        raw = {a: i for i, a in enumerate(raw)}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in raw.items()
    ):
        raise UserError(f"{path}: expected a dict answer -> label id (or a list of answers)")
    return raw


def load_ofa_tsv(task_spec: TaskSpec, data_root: Path | None) -> Seq2SeqTaskData:
    a = _common("ofa_tsv", read_args("ofa_tsv", task_spec.args, TSV_SCHEMA))
    assert data_root is not None
    root = Path(data_root)
    splits: dict[str, Sequence[OFASample]] = {}
    for split, rel in a["files"].items():
        index = OFATsvIndex(root / rel, a["task"], check_images=False)  # images checked when formatted
        splits[split] = _limit(index, a["max_examples"].get(split))
    tok = Path(root / a["tokenizer"]) if a["tokenizer"] else None
    return Seq2SeqTaskData(
        name=task_spec.name,
        task=a["task"],
        splits=splits,
        options=a,
        candidates=_candidates(a["task"], a["candidates"], splits, root),
        tokenizer_dir=tok,
        meta={
            "loader": "ofa_tsv",
            "args": dict(task_spec.args),
            "files": dict(a["files"]),
            "sizes": {s: len(v) for s, v in splits.items()},
        },
    )


def cache_dir() -> Path:
    """Where generated data goes: ``$PETLBENCH_CACHE`` or ``~/.cache/petlbench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "petlbench")


def smoke_root(a: Mapping[str, Any]) -> Path:
    """The smoke data folder for these generation arguments, written once (atomically) on first use."""
    from petlbench.benchmarks.ofa_tasks.smoke import SMOKE_VERSION, write_ofa_smoke

    gen = {k: a[k] for k in ("n_train", "n_val", "image_size", "seed", "num_merges")}
    key = hashlib.sha256(json.dumps({"v": SMOKE_VERSION, **gen}, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir() / f"ofa-smoke-{key}"
    if (root / "ofa_smoke.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        write_ofa_smoke(tmp, **gen)
        try:
            tmp.rename(root)
        except OSError:  # another process wrote it first
            if not (root / "ofa_smoke.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_ofa_smoke(task_spec: TaskSpec, data_root: Path | None) -> Seq2SeqTaskData:  # noqa: ARG001
    from petlbench.benchmarks.ofa_tasks.smoke import FILES

    a = _common("ofa_smoke", read_args("ofa_smoke", task_spec.args, SMOKE_SCHEMA))
    root = smoke_root(a)
    manifest = json.loads((root / "ofa_smoke.json").read_text())
    splits = {
        split: _limit(read_ofa_tsv(root / FILES[a["task"]][name], a["task"]), a["max_examples"].get(split))
        for split, name in SMOKE_SPLITS.items()
    }
    return Seq2SeqTaskData(
        name=task_spec.name,
        task=a["task"],
        splits=splits,
        options=a,
        candidates=_candidates(a["task"], "train", splits, None),
        tokenizer_dir=root / "bpe",
        meta={
            "loader": "ofa_smoke",
            "args": dict(task_spec.args),
            "generator": manifest["version"],
            "sha256": manifest["sha256"],
            "sizes": {s: len(v) for s, v in splits.items()},
        },
    )


FORMATS.register(
    "ofa_tsv", DatasetFormat(load_ofa_tsv, needs_data_root=True, check_args=check_tsv_args, generative=True)
)
FORMATS.register("ofa_smoke", DatasetFormat(load_ofa_smoke, check_args=check_smoke_args, generative=True))
