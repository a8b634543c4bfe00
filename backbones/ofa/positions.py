"""OFA's relative position buckets: 1-D log buckets for text, 2-D offsets for the image grid.

These are index computations only; the learned tables live in the encoder and decoder (one per
layer, ``(buckets, heads)``). They reproduce the bucket indices of the released models exactly, so a
loaded table means what it meant in training (checked against the checkpoint's stored buffers when
a checkpoint carries them, see :mod:`.checkpoint`).
"""

from __future__ import annotations

import math

import torch


def text_buckets(
    length: int, bucket_size: int, max_positions: int, device: torch.device | None = None
) -> torch.Tensor:
    """Bucket index (L, L) of query ``i`` and key ``j``, in ``[0, 2 * bucket_size - 2]``.

    Offsets with ``|i - j| <= bucket_size // 2`` get their own bucket; larger ones share buckets that
    grow logarithmically up to ``max_positions - 1``.
    """
    pos = torch.arange(length, device=device)
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    near = (rel < mid) & (rel > -mid)
    dist = torch.where(near, torch.full_like(rel, mid - 1), rel.abs())
    log_bucket = torch.ceil(torch.log(dist / mid) / math.log((max_positions - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(dist <= mid, rel, log_bucket.to(rel.dtype) * torch.sign(rel))
    return bucket + bucket_size - 1


def image_position_ids(
    height: int, width: int, bucket_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Position id of every cell of an ``height x width`` feature grid, row-major: ``r * S + c + 1``
    (id 0 is reserved, as in the released models)."""
    if height > bucket_size or width > bucket_size:
        raise ValueError(
            f"image grid {height}x{width} exceeds the {bucket_size}x{bucket_size} position buckets; "
            f"use images of at most {16 * bucket_size} pixels"
        )
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).reshape(-1)


def image_buckets(
    height: int, width: int, bucket_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Bucket index (N, N), N = height * width, of the 2-D offset between two grid cells."""
    span = 2 * bucket_size - 1
    r = torch.arange(height, device=device).repeat_interleave(width)
    c = torch.arange(width, device=device).repeat(height)
    dr = r[:, None] - r[None, :] + bucket_size - 1
    dc = c[:, None] - c[None, :] + bucket_size - 1
    return dr * span + dc


def num_image_buckets(bucket_size: int) -> int:
    """Rows of an image relative-position table: every 2-D offset plus three special entries."""
    return (2 * bucket_size - 1) ** 2 + 3


def full_image_bucket_table(bucket_size: int) -> torch.Tensor:
    """The (S^2 + 1, S^2 + 1) index over position ids the released models store as a buffer
    (row and column 0 are the reserved id's special buckets)."""
    n = num_image_buckets(bucket_size)
    grid = image_buckets(bucket_size, bucket_size, bucket_size)
    table = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=grid.dtype)
    table[1:, 1:] = grid
    table[0, :] = n - 3
    table[:, 0] = n - 2
    table[0, 0] = n - 1
    return table


def decoder_image_position_index(bucket_size: int, code_image_size: int) -> torch.Tensor:
    """The decoder's position ids for image-code generation (stored as a buffer by the released
    models; only image generation uses them, which this harness does not run)."""
    window = code_image_size // 8
    ids = image_position_ids(window, window, bucket_size)
    return torch.cat([torch.tensor([0]), ids, torch.full((768,), 1024, dtype=ids.dtype)])
