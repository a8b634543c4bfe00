"""K-shot subsampling exactly as CoOp / Dassl do it, so few-shot results are comparable.

Dassl (``dassl/data/datasets/base_dataset.py``, ``generate_fewshot_dataset`` with ``repeat=False``)
groups the split's items by label in a ``defaultdict`` (so classes come in the order their first item
appears, items in split order), then for each class calls ``random.sample(items, K)``, or keeps all
items when a class has fewer than K. The randomness is the *global* ``random`` seeded with the run
seed. We use a private ``random.Random(seed)`` making the same calls in the same order, which gives
the same picks without touching global state. ``random.sample`` only looks at the population's
length, so sampling positions gives the same picks as sampling CoOp's ``Datum`` objects.

CoOp's datasets then sample the val split with ``min(K, 4)`` shots from the *same* random stream,
right after train (``datasets/oxford_pets.py``); :func:`few_shot_splits` reproduces that for tasks
whose loader asks for it (``meta["few_shot_selection"] == "coop"``). Base-to-new class subsampling
is applied after sampling, on the full split's picks, as in CoOp.

For disk datasets the picks are also written as a portable JSON index,
``<index_dir>/shot_{K}-seed_{S}.json`` holding ``[relpath, label]`` pairs relative to the dataset
folder (CoOp pickles absolute paths), and reused while the split files are unchanged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset, Subset

from .data import TaskData, TensorImageDataset

INDEX_FORMAT = "petlbench.fewshot/1"
SELECTION_SHOTS_CAP = 4  # CoOp: val = fewshot(val, min(K, 4))


def sample_few_shot(
    labels: Sequence[int], shots: int, seed: int, rng: random.Random | None = None
) -> list[int]:
    """Indices of a ``shots``-per-class subset of a split whose item labels are ``labels``.

    Returned class by class (in Dassl's class order), each class's picks in ``random.sample`` order.
    ``rng`` continues an existing random stream (then ``seed`` is not used).
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(index)
    if rng is None:
        rng = random.Random(seed)
    chosen: list[int] = []
    for items in by_label.values():
        chosen.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return chosen


def _full_labels(dataset: Dataset) -> list[int]:
    """Labels of the split as the reference samples it: for a disk dataset, the whole split file
    (base/new filtering comes after sampling)."""
    split = getattr(dataset, "split", None)
    if split is not None and hasattr(dataset, "few_shot_view"):
        return list(split.labels)
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(y) for y in labels]
    return [int(dataset[i][1]) for i in range(len(cast(Sized, dataset)))]


def _take(dataset: Dataset, picks: list[int]) -> Dataset:
    if hasattr(dataset, "few_shot_view"):
        return dataset.few_shot_view(picks)
    if isinstance(dataset, TensorImageDataset):
        index = torch.as_tensor(picks, dtype=torch.long)
        return TensorImageDataset(dataset.images[index], dataset.labels[index])
    return Subset(dataset, picks)


def _index_entries(dataset: Dataset, picks: list[int]) -> list[list[Any]]:
    split = dataset.split  # type: ignore[attr-defined]
    return [[split.relpaths[i], int(split.labels[i])] for i in picks]


