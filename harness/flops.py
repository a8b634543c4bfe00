"""GFLOPs per image with fvcore, in one documented convention.

Convention: fvcore counts one multiply-add as one "flop", so every number here is in **GMACs**
(as the papers report). Every linear, convolution and attention matmul is counted: fvcore does not
know ``aten::scaled_dot_product_attention``, so a handle counts it as the two matmuls it is
(Q K^T and A V: ``2 * B * H * L * S * d_head``). LayerNorm and the other elementwise ops fvcore
handles are counted as fvcore counts them; softmax, GELU and additions are not counted. Text-tower
cost is reported separately, per class prompt of the full 77-token context.

Pinned by tests: CLIP ViT-B/16 image tower and timm ViT-B/16 at 224x224, batch 1 = 17.58 GMACs;
one 77-token CLIP text prompt = 2.98 GMACs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from math import prod
from typing import Any, cast

import torch
from torch import nn

from petlbench.backbones.base import Backbone


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of scaled_dot_product_attention: Q K^T and A V (softmax not counted)."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    *batch, length, head_dim = q
    keys = k[-2]
    v_dim = _shape(inputs[2])[-1]
    return prod(batch) * length * keys * (head_dim + v_dim)


class _Call(nn.Module):
    """Traces ``fn`` with ``owners`` registered, so the tracer sees their parameters as parameters."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *owners: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.owners = nn.ModuleList(owners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, dict[str, int]]:
    """Total MACs and MACs per operator of ``module(*inputs)`` (traced once, in eval mode, no grad)."""
    with warnings.catch_warnings():  # fvcore's import scripts a helper: torch's deprecation notice,
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # not ours
        from fvcore.nn import FlopCountAnalysis

    was_training = module.training
    module.eval()
    # Tensors that require grad cannot be traced as constants (e.g. a method's prompts reached
    # through a slot): counting needs no gradient, so switch it off for the duration.
    grads = [p for p in module.parameters() if p.requires_grad]
    for p in grads:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(module, inputs)
            analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    finally:
        module.train(was_training)
        for p in grads:
            p.requires_grad_(True)
    return total, by_op


def image_gmacs(backbone: Backbone, *attached: nn.Module, image_size: int | None = None) -> float:
    """GMACs of one image through the image tower, with whatever the ``attached`` method put in its
    slots (pass the method so its parameters are traced as parameters)."""
    size = image_size or backbone.image_size
    pixels = torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device)
    total, _ = count_macs(_Call(backbone.encode_image, backbone, *attached), (pixels,))
    return total / 1e9


def text_gmacs_per_prompt(
    backbone: Backbone, *attached: nn.Module, context_length: int | None = None
) -> float:
    """GMACs of one class prompt through the text tower at the full context length (77 for CLIP)."""
    tower = backbone.tower("text")
    length = context_length or cast(int, tower.context_length)
    ids = torch.ones(1, length, dtype=torch.long, device=next(backbone.parameters()).device)
    embedding = cast(nn.Embedding, tower.token_embedding)
    ids[0, -1] = embedding.num_embeddings - 1  # EOT (highest id) last: nothing is cut
    encode_text = cast(Callable[[torch.Tensor], torch.Tensor], backbone.encode_text)  # a CLIP backbone's
    total, _ = count_macs(_Call(encode_text, backbone, *attached), (ids,))
    return total / 1e9
