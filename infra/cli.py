"""`grain` console script: a thin dispatcher. Each subcommand's module is imported only when used,
so `grain --help` stays fast and a command never pulls in another stage's dependencies.

It names every package, so it sits at the top of the layers (docs/ARCHITECTURE.md), here in infra/
beside the commands that run the project (stack, demo), not in the pure library grain/.

    grain models build-tiny        build the random-weight tiny checkpoints (cached)
    grain annotate ...             annotation stage (Ray Data + vLLM + OWLv2)
    grain train ...                pretraining stage (Ray Train)
    grain eval ...                 zero-shot / retrieval / novel-concept evaluation
    grain embed | ground | describe-classes | data ...
    grain export CKPT --output DIR an open_clip / Hugging Face Hub model folder
    grain demo-corpus ...          build the demo corpus as img2dataset-style shards
    grain stack up|down|status     the local Prefect + Ray stack
    grain bench grounding          the GRAIN-vs-CLIP miniature benchmark
    grain bench novel-concepts     novel classes recognised by their descriptions only
    grain config show STAGE        every run-config key of annotate|train|eval|bench|bench-novel: type, default, meaning
    grain demo                     set up nothing, run the demo pipeline on the local stack
    grain plan --input S --images N --profile P   what a corpus costs, measured on this machine
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> ("module:function", one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("grain.testing.tiny_models:main", "build tiny random-weight model checkpoints (offline)"),
    "annotate": ("annotators.cli:main", "annotate img2dataset shards: MLLM descriptions + OWLv2 boxes"),
    "train": ("trainers.cli:main", "pretrain GRAIN (or the CLIP baseline) on annotated shards"),
    "eval": ("evaluation.cli:eval_main", "zero-shot classification, retrieval, novel concepts"),
    "embed": ("evaluation.cli:embed_main", "embed images or texts with a checkpoint"),
    "export": ("evaluation.export:main", "write a checkpoint as an open_clip / Hugging Face Hub model folder"),
    "ground": ("evaluation.cli:ground_main", "draw region boxes for descriptions on an image"),
    "describe-classes": ("evaluation.describe:main", "write descriptors.json with an instruct LLM (vLLM)"),
    "data": ("evaluation.datasets:main", "install/build the local evaluation sets"),
    "demo-corpus": ("infra.demo_corpus:main", "build the demo corpus (img2dataset layout)"),
    "stack": ("infra.stack:main", "start/stop/inspect the local Prefect + Ray stack"),
    "bench": ("benchmarks.cli:main", "benchmarks: `grain bench grounding|novel-concepts`"),
    "config": ("infra.config_cmd:main", "`grain config show STAGE`: every run-config key, its type, default, meaning"),
    "demo": ("infra.demo:main", "run the demo pipeline through the local stack"),
    "plan": ("infra.plan:main", "GPU-hours, wall time, storage and cost of a corpus, from a probe run or --rates"),
}


def _usage() -> str:
    lines = ["usage: grain COMMAND [ARGS...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_}")
    lines += ["", "Run `grain COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"grain: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"grain {name}: not available in this installation ({e})", file=sys.stderr)
            return 2
        raise
    rc = getattr(module, func_name)(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
