"""The DETR-style region decoder of GRAIN (docs/method.md §2.2), decoder only.

Shapes: B images, T image tokens (197 for ViT-B/16: CLS + 14×14 patches, after the ViT's final
norm), W vision width, d decoder width, Q region queries (+1 image query, last), D embed width.

    memory  = LayerNorm(Linear(W → d, no bias)(tokens))           [B, T, d]   (no positional encoding)
    targets start at zero, query embeddings nn.Embedding(Q+1, d)   [Q+1, d]
    6 × pre-norm layer: self-attn (query embed added to q, k) → cross-attn (added to q) → FFN (ReLU)
    a final LayerNorm (shared) on each layer's output
    boxes  = sigmoid(MLP d→d→d→4)(region outputs)                 [B, Q, 4] normalised cxcywh
    region = region outputs @ W_r                                  [B, Q, D]
    image  = image-query output @ W_i                              [B, D]   (the global image embedding)

Options that are not the paper's (off by default; ``grain.experimental``): a sine encoding of the memory
(``memory_pos`` "sine" / "sine_kv", ``experimental.memory_pos``) and two-stage region queries
(``region_queries="two_stage"`` with ``proposal_head`` "mlp" / "conv", ``experimental.two_stage``).
"""

from __future__ import annotations

import torch
from torch import nn

from grain.config import MEMORY_POS, PROPOSAL_HEADS, REGION_QUERIES
from grain.experimental import two_stage
from grain.experimental.memory_pos import sine_pos_2d
from grain.layers import MLP, DecoderLayer


class RegionDecoder(nn.Module):
    """Region queries over the image tokens → boxes, region embeddings and the global image embedding."""

    def __init__(
        self,
        vision_width: int,
        embed_dim: int,
        num_queries: int = 5,
        dim: int = 512,
        layers: int = 6,
        heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        memory_pos: str = "none",
        grid: int | None = None,
        region_queries: str = "learned",
        proposal_head: str = "mlp",
    ):
        super().__init__()
        if region_queries not in REGION_QUERIES:
            raise ValueError(f"region_queries must be one of {REGION_QUERIES}, got {region_queries!r}")
        if region_queries == "two_stage" and (not grid or num_queries > grid * grid):
            raise ValueError(f"region_queries='two_stage' needs the patch grid (grid={grid}) and at most grid² "
                             f"patches as queries, got num_queries={num_queries}")
        if proposal_head not in PROPOSAL_HEADS:
            raise ValueError(f"proposal_head must be one of {PROPOSAL_HEADS}, got {proposal_head!r}")
        if memory_pos not in MEMORY_POS:
            raise ValueError(f"memory_pos must be one of {MEMORY_POS}, got {memory_pos!r}")
        if memory_pos != "none" and not grid:
            raise ValueError(f"memory_pos={memory_pos!r} needs the patch grid size (grid=image_size // patch_size)")
        self.num_queries = num_queries
        self.memory_pos = memory_pos
        # Not a parameter, not saved: recomputed from (grid, dim), so checkpoints are the same either way.
        self.register_buffer("memory_pos_table", sine_pos_2d(grid, dim) if memory_pos != "none" else None,
                             persistent=False)
        self.memory_proj = nn.Linear(vision_width, dim, bias=False)
        self.memory_norm = nn.LayerNorm(dim)
        self.query_embed = nn.Embedding(num_queries + 1, dim)  # Q region queries, then the image query
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)  # shared final norm, applied to every layer's output (DETR)
        self.box_head = MLP(dim, dim, dim, 4)
        self.region_queries, self.grid, self.proposal_head = region_queries, grid, proposal_head
        if region_queries == "two_stage":
            self.proposal_score, self.proposal_box = two_stage.proposal_heads(dim, proposal_head)
            self.register_buffer("anchor_logits", two_stage.cell_anchor_logits(grid), persistent=False)
        scale = dim**-0.5  # open_clip's init for projection matrices
        self.region_proj = nn.Parameter(scale * torch.randn(dim, embed_dim))  # W_r
        self.image_proj = nn.Parameter(scale * torch.randn(dim, embed_dim))  # W_i

    def forward(self, tokens: torch.Tensor, return_intermediate: bool = False) -> dict[str, torch.Tensor]:
        """tokens [B, T, W] (ViT output after its final norm, CLS included) → dict:

        ``pred_boxes`` [B, Q, 4] normalised cxcywh in (0, 1); ``region_embed`` [B, Q, D];
        ``image_embed`` [B, D] (all unnormalised). With ``return_intermediate``, also ``aux``: a list
        over the earlier layers of ``{"pred_boxes", "region_embed"}`` (for optional auxiliary losses).
        """
        if tokens.dim() != 3:
            raise ValueError(f"RegionDecoder expects tokens [B, T, W], got shape {tuple(tokens.shape)}")
        memory, pos = self.memory_values(tokens), None
        if self.memory_pos == "sine":
            pos = self.memory_pos_table  # keys only, added in every layer
        b = tokens.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        ref, extra = None, {}
        if self.region_queries == "two_stage":
            tgt, ref, extra = two_stage.start_queries(memory, self.proposals(memory), tgt, self.num_queries)
        outs = []
        for i, layer in enumerate(self.layers):
            tgt = layer(tgt, memory, query_pos, pos)
            if return_intermediate or i == len(self.layers) - 1:
                outs.append(self.norm(tgt))
        heads = [self._heads(h, ref) for h in outs]
        result = {**heads[-1], **extra}
        if return_intermediate:
            result["aux"] = [{k: h[k] for k in ("pred_boxes", "region_embed")} for h in heads[:-1]]
        return result

    def memory_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, W] → what every cross-attention reads as values [B, T, d]: LayerNorm(Linear(tokens)),
        plus the sine table with ``memory_pos="sine_kv"`` (then the keys too)."""
        memory = self.memory_norm(self.memory_proj(tokens))
        pos = self.memory_pos_table
        if pos is not None and pos.shape[0] != memory.shape[1]:
            raise ValueError(f"memory_pos table has {pos.shape[0]} positions, the image gave {memory.shape[1]} tokens")
        if self.memory_pos == "sine_kv":
            memory = memory + pos.to(memory.dtype)
        return memory

    def proposals(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        """Two-stage proposals from memory [B, T, d] (``grain.experimental.two_stage.propose``)."""
        return two_stage.propose(memory, self.proposal_score, self.proposal_box, self.anchor_logits,
                                 self.proposal_head, self.num_queries)

    def _heads(self, h: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        regions, image = h[:, : self.num_queries], h[:, self.num_queries]
        delta = self.box_head(regions)
        return {
            "pred_boxes": (delta if ref is None else ref.to(delta.dtype) + delta).sigmoid(),
            "region_embed": regions @ self.region_proj.to(regions.dtype),
            "image_embed": image @ self.image_proj.to(image.dtype),
        }
