"""K-shot subsampling exactly as CoOp / Dassl do it, so few-shot results are comparable.

Dassl (``dassl/data/datasets/base_dataset.py``, ``generate_fewshot_dataset`` with ``repeat=False``)
groups the split's items by label in a ``defaultdict`` (so classes come in the order their first item
appears, items in split order), then for each class calls ``random.sample(items, K)``, or keeps all
items when a class has fewer than K. The randomness is the *global* ``random`` seeded with the run
seed. We use a private ``random.Random(seed)`` making the same calls in the same order, which gives
the same picks without touching global state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def sample_few_shot(labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """Indices of a ``shots``-per-class subset of a split whose item labels are ``labels``.

    Returned class by class (in Dassl's class order), each class's picks in ``random.sample`` order.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for items in by_label.values():
        chosen.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return chosen
