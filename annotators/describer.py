"""MLLM describer (docs/method.md §1.1): one vLLM prompt per image → dense caption + short descriptions.

    d = Describer("/path/to/llava", enforce_eager=True)      # family auto-detected from config.json
    outs = d.describe([pil_image, ...])                      # list[DescriberOutput], same order

The vLLM offline engine is created once per Describer (a Ray actor holds one). Errors are split in
two kinds on purpose:
- a per-image failure (the image cannot be processed, the prompt is too long, ...) becomes that
  item's ``error``; the other images of the batch are still described;
- an engine death (``EngineDeadError``) is raised, so the Ray actor is restarted and the batch retried.
Guard scripts that create a Describer with ``if __name__ == "__main__":`` (vLLM spawns processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from grain.common.parse import MAX_DESCRIPTIONS, parse_mllm_output
from grain.common.vllm_args import engine_kwargs as vllm_engine_kwargs
from annotators.prompts import (
    CAPTION_MAX_CHARS,
    DESCRIPTION_MAX_CHARS,
    REQUEST_BUILDERS,
    ModelRequest,
    answer_regex,
    describe_question,
    detect_family,
)

log = logging.getLogger(__name__)


@dataclass
class DescriberOutput:
    """One image's answer. ``error`` is None on success; then caption/descriptions may still be empty
    (a valid row that trains with L_ic only)."""

    raw_text: str = ""
    caption: str = ""
    descriptions: list[str] = field(default_factory=list)  # ≤ max_descriptions, unique case-insensitively
    num_generated_tokens: int = 0
    error: str | None = None
    finish_reason: str | None = None  # "stop" or "length" (vLLM)


def is_engine_dead(e: BaseException) -> bool:
    """True when vLLM's engine process died (unrecoverable in this process): an ``EngineDead*`` error
    anywhere in the chain of ``e``, through both ``__cause__`` and ``__context__`` (a wrapper may raise
    ``from`` something else while the engine death is its context). The one test of the annotation stage."""
    seen, todo = set(), [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if "EngineDead" in type(e).__name__:
            return True
        todo += [e.__cause__, e.__context__]
    return False


class Describer:
    """vLLM offline engine + prompt family + parser.

    model: local dir or hub id; family: "llava" | "qwen2_vl" (None: from config.json);
    max_new_tokens: generation budget per image; temperature 0 = greedy (reproducible);
    structured_output: constrain generation (vLLM structured outputs) to the answer layout the prompt asks
    for (``prompts.answer_regex``: a ``Caption:`` line, then 1..max_descriptions ``- `` bullets of bounded
    length). Guarantees the parser's format, even from random-weight models; off = free generation.
    caption_max_chars / description_max_chars: the regex's line bounds (only with structured_output);
    structured_output_backend: vLLM's backend ("guidance" = llguidance, tested on CPU; "xgrammar"; "auto").
    engine_kwargs: passed to ``vllm.LLM`` (e.g. gpu_memory_utilization, tensor_parallel_size) and
    override the family's defaults.
    """

    def __init__(self, model: str, family: str | None = None, max_new_tokens: int = 256,
                 max_descriptions: int = MAX_DESCRIPTIONS, temperature: float = 0.0, seed: int = 0,
                 enforce_eager: bool = False, max_model_len: int = 4096, dtype: str | None = None,
                 question: str | None = None, structured_output: bool = False,
                 caption_max_chars: int = CAPTION_MAX_CHARS, description_max_chars: int = DESCRIPTION_MAX_CHARS,
                 structured_output_backend: str = "guidance", revision: str | None = None, **engine_kwargs):
        if not isinstance(model, str) or not model:
            raise ValueError(f"Describer: model must be a local dir or hub id, got {model!r}")
        if max_new_tokens < 1:
            raise ValueError(f"Describer: max_new_tokens must be ≥ 1, got {max_new_tokens}")
        self.model = model
        self.family = family or detect_family(model)
        if self.family not in REQUEST_BUILDERS:
            raise ValueError(f"Describer: unknown family {self.family!r} for {model!r}; expected {sorted(REQUEST_BUILDERS)}")
        self.request: ModelRequest = REQUEST_BUILDERS[self.family](question or describe_question(max_descriptions))
        self.max_descriptions = max_descriptions

        # Built before the engine so a bad bound fails fast, naming the argument.
        self.answer_regex = (answer_regex(max_descriptions, caption_max_chars, description_max_chars)
                             if structured_output else None)

        import torch

        engine_kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
        kwargs = {**self.request.engine_kwargs, "model": model, "enforce_eager": enforce_eager,
                  "max_model_len": max_model_len, "seed": seed, "dtype": dtype}
        if revision:  # a pinned hub commit for the weights and the tokenizer/processor alike
            kwargs.update(revision=revision, tokenizer_revision=revision)
        if structured_output:
            kwargs["structured_outputs_config"] = {"backend": structured_output_backend}
        kwargs.update(engine_kwargs)
        # The CPU fixes (float32, a small KV cache) shared with every vLLM engine of the project.
        kwargs = vllm_engine_kwargs(kwargs, on_gpu=torch.cuda.is_available())
        self.engine_kwargs = kwargs
        from vllm import LLM, SamplingParams

        self.llm = LLM(**kwargs)
        guided = None
        if structured_output:
            from vllm.sampling_params import StructuredOutputsParams

            guided = StructuredOutputsParams(regex=self.answer_regex)
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                       stop=self.request.stop, structured_outputs=guided)

    def _generate(self, images: list) -> list:
        prompts = [{"prompt": self.request.prompt, "multi_modal_data": {"image": im}} for im in images]
        return self.llm.generate(prompts, self.sampling, use_tqdm=False)

    def _to_output(self, req_out) -> DescriberOutput:
        comp = req_out.outputs[0]
        caption, descs = parse_mllm_output(comp.text)
        return DescriberOutput(raw_text=comp.text, caption=caption, descriptions=descs[: self.max_descriptions],
                               num_generated_tokens=len(comp.token_ids), finish_reason=comp.finish_reason)

    def describe(self, images: list) -> list[DescriberOutput]:
        """``images``: PIL images (decoded, EXIF-oriented). Returns one DescriberOutput per image, in order.

        Raises only when the engine died (see module docstring)."""
        from PIL import Image

        outs: list[DescriberOutput | None] = [None] * len(images)
        ready: list[tuple[int, object]] = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                outs[i] = DescriberOutput(error=f"image {i}: expected a PIL image, got {type(im).__name__}")
            elif im.width < 1 or im.height < 1:
                outs[i] = DescriberOutput(error=f"image {i}: empty image {im.width}x{im.height}")
            else:
                ready.append((i, im if im.mode == "RGB" else im.convert("RGB")))
        if not ready:
            return outs
        try:
            results = self._generate([im for _, im in ready])
            for (i, _), r in zip(ready, results):
                outs[i] = self._to_output(r)
        except Exception as e:
            if is_engine_dead(e):
                raise
            # One bad image fails the whole generate call (vLLM aborts the batch): isolate it.
            log.warning("describe batch of %d failed (%s: %s); retrying image by image", len(ready), type(e).__name__, e)
            for i, im in ready:
                outs[i] = self._describe_one(i, im)
        return outs

    def _describe_one(self, i: int, im) -> DescriberOutput:
        try:
            return self._to_output(self._generate([im])[0])
        except Exception as e:
            if is_engine_dead(e):
                raise
            return DescriberOutput(error=f"image {i} ({im.width}x{im.height}): {type(e).__name__}: {str(e)[:500]}")

    def close(self) -> None:
        """Stop the engine processes now (also happens at interpreter exit); the Describer is unusable after."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()

    @property
    def model_id(self) -> str:
        """A label for the shard's ``mllm_model`` column: the hub id, or for a local dir its name (+ tiny spec hash)."""
        marker = os.path.join(self.model, ".grain-tiny.json")
        if os.path.isfile(marker):
            import json

            with open(marker) as fh:
                return f"tiny-{os.path.basename(self.model.rstrip('/'))}@{json.load(fh).get('spec_hash', '?')}"
        return self.model
