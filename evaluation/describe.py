"""`grain describe-classes`: visual descriptors per class name from an instruct LLM (vLLM offline engine).

    grain describe-classes --classes classes.txt --output descriptors.json [--profile tiny|paper]
    grain describe-classes --dataset DIR --output DIR/descriptors.json

The LLM is asked, per class, for short visual features (the "classification by description"
question) as a bullet list; bullets are parsed with the annotation stage's parser
(grain.common.parse.parse_mllm_output). A class whose answer gives no usable descriptor is written
with an empty list (its prompts fall back to the class name) and listed, printed and in
``<output>.missing.txt``: never filled in silently. Profiles: ``tiny`` = the random-weight
``text-llm`` built by ``grain models build-tiny`` (tests; its output is noise); ``paper`` =
``meta-llama/Llama-3.1-8B-Instruct``. Generation is constrained to that bullet list (vLLM structured
outputs, ``--free-generation`` to switch it off), so even the tiny model's noise parses into descriptors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PAPER_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
QUESTION = ("What are useful visual features for distinguishing a {c} in a photo? Answer with a short "
            "bullet list, one feature of a few words per line, nothing else.")
MAX_DESCRIPTORS = 8
DESCRIPTOR_MAX_CHARS = 48  # a feature "of a few words" (structured output's bound per bullet)


def bullets_regex(max_items: int = MAX_DESCRIPTORS, max_chars: int = DESCRIPTOR_MAX_CHARS) -> str:
    """1..``max_items`` lines ``- <text>``, each 1..``max_chars`` printable characters starting with a non-space
    (an optional leading space first: chat models often start their answer with one)."""
    if max_items < 1 or max_chars < 1:
        raise ValueError(f"bullets_regex: max_items and max_chars must be ≥ 1, got {max_items}, {max_chars}")
    return rf" ?(?:- [^\x00-\x20\x7f][^\x00-\x1f\x7f]{{0,{max_chars - 1}}}\n){{1,{max_items}}}"


def read_classes(classes: str | None, dataset: str | None) -> list[str]:
    """Class names from a file (one per line, a JSON list, or a JSON object whose values are names)
    or from an evaluation set's classes (evaluation.evalsets)."""
    if dataset:
        from evaluation.evalsets import load_evalset

        ds = load_evalset(dataset)
        if not hasattr(ds, "classnames"):
            raise ValueError(f"{dataset}: a retrieval set has no classes")
        return list(ds.classnames)
    if not os.path.isfile(classes):
        raise FileNotFoundError(f"{classes}: no such class-name file")
    with open(classes, encoding="utf-8") as f:
        text = f.read()
    if classes.endswith(".json"):
        doc = json.loads(text)
        names = list(doc.values()) if isinstance(doc, dict) else doc
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{classes}: expected non-empty class names")
    return list(dict.fromkeys(n.strip() for n in names))


def model_for_profile(profile: str, model: str | None) -> str:
    if model:
        return model
    if profile == "paper":
        return PAPER_MODEL
    from grain.testing.tiny_models import ensure_tiny_models

    return ensure_tiny_models(["text-llm"])["text-llm"]


def describe(classnames: list[str], model: str, max_tokens: int = 96, engine_kwargs: dict | None = None,
             structured: bool = True) -> dict[str, list[str]]:
    """``{class: [descriptor, ...]}`` (≤ MAX_DESCRIPTORS each; may be empty) from greedy generations.
    ``structured``: generation is constrained (vLLM structured outputs) to the bullet list the question asks
    for (``bullets_regex``), so every answer that is not cut by ``max_tokens`` parses."""
    import torch

    from grain.common.parse import parse_mllm_output
    from grain.common.vllm_args import engine_kwargs as vllm_engine_kwargs

    # The CPU fixes of every vLLM engine here (float32, a small KV cache), as the annotation stage's describer.
    kwargs = vllm_engine_kwargs({"max_model_len": 512, "enforce_eager": True, "seed": 0, **(engine_kwargs or {})},
                                on_gpu=torch.cuda.is_available())
    from vllm import LLM, SamplingParams

    guided = None
    if structured:
        from vllm.sampling_params import StructuredOutputsParams

        kwargs.setdefault("structured_outputs_config", {"backend": "guidance"})
        guided = StructuredOutputsParams(regex=bullets_regex(MAX_DESCRIPTORS, min(DESCRIPTOR_MAX_CHARS, max_tokens)))
    llm = LLM(model=model, **kwargs)
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTION.format(c=c)}], tokenize=False,
                                       add_generation_prompt=True) for c in classnames]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=guided))
    result = {}
    for c, o in zip(classnames, outs):
        # The answer has no caption header: bullets become descriptions, the rest is ignored.
        _, descs = parse_mllm_output("Descriptions:\n" + o.outputs[0].text)
        result[c] = [d for d in descs if d.lower() != c.lower()][:MAX_DESCRIPTORS]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain describe-classes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--classes", help="class names: .txt (one per line) or .json (list, or {folder: name})")
    src.add_argument("--dataset", help="an evaluation set folder (its class names are used)")
    p.add_argument("--output", required=True, help="descriptors.json to write")
    p.add_argument("--profile", choices=("tiny", "paper"), default="tiny")
    p.add_argument("--model", help="local path or model id (overrides --profile)")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--free-generation", action="store_true",
                   help="no structured outputs: the answer is not constrained to a bullet list")
    args = p.parse_args(argv)
    try:
        names = read_classes(args.classes, args.dataset)
        model = model_for_profile(args.profile, args.model)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"grain describe-classes: {e}", file=sys.stderr)
        return 2
    result = describe(names, model, args.max_tokens, structured=not args.free_generation)
    missing = [c for c in names if not result[c]]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    missing_path = args.output + ".missing.txt"
    with open(missing_path, "w", encoding="utf-8") as f:
        f.write("".join(f"{c}\n" for c in missing))
    print(f"wrote {args.output}: {len(names) - len(missing)}/{len(names)} classes described by {model}")
    if missing:
        print(f"no usable descriptor for {len(missing)} class(es) (left empty, listed in {missing_path}): "
              f"{', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}")
    return 0 if len(missing) < len(names) else 3


if __name__ == "__main__":
    sys.exit(main())
