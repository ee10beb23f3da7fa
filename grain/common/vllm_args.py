"""The settings every vLLM offline engine of the project is built with (the annotation stage's describer,
``grain describe-classes``): one place for the fixes a CPU machine needs.

    kwargs = engine_kwargs({"model": path, "max_model_len": 512}, on_gpu=torch.cuda.is_available())
    llm = vllm.LLM(**kwargs)

Plain Python: the caller imports vLLM and torch (grain/ imports neither vLLM nor, in grain.common, torch),
so it says whether a GPU is there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# GiB; vLLM's CPU default (4+) is too much for the CI machines. Only a default: the environment wins.
CPU_KVCACHE_GIB = "1"


def default_dtype(on_gpu: bool) -> str:
    """float32 on CPU: vLLM's "auto" downcasts float32 checkpoints to bfloat16, which these CPUs emulate
    (no AVX512-BF16) and which breaks parity with transformers; "auto" (the checkpoint's dtype) on GPUs."""
    return "auto" if on_gpu else "float32"


def engine_kwargs(kwargs: Mapping, on_gpu: bool) -> dict:
    """``kwargs`` for ``vllm.LLM`` with the CPU fixes applied: a ``dtype`` that is unset (missing or falsy)
    becomes ``default_dtype(on_gpu)``, and ``VLLM_CPU_KVCACHE_SPACE`` gets its small default (read by the
    engine when it starts, so this runs before ``vllm.LLM``)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    out = dict(kwargs)
    out["dtype"] = out.get("dtype") or default_dtype(on_gpu)
    return out


__all__ = ["CPU_KVCACHE_GIB", "default_dtype", "engine_kwargs"]
