"""Initialisation of the tiny test backbones as useful *random-feature* extractors.

timm's and open_clip's inits (weights ~ N(0, 0.02), small position embeddings) are tuned for
training wide models from scratch; at width 64 they make a random network's output almost
constant, so nothing built on it can beat chance. Scaling every matrix to variance 1/fan_in and
the position embeddings to a visible size keeps the input's information in the random features,
which is what the offline smoke suite needs for method comparisons to show anything.
"""

from __future__ import annotations

import torch
from torch import nn

POSITION_STD = 0.5


@torch.no_grad()
def random_feature_init(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if "pos" in name or "positional" in name:
            param.copy_(torch.randn(param.shape, generator=gen) * POSITION_STD)
        elif "token_embedding" in name:
            param.copy_(torch.randn(param.shape, generator=gen))
        elif param.ndim >= 2:
            fan_in = param[0].numel()
            param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
