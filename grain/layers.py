"""The region decoder's building blocks, after DETR: a pre-norm decoder layer and the box-head MLP.

Shapes: B images, Q' queries (Q region queries + the image query), T memory tokens, d decoder width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoderLayer(nn.Module):
    """One pre-norm DETR decoder layer (DETR's ``forward_pre``)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)  # inside the FFN
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor,
                memory_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tgt [B, Q', d], memory [B, T, d], query_pos [B, Q', d], memory_pos [T, d] | None → [B, Q', d]."""
        x = self.norm1(tgt)
        qk = x + query_pos
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, x, need_weights=False)[0])
        x = self.norm2(tgt)
        key = memory if memory_pos is None else memory + memory_pos.to(memory.dtype)
        tgt = tgt + self.dropout2(self.cross_attn(x + query_pos, key, memory, need_weights=False)[0])
        x = self.norm3(tgt)
        tgt = tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head): dims[0] → dims[1] → … → dims[-1]."""

    def __init__(self, *dims: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
