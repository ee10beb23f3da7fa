"""`grain bench NAME`: the benchmarks that train both arms through the trainer.

    grain bench grounding        does grounding help? (benchmarks/bench_grounding.py)
    grain bench novel-concepts   novel classes recognised by description only (benchmarks/bench_novel.py)
"""

from __future__ import annotations

import sys

USAGE = "usage: grain bench grounding|novel-concepts [--help]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "grounding":
        from benchmarks.bench_grounding import main as grounding

        return grounding(argv)
    if argv and argv[0] == "novel-concepts":
        from benchmarks.bench_novel import main as novel

        return novel(argv[1:])
    print(USAGE + ("" if not argv or argv[0] in ("-h", "--help") else f"  (unknown benchmark {argv[0]!r})"), file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
