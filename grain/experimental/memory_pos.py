"""Positional encoding of the region decoder's memory (``ModelConfig.decoder_memory_pos``; docs/method.md §6).

The paper's decoder ("none") sees position only through the ViT's own position embeddings. "sine" adds
DETR's fixed 2-D sine encoding of each patch's grid position (zero for CLS) to the cross-attention keys
of every layer, values unchanged, as DETR's decoder does; "sine_kv" adds it to the memory itself, so to
the keys and the values: what a query reads carries where it was read. No parameters: checkpoints are
the same either way.
"""

from __future__ import annotations

import math

import torch


def sine_pos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's ``PositionEmbeddingSine(normalize=True)`` for a ``grid × grid`` patch grid, flattened row-major
    like the ViT's patch tokens, with a zero row first for CLS → [1 + grid², dim] (``dim`` divisible
    by 4: the first half encodes the row (y), the second the column (x), sin/cos interleaved)."""
    if dim % 4:
        raise ValueError(f"sine positional encoding needs a decoder width divisible by 4, got {dim}")
    npf = dim // 2
    pos = (torch.arange(grid, dtype=torch.float32) + 1) / (grid + 1e-6) * 2 * math.pi  # DETR's normalised cumsum
    dim_t = temperature ** (2 * (torch.arange(npf) // 2) / npf)
    enc = pos[:, None] / dim_t  # [grid, npf], the same table for rows and columns (square grid)
    enc = torch.stack((enc[:, 0::2].sin(), enc[:, 1::2].cos()), dim=2).flatten(1)
    yy = enc[:, None, :].expand(grid, grid, npf)  # row index → y
    xx = enc[None, :, :].expand(grid, grid, npf)  # column index → x
    pe = torch.cat((yy, xx), dim=2).reshape(grid * grid, dim)
    return torch.cat((torch.zeros(1, dim), pe), dim=0)
