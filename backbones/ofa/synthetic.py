"""A random state dict in the released OFA checkpoint's key layout (tests and shape checks).

Kept apart from :mod:`.checkpoint` (which :mod:`.backbone` uses to load released weights) because it
builds an :class:`OFABackbone` to learn the shapes: here it imports both and neither imports it.
"""

from __future__ import annotations

import torch

from .backbone import OFABackbone
from .checkpoint import TIED_KEYS, derived_buffers, released_names
from .config import OFAConfig


def synthetic_released_state(
    cfg: OFAConfig, *, device: str = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """A state dict in the released key layout with the right names and shapes for ``cfg`` (random
    values; ``device="meta"`` for shapes only). What a real checkpoint of that size must look like."""
    with torch.device("meta"):
        shapes = OFABackbone("synthetic", cfg).state_dict()
    gen = torch.Generator().manual_seed(seed)
    meta = device == "meta"

    def fill(ref: torch.Tensor, name: str) -> torch.Tensor:
        if meta:
            return torch.empty(ref.shape, dtype=ref.dtype, device="meta")
        if not ref.is_floating_point():
            return torch.zeros(ref.shape, dtype=ref.dtype)
        if name.endswith("running_var"):
            return torch.rand(ref.shape, generator=gen) + 0.5
        return torch.randn(ref.shape, generator=gen) * 0.02

    out: dict[str, torch.Tensor] = {}
    for key, ref in shapes.items():
        names = released_names(key)
        if names == TIED_KEYS:
            if TIED_KEYS[0] not in out:
                shared = fill(ref, key)
                out.update(dict.fromkeys(TIED_KEYS, shared))
        elif len(names) == 3:
            rows = ref.shape[0] // 3
            for name in names:
                out[name] = fill(ref[:rows], name)
        else:
            out[names[0]] = fill(ref, names[0])
    for name, value in derived_buffers(cfg).items():
        out[name] = torch.empty(value.shape, dtype=value.dtype, device="meta") if meta else value.clone()
    return out
