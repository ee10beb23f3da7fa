"""Outputs of an evaluation run: one JSON, a markdown table, and a bar chart comparing runs.

Run JSON (``results.json``)::

    {"model": str, "checkpoint": str, "created": iso time, "config": {...},
     "results": [{"dataset": str, "model": str, "task": "zeroshot_classification" | "zeroshot_retrieval",
                  "variant": "names" | "descriptors" | "fusion_a0.75" | "retrieval",
                  "metrics": {"acc1": .., "acc5": .., "mean_per_class_recall": .., "n": ..}
                          or {"image_retrieval_recall@1": .., "text_retrieval_recall@1": .., ...}}, ...],
     "novelty": {dataset: {...evaluation.novelty.novelty_report...}}}

Each result record has clip_benchmark's keys (dataset, model, task, metrics); fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from grain.common.storage import atomic_open

HEADLINE = {"zeroshot_classification": "acc1", "zeroshot_retrieval": "image_retrieval_recall@1"}


def write_json(run: dict, path: str) -> str:
    with atomic_open(os.path.abspath(path), commit=False) as f:
        f.write(json.dumps(run, indent=1, ensure_ascii=False, default=_json_default).encode("utf-8"))
    return path


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_run(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable run JSON ({e})") from e
    if not isinstance(run, dict) or not isinstance(run.get("results"), list):
        raise ValueError(f"{path}: not a `grain eval` run JSON (no 'results' list)")
    return run


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _chance(classes) -> str:
    if not isinstance(classes, int) or classes < 1:
        return "–"
    return f"{_pct(1 / classes)} / {_pct(min(1.0, 5 / classes))}"


def markdown_table(run: dict) -> str:
    """Classification: one row per data set, acc1/acc5 per variant; retrieval: R@1/5/10 both ways."""
    lines = [f"# Evaluation of `{run.get('model', '?')}`", ""]
    cls = [r for r in run["results"] if r["task"] == "zeroshot_classification"]
    if cls:
        variants = list(dict.fromkeys(r["variant"] for r in cls))
        lines += ["## Zero-shot classification (top-1 / top-5, %)", "",
                  "| data set | classes | images | chance | " + " | ".join(variants) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(variants)]
        for ds in dict.fromkeys(r["dataset"] for r in cls):
            by_v = {r["variant"]: r for r in cls if r["dataset"] == ds}
            first = next(iter(by_v.values()))
            cells = [f"{_pct(by_v[v]['metrics'].get('acc1'))} / {_pct(by_v[v]['metrics'].get('acc5'))}" if v in by_v else "–"
                     for v in variants]
            lines.append(f"| {ds} | {first.get('classes', '?')} | {first['metrics'].get('n', '?')} | {_chance(first.get('classes'))} | "
                         + " | ".join(cells) + " |")
        # A number without its chance level reads as a result; the tiny profile is expected to sit at it.
        lines += ["", "Chance: top-1 / top-5 of a random ranking (1/classes, 5/classes). A model of the tiny profile "
                  "(random-weight annotators, ~100 training rows) is expected at chance; the benchmarks where the "
                  "model does learn are `grain bench grounding` and `grain bench novel-concepts` (README, Benchmarks).", ""]
    ret = [r for r in run["results"] if r["task"] == "zeroshot_retrieval"]
    if ret:
        lines += ["## Retrieval (recall@k, %)", "",
                  "| data set | images | captions | text→image R@1 | R@5 | R@10 | image→text R@1 | R@5 | R@10 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ret:
            m = r["metrics"]
            cells = [_pct(m.get(f"{d}_retrieval_recall@{k}")) for d in ("image", "text") for k in (1, 5, 10)]
            lines.append(f"| {r['dataset']} | {m.get('n_images')} | {m.get('n_texts')} | " + " | ".join(cells) + " |")
        lines.append("")
    nov = run.get("novelty") or {}
    if nov:
        lines += ["## Novel concepts (classes never named in the training text)", "",
                  "| data set | seen classes | unseen classes | seen acc1 | unseen acc1 |", "|---|---:|---:|---:|---:|"]
        for ds, rep in nov.items():
            lines.append(f"| {ds} | {rep['seen_classes']} | {rep['unseen_classes']} | "
                         f"{_pct(rep.get('seen', {}).get('acc1'))} | {_pct(rep.get('unseen', {}).get('acc1'))} |")
        lines.append("")
    return "\n".join(lines)


def summary_lines(run: dict) -> list[str]:
    """Short console summary: one line per result, then where the outputs went."""
    lines = []
    for r in run["results"]:
        m = r["metrics"]
        if r["task"] == "zeroshot_classification":
            lines.append(f"{r['dataset']:28s} {r['variant']:14s} acc1 {_pct(m.get('acc1')):>5s}  acc5 {_pct(m.get('acc5')):>5s}  (n={m.get('n')})")
        else:
            lines.append(f"{r['dataset']:28s} retrieval      t→i R@1 {_pct(m.get('image_retrieval_recall@1')):>5s}  "
                         f"i→t R@1 {_pct(m.get('text_retrieval_recall@1')):>5s}  (images={m.get('n_images')})")
    for k, v in (run.get("outputs") or {}).items():
        lines.append(f"{k}: {v}")
    return lines


def headline(run: dict) -> dict[str, float]:
    """``{"<dataset> · <variant>": headline metric}`` (acc1 or text→image R@1) of one run."""
    return {f"{r['dataset']} · {r['variant']}": r["metrics"].get(HEADLINE[r["task"]], float("nan")) for r in run["results"]}


def compare_markdown(runs: Sequence[dict], labels: Sequence[str]) -> str:
    heads = [headline(r) for r in runs]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    lines = ["# Comparison (acc1 or text→image R@1, %)", "", "| data set · variant | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_pct(h.get(k)) for h in heads) + " |")
    return "\n".join(lines) + "\n"


def compare_chart(runs: Sequence[dict], labels: Sequence[str], path: str, title: str = "GRAIN evaluation") -> str:
    """Grouped bar chart (PNG, Agg backend): one group per data set · variant, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    heads = [headline(r) for r in runs]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    if not keys:
        raise ValueError("no results to plot")
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(keys) * max(1, len(runs)) ** 0.5 + 2), 4.5))
    for i, (h, lab) in enumerate(zip(heads, labels)):
        vals = [100 * h.get(k, float("nan")) for k in keys]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, vals, width, label=lab)
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy / R@1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(run: dict, out_dir: str) -> dict[str, str]:
    """``results.json``, ``results.md`` and ``results.png`` (this run's bars) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": write_json(run, os.path.join(out_dir, "results.json"))}
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(run))
    paths["markdown"] = os.path.join(out_dir, "results.md")
    if run["results"]:
        paths["chart"] = compare_chart([run], [run.get("model", "model")], os.path.join(out_dir, "results.png"))
    return paths


def write_comparison(run_paths: Sequence[str], out_dir: str, labels: Sequence[str] | None = None) -> dict[str, str]:
    """``compare.md`` + ``compare.png`` for several run JSONs (e.g. GRAIN vs the CLIP-only baseline)."""
    runs = [load_run(p) for p in run_paths]
    labels = list(labels) if labels else [r.get("model") or os.path.basename(os.path.dirname(p)) for r, p in zip(runs, run_paths)]
    if len(set(labels)) < len(labels):  # two runs of one model name: tell them apart by file
        labels = [f"{lab} ({os.path.basename(os.path.dirname(os.path.abspath(p))) or p})" for lab, p in zip(labels, run_paths)]
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "compare.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(compare_markdown(runs, labels))
    return {"markdown": md, "chart": compare_chart(runs, labels, os.path.join(out_dir, "compare.png"))}
