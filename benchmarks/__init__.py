"""Benchmarks: scripts that measure the stages against a baseline in the same process, and the
grounding benchmark (`grain bench grounding`, bench_grounding.py), which trains through the trainer and
scores through the evaluation stage. A layer above the stages (docs/ARCHITECTURE.md): code that needs
more than one stage lives here, never inside a stage. Each script also runs as
``python benchmarks/<name>.py``."""