def _read_index(path: Path, dataset: Dataset, key: str, sha: str) -> list[int] | None:
    """Positions in the full split of the picks an index file records, or None when the index is
    absent, from another split file, or does not match the split."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or data.get(f"{key}_sha256") != sha:
        return None
    split = dataset.split  # type: ignore[attr-defined]
    where: dict[str, int] = {}
    for i, rel in enumerate(split.relpaths):
        where.setdefault(rel, i)
    picks: list[int] = []
    for entry in data.get(key, []):
        if not (isinstance(entry, list) and len(entry) == 2):
            return None
        index = where.get(entry[0])
        if index is None or split.labels[index] != entry[1]:
            return None
        picks.append(index)
    return picks


def index_path(data: TaskData, shots: int, seed: int) -> Path | None:
    folder = data.meta.get("few_shot_index_dir")
    return Path(folder) / f"shot_{shots}-seed_{seed}.json" if folder else None


def few_shot_splits(
    data: TaskData, train_split: str, selection_split: str, shots: int | None, seed: int
) -> tuple[Dataset, Dataset]:
    """The training and model-selection datasets of one run.

    Without ``shots`` they are the task's splits as they are. With ``shots``, train is sampled per
    class; the selection split too (``min(shots, 4)`` per class, the same random stream) when the
    task follows CoOp's protocol, or, for a task with no val split of its own (ImageNet, whose val
    is the test set), carved from the training images *not* picked.
    """
    train = data.split(train_split)
    mode = data.meta.get("few_shot_selection")
    if not shots:
        return train, data.split(selection_split)
    rng = random.Random(seed)
    disk = hasattr(train, "few_shot_view")
    path = index_path(data, shots, seed) if disk else None
    train_sha = train.split.sha256() if disk else ""  # type: ignore[attr-defined]
    train_picks = _read_index(path, train, "train", train_sha) if path is not None and path.exists() else None
    regenerated = train_picks is None
    if train_picks is None:
        train_picks = sample_few_shot(_full_labels(train), shots, seed, rng)
    sel_shots = min(shots, SELECTION_SHOTS_CAP)
    if mode == "coop" and selection_split in data.splits:
        selection = data.split(selection_split)
        sel_sha = selection.split.sha256() if disk else ""  # type: ignore[attr-defined]
        sel_picks = None if regenerated or path is None else _read_index(path, selection, "val", sel_sha)
        if sel_picks is None:
            if not regenerated:  # replay the stream up to where val sampling starts
                sample_few_shot(_full_labels(train), shots, seed, rng)
            sel_picks = sample_few_shot(_full_labels(selection), sel_shots, seed, rng)
            regenerated = True
        if regenerated and path is not None:
            _write_index(path, shots, seed, train, train_picks, train_sha, selection, sel_picks, sel_sha)
        return _take(train, train_picks), _take(selection, sel_picks)
    if mode == "heldout" and selection_split not in data.splits:
        if not regenerated:  # replay the stream up to where the held-out sampling starts
            sample_few_shot(_full_labels(train), shots, seed, rng)
        picked = set(train_picks)
        labels = _full_labels(train)
        rest = [i for i in range(len(labels)) if i not in picked]
        held = sample_few_shot([labels[i] for i in rest], sel_shots, seed, rng)
        if regenerated and path is not None:
            _write_index(path, shots, seed, train, train_picks, train_sha, None, [], "")
        return _take(train, train_picks), _take(train, [rest[i] for i in held])
    if regenerated and path is not None:
        _write_index(path, shots, seed, train, train_picks, train_sha, None, [], "")
    return _take(train, train_picks), data.split(selection_split)


def _write_index(
    path: Path,
    shots: int,
    seed: int,
    train: Dataset,
    train_picks: list[int],
    train_sha: str,
    selection: Dataset | None,
    sel_picks: list[int],
    sel_sha: str,
) -> None:
    payload: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "algorithm": "Dassl generate_fewshot_dataset: per class random.sample(items, K), random.Random(seed)",
        "shots": shots,
        "seed": seed,
        "paths": "relative to the dataset folder",
        "train_sha256": train_sha,
        "train": _index_entries(train, train_picks),
    }
    if selection is not None:
        payload["val_shots"] = min(shots, SELECTION_SHOTS_CAP)
        payload["val_sha256"] = sel_sha
        payload["val"] = _index_entries(selection, sel_picks)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=0) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:  # a read-only dataset folder: the picks are recomputed next time (same result)
        pass


def read_index(path: Path) -> dict[str, list[tuple[str, int]]]:
    """The ``train`` (and ``val``) picks of an index file as ``(relpath, label)`` lists."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: [(str(p), int(y)) for p, y in data[k]] for k in ("train", "val") if k in data}
