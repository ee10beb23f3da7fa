"""Zero-shot classification with descriptions (docs/method.md §5).

Per class c with descriptors d₁…dₙ (a "classification by description" JSON ``{class: [d, ...]}``):
prompts = every template filled with ``"c, <descriptor sentence of d>"`` (only ``c`` when the class
has no descriptors); class vector = mean of the L2-normalised prompt embeddings, re-normalised.

    s_global[b, c] = cos(image_embed[b], class_vec[c])
    s_region[b, c] = mean_q max_{d ∈ c} cos(region_embed[b, q], desc_embed[d])
    score          = α·s_global + (1 − α)·s_region          (α = 1 in the release)

Descriptor embeddings for s_region embed the raw descriptor text, as descriptions were during
training (a class without descriptors uses its name).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grain.tokenizer import tokenize, trim_token_padding

# Generic templates (the release applied 23 "a type of bird" templates to every data set; these do
# not name a domain).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a drawing of a {}.",
    "a painting of a {}.",
    "a sketch of a {}.",
    "an icon of a {}.",
    "a rendering of a {}.",
    "itap of a {}.",
    "a {} in a video game.",
)

_IS_WORDS = ("a", "an", "used")
_BARE_WORDS = ("has", "often", "typically", "may", "can")


def descriptor_sentence(descriptor: str) -> str:
    """``"which is d"`` if d starts with the word a/an/used, ``"which d"`` if with has/often/
    typically/may/can, else ``"which has d"``. Whole words: "antennae" does not start with "a"
    (the classification-by-description code tested ``startswith('a')`` on characters)."""
    d = descriptor.strip()
    first = d.split(maxsplit=1)[0].lower() if d else ""
    if first in _IS_WORDS:
        return f"which is {d}"
    if first in _BARE_WORDS:
        return f"which {d}"
    return f"which has {d}"


def class_prompts(classname: str, descriptors: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """All prompts of one class: templates × descriptor sentences (templates × name if none)."""
    subjects = [f"{classname}, {descriptor_sentence(d)}" for d in descriptors] or [classname]
    return [t.format(s) for s in subjects for t in templates]


def load_descriptors(path: str) -> dict[str, list[str]]:
    """Read a descriptor JSON ``{class name: [descriptor, ...]}`` (label order = key order)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object {{class name: [descriptor, ...]}}")
    return data


@dataclass
class ClassEmbeddings:
    """Text side of the classifier. class_embed [C, D], desc_embed [N, D] (both L2-normalised),
    desc_class [N] long (class index of each descriptor row)."""

    classnames: list[str]
    class_embed: torch.Tensor
    desc_embed: torch.Tensor
    desc_class: torch.Tensor


@torch.no_grad()
def _embed_texts(model, texts: list[str], context_length: int, batch_size: int, device, progress: bool = False) -> torch.Tensor:
    """Normalised text embeddings [N, D]. Each batch is cut to its longest text: under the causal
    mask trailing zero padding changes nothing before EOT, so the embeddings are exactly those of
    the full-length tokens, at a fraction of the cost (prompts are ~15 of 77 tokens)."""
    tokens = tokenize(texts, context_length)
    lengths = (tokens != 0).sum(1)
    order = torch.argsort(lengths, descending=True)  # similar lengths together: less padding
    chunks = []
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="text embeddings", unit="batch")
    for i in starts:
        idx = order[i : i + batch_size]
        t = trim_token_padding(tokens[idx]).to(device)
        chunks.append(F.normalize(model.encode_text(t).float(), dim=-1))
    if not chunks:
        raise ValueError("_embed_texts: no texts to embed")
    return torch.cat(chunks)[torch.argsort(order.to(chunks[0].device))]


@torch.no_grad()
def class_embeddings(
    model,
    classnames: Sequence[str],
    descriptors: Mapping[str, Sequence[str]] | None = None,
    templates: Sequence[str] = TEMPLATES,
    batch_size: int = 256,
    progress: bool = False,
) -> ClassEmbeddings:
    """Embed every class (see the module docstring). ``descriptors`` maps each class name to its
    descriptors (None: names only); a class missing from a given mapping is an error naming it."""
    if descriptors is not None:
        missing = [c for c in classnames if c not in descriptors]
        if missing:
            raise KeyError(f"class_embeddings: no descriptors for classes {missing[:5]} ({len(missing)} missing)")
    device = next(model.parameters()).device
    cfg = model.cfg
    # All prompts of all classes in one pass (batched across classes), then a mean per class.
    prompts, prompt_class, raw_descs, desc_class = [], [], [], []
    for c, name in enumerate(classnames):
        descs = list(descriptors[name]) if descriptors is not None else []
        ps = class_prompts(name, descs, templates)
        prompts += ps
        prompt_class += [c] * len(ps)
        raw = descs or [name]
        raw_descs += raw
        desc_class += [c] * len(raw)
    emb = _embed_texts(model, prompts, cfg.context_length, batch_size, device, progress)
    pc = torch.tensor(prompt_class, dtype=torch.long, device=emb.device)
    sums = torch.zeros(len(classnames), emb.shape[1], device=emb.device).index_add_(0, pc, emb)
    class_vecs = F.normalize(sums / torch.bincount(pc, minlength=len(classnames)).unsqueeze(1), dim=-1)
    desc_embed = _embed_texts(model, raw_descs, cfg.desc_context_length, batch_size, device)
    return ClassEmbeddings(
        classnames=list(classnames),
        class_embed=class_vecs,
        desc_embed=desc_embed,
        desc_class=torch.tensor(desc_class, dtype=torch.long, device=device),
    )


def global_scores(image_embed: torch.Tensor, ce: ClassEmbeddings) -> torch.Tensor:
    """image_embed [B, D] (unnormalised) → cosine to each class vector [B, C]."""
    return F.normalize(image_embed.float(), dim=-1) @ ce.class_embed.float().t()


def region_scores(region_embed: torch.Tensor, ce: ClassEmbeddings) -> torch.Tensor:
    """region_embed [B, Q, D] → s_region [B, C] = mean over queries of the max over the class's
    descriptors of cos(region, descriptor)."""
    sim = F.normalize(region_embed.float(), dim=-1) @ ce.desc_embed.float().t()  # [B, Q, N]
    b, q, _ = sim.shape
    per_class = sim.new_full((b, q, len(ce.classnames)), float("-inf"))
    idx = ce.desc_class.to(sim.device).expand(b, q, -1)
    per_class = per_class.scatter_reduce(2, idx, sim, reduce="amax", include_self=True)
    return per_class.mean(dim=1)


def zeroshot_scores(image_out: Mapping, ce: ClassEmbeddings, alpha: float = 1.0) -> torch.Tensor:
    """``GrainModel.encode_image`` output → scores [B, C] = α·s_global + (1 − α)·s_region.

    α = 1 uses the global embedding only (the release); α < 1 needs region embeddings (GRAIN).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = global_scores(image_out["image_embed"], ce)
    if alpha == 1.0:
        return s
    if image_out.get("region_embed") is None:
        raise ValueError("zeroshot_scores: alpha < 1 needs region embeddings; this model (CLIP baseline) has none")
    return alpha * s + (1 - alpha) * region_scores(image_out["region_embed"], ce)
