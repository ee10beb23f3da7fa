"""`grain config show STAGE`: every key of a stage's run config with its type, default and meaning.

    grain config show annotate      # annotators/config.py: AnnotateConfig
    grain config show train         # trainers/config.py: TrainConfig (+ model.* / loss.*: grain/config.py)
    grain config show eval          # evaluation/config.py: EvalConfig
    grain config show bench         # benchmarks/bench_config.py: BenchConfig (`grain bench grounding`)
    grain config show bench-novel   # benchmarks/novel_config.py: NovelBenchConfig (`grain bench novel-concepts`)
    grain config check STAGE FILE [--set KEY=VALUE ...]   # load and validate a run file, print it

Keys are what a run file section, ``--set KEY=VALUE`` and a flow's ``overrides`` take (grain/common/runconfig.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


STAGES = ("annotate", "train", "eval", "bench", "bench-novel")


def _stage(name: str):
    """(config class, extra rows, loader(path, sets) -> config) of a stage."""
    from grain.common.runconfig import describe

    if name == "annotate":
        from annotators.config import AnnotateConfig, load_config as load_annotate

        return AnnotateConfig, [], lambda path, sets: load_annotate(path=path, overrides=sets)
    if name == "train":
        from grain.config import LossConfig, ModelConfig
        from trainers.config import TrainConfig, load_config as load_train

        extra = [("model.preset", "str", "'tiny'", "grain.config PRESETS name (tiny | vit-b-16); model.* keys override "
                  "it (their defaults below are vit-b-16's)")]
        extra += [r for r in describe(ModelConfig, "model.") if r[0] != "model.name"] + describe(LossConfig, "loss.")
        return TrainConfig, extra, lambda path, sets: load_train(path, sets=sets)
    if name == "eval":
        from evaluation.config import EvalConfig, load_config as load_eval

        return EvalConfig, [], lambda path, sets: load_eval(path, sets=sets)
    if name == "bench":
        from benchmarks.bench_config import BenchConfig, load_bench_config

        return BenchConfig, [("train.*", "dict", "{}", "TrainConfig keys: `grain config show train`")], load_bench_config
    if name == "bench-novel":
        from benchmarks.novel_config import NovelBenchConfig, load_novel_config

        return NovelBenchConfig, [("train.*", "dict", "{}", "TrainConfig keys: `grain config show train`")], load_novel_config
    raise SystemExit(f"grain config: unknown stage {name!r}; choose one of {', '.join(STAGES)}")


def show(name: str) -> str:
    from grain.common.runconfig import describe, format_rows

    cls, extra, _ = _stage(name)
    rows = [r for r in describe(cls) if r[0] not in ("model", "loss", "train")] + extra
    lines = [f"{name}: {cls.__module__}.{cls.__name__} (run file keys; --set KEY=VALUE; flow overrides)"]
    return "\n".join(lines + format_rows(rows, header=("key", "type", "default", "meaning")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain config", description="Inspect and check the stages' run configs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="every key of STAGE with its type, default and meaning")
    s.add_argument("stage", choices=STAGES)
    c = sub.add_parser("check", help="load and validate a run file (+ --set overrides) for STAGE; print the result")
    c.add_argument("stage", choices=STAGES)
    c.add_argument("file")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.cmd == "show":
        print(show(args.stage))
        return 0
    _, _, loader = _stage(args.stage)
    try:
        cfg = loader(args.file, args.sets)
    except (ValueError, FileNotFoundError) as e:
        print(f"grain config check: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
