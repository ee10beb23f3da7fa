"""Zero-shot scores from *embeddings* (METHOD.md §5), kept model-free so they test with fixed vectors.

Shapes: N images, C classes, P prompts per class, Q region queries, K descriptors per class, D dims.
All inputs may be unnormalised; every cosine here normalises first.

- class vector (names or descriptors): mean over the class's P normalised prompt embeddings,
  re-normalised (CLIP's recipe; the re-normalisation does not change the ranking of cosines);
- s_global[n, c] = cos(global image embedding_n, class vector_c);
- s_region[n, c] = mean over q of max over k of cos(region embedding_{n,q}, descriptor embedding_{c,k});
- fused = α·s_global + (1 − α)·s_region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def class_vectors(prompt_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of C tensors [P_c, D] (prompt embeddings of each class) → [C, D] unit class vectors."""
    if not len(prompt_embeds):
        raise ValueError("no classes")
    vecs = []
    for c, e in enumerate(prompt_embeds):
        if e.ndim != 2 or e.shape[0] == 0:
            raise ValueError(f"class {c}: prompt embeddings must be [P>0, D], got {tuple(e.shape)}")
        vecs.append(F.normalize(F.normalize(e.float(), dim=-1).mean(0), dim=-1))
    return torch.stack(vecs)


def global_scores(image_embed: torch.Tensor, class_vecs: torch.Tensor) -> torch.Tensor:
    """image_embed [N, D], class_vecs [C, D] → cosine scores [N, C]."""
    return F.normalize(image_embed.float(), dim=-1) @ F.normalize(class_vecs.float(), dim=-1).T


def region_scores(region_embed: torch.Tensor, desc_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
    """region_embed [N, Q, D], desc_embeds: C tensors [K_c, D] → s_region [N, C].

    A class without descriptors cannot be scored by regions: RuntimeError naming the class index
    (the caller falls back to class-name prompts as the class's only "descriptor").
    """
    r = F.normalize(region_embed.float(), dim=-1)  # [N, Q, D]
    cols = []
    for c, d in enumerate(desc_embeds):
        if d.ndim != 2 or d.shape[0] == 0:
            raise RuntimeError(f"class {c}: region scoring needs ≥ 1 descriptor embedding, got {tuple(d.shape)}")
        sim = torch.einsum("nqd,kd->nqk", r, F.normalize(d.float(), dim=-1))  # [N, Q, K]
        cols.append(sim.max(dim=2).values.mean(dim=1))  # max over descriptors, mean over queries
    return torch.stack(cols, dim=1)


def fuse(s_global: torch.Tensor, s_region: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """α·s_global + (1 − α)·s_region ([N, C] each); α = 1 needs no regions (the release's setting)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return s_global
    if s_region is None:
        raise ValueError("region fusion with alpha < 1 needs region embeddings (a GRAIN model, not the CLIP baseline)")
    return alpha * s_global + (1.0 - alpha) * s_region
