"""Text tokenisation with open_clip's bundled CLIP BPE (no download).

``tokenize(texts, context_length)`` → LongTensor[N, context_length]: SOT, BPE ids, EOT, zero
padding. Texts longer than the context are truncated with EOT kept as the last token, so the
text tower's EOT pooling (argmax of the ids: EOT has the largest id) always finds it.
``context_length`` may be below 77 (descriptions use 32); it must not exceed the model's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

SOT_ID = 49406
EOT_ID = 49407


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The shared SimpleTokenizer (loading its BPE merges takes ~0.5 s, so do it once per process)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.LongTensor:
    """Tokenise ``texts`` (a string or a sequence of strings) → LongTensor[N, context_length]."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"tokenize: texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
    if context_length < 2:
        raise ValueError(f"tokenize: context_length must be ≥ 2 (SOT + EOT), got {context_length}")
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    return get_tokenizer()(texts, context_length=context_length)


def trim_token_padding(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [N, L] (zero-padded after EOT) → [N, L'] with L' = the longest text's true length (≥ 2).

    The text tower is causal with EOT pooling, so dropping trailing all-padding columns leaves every
    embedding unchanged while short texts cost their true length, not 32/77. The length is the last
    column with any non-zero id, not a count of non-zero ids: id 0 is also a BPE entry ("!"), and a
    count would cut the EOT off a text that ever got it. The one trim of the trainer, the evaluation
    and the zero-shot classifier.
    """
    if tokens.shape[0] == 0:
        return tokens[:, :2]
    used = (tokens != 0).any(dim=0).nonzero()
    length = max(2, int(used.max()) + 1) if used.numel() else 2
    return tokens[:, :length].contiguous()
