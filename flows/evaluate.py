"""Flow ``evaluate-grain``: zero-shot classification / retrieval of a checkpoint → results table.

    prefect deployment run evaluate-grain/evaluate-grain -p checkpoint=/runs/tiny/final.pt

Parameters: ``config`` (evaluation run file; default its tiny profile), ``overrides`` (config keys →
values) and ``checkpoint``/``output`` shortcuts. The UI gets the results as a markdown table
(``evaluation.report.markdown_table``) and a table artifact with one row per result.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import common, stages
from flows.logbridge import StageLogBridge
from grain.common.runconfig import flatten_overrides


@task(retries=1, retry_delay_seconds=10, log_prints=True)
def evaluate(config: str | None, overrides: dict) -> dict:
    """Run the evaluation stage; return its run dict (``results.json`` layout, evaluation/report.py)."""
    with StageLogBridge(get_run_logger()):
        run = stages.run_eval(config, overrides)
    return json.loads(json.dumps(run, default=str))


@task(log_prints=True)
def report_evaluation(run: dict) -> str:
    """Markdown table artifact of the results (+ a flat table artifact for sorting in the UI)."""
    from evaluation.report import markdown_table

    md = markdown_table(run)
    create_markdown_artifact(key="evaluation-results", markdown=f"{md}\n\ncheckpoint: `{run.get('checkpoint', '')}`",
                             description="Zero-shot results")
    rows = []
    for r in run.get("results", []):
        rows.append({"dataset": r.get("dataset"), "task": r.get("task"), "variant": r.get("variant"),
                     **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in (r.get("metrics") or {}).items()}})
    if rows:
        create_table_artifact(key="evaluation-table", table=rows, description="One row per dataset × variant")
    print(md)
    return md


@flow(name="evaluate-grain", log_prints=True)
def evaluate_grain(config: str | None = None, overrides: dict | None = None, checkpoint: str | None = None,
                   output: str | None = None) -> dict:
    """Evaluate a GRAIN/CLIP checkpoint zero-shot on the configured sets."""
    overrides = flatten_overrides(overrides)
    if checkpoint:
        overrides["checkpoint"] = checkpoint
    if output:
        overrides["output"] = output
    run = evaluate(config, overrides)
    md = report_evaluation(run)
    get_run_logger().info("evaluation results:\n%s", md)
    return {"run": run, "table": md, "output": overrides.get("output"), **common.run_info()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the evaluate-grain flow once, in this process.")
    ap.add_argument("--config")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--output")
    a = ap.parse_args()
    print(evaluate_grain(config=a.config, checkpoint=a.checkpoint, output=a.output)["table"])
