"""Seeded construction: the random draws inside the block come from ``seed``, the caller's stream
does not move.

Every seeded backbone (the micro and tiny architectures, OFA's random init) is built under
:func:`seeded`, so building one never shifts what a run draws afterwards. Only the CPU generator is
saved and restored (``fork_rng(devices=[])``): ``torch.manual_seed`` also seeds the CUDA
generators, and those are left as that seeding set them, as the hand-written save/restore this
replaced did (a GPU init, e.g. OFA's on ``device="cuda"``, draws from them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded with ``seed``; afterwards the CPU
    generator is back in the state it had before the block (also when the block raises)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
