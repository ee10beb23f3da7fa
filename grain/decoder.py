"""The DETR-style region decoder of GRAIN (docs/method.md §2.2), decoder only.

Shapes: B images, T image tokens (197 for ViT-B/16: CLS + 14×14 patches, after the ViT's final
norm), W vision width, d decoder width, Q region queries (+1 image query, last), D embed width.

    memory  = LayerNorm(Linear(W → d, no bias)(tokens))           [B, T, d]   (no positional encoding)
    targets start at zero, query embeddings nn.Embedding(Q+1, d)   [Q+1, d]
    6 × pre-norm layer: self-attn (query embed added to q, k) → cross-attn (added to q) → FFN (ReLU)
    a final LayerNorm (shared) on each layer's output
    memory_pos="sine" (an option, off by default: not in the release; docs/method.md §6): DETR's fixed 2-D
    sine encoding of each patch's grid position (zero for CLS) added to the cross-attention keys at
    every layer, values unchanged — as in DETR's decoder. No parameters: checkpoints are unchanged.
    memory_pos="sine_kv" (an option, off by default): the same encoding added to the memory itself, so to
    the keys and the values of every cross-attention: what a query reads carries where it was read
    (with "sine", the values — what reaches the box head — are position-free). No parameters either.
    region_queries="two_stage" (an option, off by default: Deformable DETR's two-stage query selection, with
    CenterNet's one-cell-per-object assignment): every patch token scores "an object is centred here" and
    proposes a box around its cell; the Q best local maxima become the region queries (content = their
    memory tokens, boxes = refinements of their proposals). See ``RegionDecoder.proposals``.
    proposal_head="conv" (with two_stage; default "mlp", per token): CenterNet's 3×3 conv → ReLU → 1×1 conv
    heads over the patch grid, so each cell's score and box read its 8 neighbours too (``ConvHead``).
    boxes  = sigmoid(MLP d→d→d→4)(region outputs)                 [B, Q, 4] normalised cxcywh
    region = region outputs @ W_r                                  [B, Q, D]
    image  = image-query output @ W_i                              [B, D]   (the global image embedding)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grain.config import MEMORY_POS, PROPOSAL_HEADS, REGION_QUERIES


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


def _cell_anchor_logits(grid: int) -> torch.Tensor:
    """[grid², 4] inverse-sigmoid cxcywh anchors: each patch cell's centre (row-major, like the ViT's
    patch tokens), width and height two cells (clamped below 1)."""
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    side = torch.full_like(cx, min(2.0 / grid, 0.9))
    anchors = torch.stack((cx, cy, side, side), dim=-1).reshape(grid * grid, 4)
    return torch.log(anchors / (1 - anchors))


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
        """tgt [B, Q+1, d], memory [B, T, d], query_pos [B, Q+1, d], memory_pos [T, d] | None → [B, Q+1, d]."""
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


class ConvHead(nn.Module):
    """CenterNet's output head over the patch grid: [B, d, g, g] → [B, g², out] (3×3 conv, ReLU, 1×1 conv), so
    each cell's output reads its 3 × 3 neighbourhood directly."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.layers = nn.ModuleList((nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, out, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](F.relu(self.layers[0](x)))
        return x.flatten(2).transpose(1, 2)


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
            if proposal_head == "conv":  # CenterNet's heads: 3×3 conv → ReLU → 1×1 conv over the patch grid
                self.proposal_score = ConvHead(dim, 1)
                self.proposal_box = ConvHead(dim, 4)
            else:  # per patch token alone
                self.proposal_score = nn.Linear(dim, 1)  # "an object is centred in this cell" (logit)
                self.proposal_box = MLP(dim, dim, 4)  # box as logit offsets from the cell's anchor
            last_box = self.proposal_box.layers[-1]
            last_score = self.proposal_score if proposal_head == "mlp" else self.proposal_score.layers[-1]
            nn.init.zeros_(last_box.weight)  # start at the anchors
            nn.init.zeros_(last_box.bias)
            nn.init.constant_(last_score.bias, -math.log(99.0))  # focal-loss prior 0.01 (RetinaNet)
            self.register_buffer("anchor_logits", _cell_anchor_logits(grid), persistent=False)
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
            prop = self.proposals(memory)
            idx = prop["selected"]  # [B, Q] patch indices
            content = torch.gather(memory[:, 1:], 1, idx[..., None].expand(-1, -1, memory.shape[-1]))
            tgt = torch.cat((content, tgt[:, self.num_queries:]), dim=1)  # the image query still starts at zero
            # Refinements of the selected proposals; the proposals themselves learn from their own loss only.
            ref = torch.gather(prop["box_logits"], 1, idx[..., None].expand(-1, -1, 4)).detach()
            extra = {"proposal_logits": prop["logits"], "proposal_boxes": prop["boxes"]}
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
        """Two-stage proposals from the memory's patch tokens (CLS excluded), P = grid² patches:
        ``logits`` [B, P] (object centred in the cell), ``box_logits`` / ``boxes`` [B, P, 4] (cxcywh before
        / after the sigmoid; anchor = the cell's centre, side 2 cells), ``selected`` [B, Q]: the Q
        highest-scoring local maxima of the score map (3×3 max-pool peaks, CenterNet), then the best
        remaining cells when fewer than Q peaks exist."""
        patches = memory[:, 1:]
        g = self.grid
        if self.proposal_head == "conv":
            patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, g, g)  # [B, d, g, g]
        logits = self.proposal_score(patches).squeeze(-1)  # [B, P]
        box_logits = self.anchor_logits.to(memory.dtype) + self.proposal_box(patches)
        with torch.no_grad():
            score = logits.detach().float().view(-1, 1, g, g)
            peak = F.max_pool2d(score, 3, stride=1, padding=1) == score
            rank = torch.where(peak, score, score - 1e4).flatten(1)  # peaks first, then the rest by score
            selected = rank.topk(self.num_queries, dim=1).indices
        return {"logits": logits, "box_logits": box_logits, "boxes": box_logits.sigmoid(), "selected": selected}

    def _heads(self, h: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        regions, image = h[:, : self.num_queries], h[:, self.num_queries]
        delta = self.box_head(regions)
        return {
            "pred_boxes": (delta if ref is None else ref.to(delta.dtype) + delta).sigmoid(),
            "region_embed": regions @ self.region_proj.to(regions.dtype),
            "image_embed": image @ self.image_proj.to(image.dtype),
        }
