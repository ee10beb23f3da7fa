"""Prompt templates per MLLM family, as small functions returning a typed request bundle.

Modelled on vLLM's ``examples/offline_inference/vision_language.py``: one function per family gives
the prompt text with that family's image placeholder, stop strings and the engine arguments the
family needs (image limits explicit). One prompt asks for both the dense caption and the bullet
list, so the image prefill is paid once per image (docs/method.md §1.1).

    req = REQUEST_BUILDERS["llava"](DESCRIBE_QUESTION)
    llm.generate([{"prompt": req.prompt, "multi_modal_data": {"image": pil}}], ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from grain.common.schema import MAX_DESCRIPTIONS

# The question shown to the MLLM (``describe_question(models.max_descriptions)``). The answer layout
# matches grain/common/parse.py (which also copes with answers that ignore it).
DESCRIBE_TEMPLATE = (
    "Look at the image carefully.\n"
    "First, write one line that starts with \"Caption:\" and gives a detailed one-sentence description of "
    "the whole image.\n"
    "Then write \"Descriptions:\" and, one per line starting with \"- \", up to {max_descriptions} short phrases "
    "that each "
    "describe one distinct object or part visible in the image with its colour, shape or texture "
    "(for example \"- a red double-decker bus\"). Do not repeat a phrase."
)


def describe_question(max_descriptions: int = MAX_DESCRIPTIONS) -> str:
    """The question asking for at most ``max_descriptions`` phrases."""
    return DESCRIBE_TEMPLATE.format(max_descriptions=max_descriptions)


DESCRIBE_QUESTION = describe_question()  # at the schema's cap (grain/common/schema.py MAX_DESCRIPTIONS)


# Structured outputs (vLLM guided decoding): the answer layout DESCRIBE_QUESTION asks for, as a regex the
# engine enforces token by token. Lengths are bounded so a rambling (or random-weight) model still reaches
# the bullet list within its token budget; characters are anything but control characters (newline
# included), so every line stays one line. The parser (grain/common/parse.py) stays the safety net: a
# generation cut by max_tokens ends mid-line and is still parsed.
CAPTION_MAX_CHARS = 300  # a dense one-sentence caption; LLaVA-1.5's are ~100-250 characters
DESCRIPTION_MAX_CHARS = 80  # "short phrases"; OWLv2 reads 16 tokens of each anyway
_LINE_CHAR = r"[^\x00-\x1f\x7f]"  # one printable character (no newline, no control)


def answer_regex(max_descriptions: int = MAX_DESCRIPTIONS, caption_max_chars: int = CAPTION_MAX_CHARS,
                 description_max_chars: int = DESCRIPTION_MAX_CHARS) -> str:
    """The regex of a well-formed answer::

         Caption: <1..caption_max_chars chars>
        Descriptions:
        - <1..description_max_chars chars>        (1 to max_descriptions bullets)

    (an optional leading space: LLaVA answers after "ASSISTANT:"). Raises ValueError on a bound < 1."""
    for name, v in (("max_descriptions", max_descriptions), ("caption_max_chars", caption_max_chars),
                    ("description_max_chars", description_max_chars)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"answer_regex: {name} must be an integer ≥ 1, got {v!r}")
    # Each line starts with a non-space character so the parser never sees an empty caption or bullet.
    first = r"[^\x00-\x20\x7f]"
    caption = rf"Caption: {first}{_LINE_CHAR}{{0,{caption_max_chars - 1}}}\n"
    bullet = rf"- {first}{_LINE_CHAR}{{0,{description_max_chars - 1}}}\n"
    return rf" ?{caption}Descriptions:\n(?:{bullet}){{1,{max_descriptions}}}"


@dataclass(frozen=True)
class ModelRequest:
    """What one family needs for a describe call: ``prompt`` holds exactly one image placeholder."""

    family: str
    prompt: str
    stop: list[str] = field(default_factory=list)
    engine_kwargs: dict = field(default_factory=dict)  # defaults; the caller's engine kwargs override them


def llava_request(question: str) -> ModelRequest:
    """LLaVA-1.5 chat format (llava-hf/llava-1.5-*-hf): ``USER: <image>\\n{question} ASSISTANT:``."""
    return ModelRequest(
        family="llava",
        prompt=f"USER: <image>\n{question} ASSISTANT:",
        stop=["USER:", "</s>"],
        engine_kwargs={"limit_mm_per_prompt": {"image": 1}},
    )


def qwen2_vl_request(question: str) -> ModelRequest:
    """Qwen2-VL chat format; the image is ``<|vision_start|><|image_pad|><|vision_end|>`` (one pad token
    that vLLM expands to the image's patch count)."""
    return ModelRequest(
        family="qwen2_vl",
        prompt=(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        stop=["<|im_end|>", "<|im_start|>"],
        engine_kwargs={"limit_mm_per_prompt": {"image": 1}},
    )


REQUEST_BUILDERS = {"llava": llava_request, "qwen2_vl": qwen2_vl_request}
# config.json ``model_type`` → family
_MODEL_TYPES = {"llava": "llava", "qwen2_vl": "qwen2_vl"}


def prompt_record(models: Mapping) -> dict:
    """What the MLLM is shown and held to under ``models`` (the ``models`` section of an AnnotateConfig
    as a dict), as the run manifest records it: ``prompt.text`` (the full prompt of the family, image
    placeholder included), ``prompt.stop`` and ``prompt.answer_regex`` (None without structured output).
    The same rules as ``Describer``: a change to the question or the layout shows up here."""
    builder = REQUEST_BUILDERS.get(models.get("mllm_family"))
    question = describe_question(models.get("max_descriptions", MAX_DESCRIPTIONS))
    request = builder(question) if builder else None
    regex = None
    if models.get("structured_output"):
        try:
            regex = answer_regex(models.get("max_descriptions", MAX_DESCRIPTIONS), models.get("caption_max_chars", CAPTION_MAX_CHARS),
                                 models.get("description_max_chars", DESCRIPTION_MAX_CHARS))
        except ValueError as e:  # the Describer refuses such bounds when it starts; the record says why
            regex = f"invalid: {e}"
    return {"prompt.text": request.prompt if request else question,
            "prompt.stop": list(request.stop) if request else [], "prompt.answer_regex": regex}


def detect_family(model: str) -> str:
    """The prompt family of ``model`` (local dir or hub id): from its config.json ``model_type`` when it can be
    read offline (local dir or the HF cache), else from the id's name. Raises ValueError naming ``model``."""
    model_type = None
    cfg_path = os.path.join(model, "config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path) as fh:
                model_type = json.load(fh).get("model_type")
        except (OSError, ValueError) as e:
            raise ValueError(f"{cfg_path}: unreadable config.json ({e})") from e
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            if isinstance(cached, str):
                with open(cached) as fh:
                    model_type = json.load(fh).get("model_type")
        except Exception:  # noqa: BLE001 - fall back to the name
            model_type = None
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    name = os.path.basename(model.rstrip("/")).lower()
    if "llava" in name:
        return "llava"
    if "qwen2-vl" in name or "qwen2_vl" in name:
        return "qwen2_vl"
    raise ValueError(f"cannot tell the prompt family of MLLM {model!r} (model_type={model_type!r}); "
                     f"pass family= one of {sorted(REQUEST_BUILDERS)}")
