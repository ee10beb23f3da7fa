"""`grain describe-classes`: visual descriptors per class name from an instruct LLM (vLLM offline engine).

    grain describe-classes --classes classes.txt --output descriptors.json [--profile tiny|paper]
    grain describe-classes --dataset DIR --output DIR/descriptors.json

The LLM is asked, per class, for short visual features (the "classification by description"
question) as a bullet list; bullets are parsed with the annotation stage's parser
(grain.parse.parse_mllm_output). A class whose answer gives no usable descriptor is written
with an empty list (its prompts fall back to the class name) and listed, printed and in
``<output>.missing.txt``: never filled in silently. Profiles: ``tiny`` = the random-weight
``text-llm`` built by ``grain models build-tiny`` (tests; its output is noise); ``paper`` =
``meta-llama/Llama-3.1-8B-Instruct``.
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
    from grain.tiny_models import ensure_tiny_models

    return ensure_tiny_models(["text-llm"])["text-llm"]


def describe(classnames: list[str], model: str, max_tokens: int = 96, engine_kwargs: dict | None = None) -> dict[str, list[str]]:
    """``{class: [descriptor, ...]}`` (≤ MAX_DESCRIPTORS each; may be empty) from greedy generations."""
    from vllm import LLM, SamplingParams

    from grain.parse import parse_mllm_output

    kwargs = {"max_model_len": 512, "enforce_eager": True, "seed": 0, **(engine_kwargs or {})}
    llm = LLM(model=model, **kwargs)
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTION.format(c=c)}], tokenize=False,
                                       add_generation_prompt=True) for c in classnames]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
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
    args = p.parse_args(argv)
    try:
        names = read_classes(args.classes, args.dataset)
        model = model_for_profile(args.profile, args.model)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"grain describe-classes: {e}", file=sys.stderr)
        return 2
    result = describe(names, model, args.max_tokens)
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
