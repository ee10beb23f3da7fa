"""Flow ``grain-pipeline``: annotate-cc12m → pretrain-grain → evaluate-grain, as subflows.

    prefect deployment run grain-pipeline/grain-pipeline -p input=/data/cc12m -p workdir=/runs/demo

Folders under ``workdir`` (a local path or an object-store URI such as ``s3://bucket/runs/demo``):
``annotated/`` (annotation shards + manifest), ``train/`` (checkpoints, metrics, ``final.pt``),
``eval/`` (results.json and table). Each stage takes its own run file (``annotate_config``,
``train_config``, ``eval_config``; default: the tiny profiles) and its own overrides
(``overrides={"annotate": {...}, "train": {...}, "eval": {...}}``). The pipeline only wires one
stage's output folder into the next stage's input, and ends with a ``pipeline-summary`` artifact
(links to the three subflow runs, annotation totals, trained-rows share, loss curves, results table).
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.annotate import annotate_cc12m
from flows.evaluate import evaluate_grain
from flows.pretrain import coverage_line, pretrain_grain
from grain.common import storage

STAGES = ("annotate", "train", "eval")


def split_overrides(overrides: dict | None) -> dict:
    """``{"annotate": {...}, "train": {...}, "eval": {...}}`` with every stage present; unknown keys fail."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(STAGES))
    if unknown:
        raise ValueError(f"grain-pipeline overrides: unknown sections {unknown}; expected {list(STAGES)}")
    for name in STAGES:
        value = overrides.get(name) or {}
        if not isinstance(value, dict):
            raise ValueError(f"grain-pipeline overrides.{name} must be a mapping, got {type(value).__name__}")
        overrides[name] = value
    return overrides


def resolve_workdir(workdir: str) -> str:
    """Local paths become absolute (flow runs start in the repository root); URIs are kept as given."""
    if not isinstance(workdir, str) or not workdir.strip():
        raise ValueError(f"grain-pipeline: workdir must be a folder path or URI, got {workdir!r}")
    return os.path.abspath(os.path.expanduser(workdir)) if storage.is_local(workdir) else workdir.rstrip("/")


def summary_markdown(workdir: str, annotated: dict, trained: dict, evaluated: dict) -> str:
    """The pipeline run's own artifact: what each subflow did, with links to their runs and pictures."""
    def run_link(name: str, res: dict) -> str:
        return f"[{name}]({res['url']})" if res.get("url") else f"`{name}` ({res.get('flow_run_id', '?')})"

    cov = trained.get("coverage")
    lines = [
        "# GRAIN pipeline", "", f"workdir: `{workdir}`", "",
        "| stage | flow run | output |", "|---|---|---|",
        f"| annotate | {run_link('annotate-cc12m', annotated)} | `{annotated.get('output')}` |",
        f"| pretrain | {run_link('pretrain-grain', trained)} | `{trained.get('checkpoint')}` |",
        f"| evaluate | {run_link('evaluate-grain', evaluated)} | `{evaluated.get('output', '')}` |", "",
        "## Annotation", "",
        f"- rows by status: {annotated.get('status_counts')}",
        f"- rows with boxes: {annotated.get('with_boxes', '?')}, boxes stored: {annotated.get('boxes', '?')}, "
        f"descriptions: {annotated.get('descriptions', '?')}", "",
        *[ln for ln in (annotated.get("overlay_markdown") or "").splitlines() if ln.startswith("![")][:2], "",
        "## Training", "", f"- steps: {trained.get('steps')}",
        f"- {coverage_line(cov)}" if cov else "- coverage: unknown", "",
        trained.get("curves_markdown") or "", "",
        evaluated.get("table") or "_no evaluation table_",
    ]
    if os.environ.get("GRAIN_RAY_DASHBOARD_URL"):
        lines += ["", f"[Ray dashboard]({os.environ['GRAIN_RAY_DASHBOARD_URL']}) (jobs, actors, worker logs)"]
    return "\n".join(lines)


@flow(name="grain-pipeline", log_prints=True)
def grain_pipeline(input: str, workdir: str, annotate_config: str | None = None, train_config: str | None = None,
                   eval_config: str | None = None, overrides: dict | None = None) -> dict:
    """Annotate ``input`` (img2dataset folder or URL list), pretrain on the result, evaluate the checkpoint."""
    ov = split_overrides(overrides)
    workdir = resolve_workdir(workdir)
    annotated = annotate_cc12m(config=annotate_config, overrides=ov["annotate"], input=input,
                               output=storage.join(workdir, "annotated"))
    trained = pretrain_grain(config=train_config, overrides=ov["train"], data=annotated["output"],
                             output=storage.join(workdir, "train"))
    evaluated = evaluate_grain(config=eval_config, overrides=ov["eval"], checkpoint=trained["checkpoint"],
                               output=storage.join(workdir, "eval"))
    md = summary_markdown(workdir, annotated, trained, evaluated)
    create_markdown_artifact(key="pipeline-summary", markdown=md, description="grain-pipeline: all three stages")
    cov = trained.get("coverage")
    get_run_logger().info("pipeline done: annotated %s, %s, checkpoint %s\n%s", annotated["status_counts"],
                          coverage_line(cov) if cov else "coverage unknown", trained["checkpoint"], evaluated["table"])
    return {"workdir": workdir, "annotated": annotated["output"], "status_counts": annotated["status_counts"],
            "checkpoint": trained["checkpoint"], "steps": trained.get("steps"), "coverage": cov,
            "eval_table": evaluated["table"],
            "runs": {k: {"id": r.get("flow_run_id"), "url": r.get("url")}
                     for k, r in (("annotate", annotated), ("train", trained), ("eval", evaluated))}}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the grain-pipeline flow once, in this process.")
    ap.add_argument("--input", required=True)
    ap.add_argument("--workdir", required=True, help="output root: a local folder or an s3:// URI")
    a = ap.parse_args()
    print(grain_pipeline(input=a.input, workdir=a.workdir)["eval_table"])
