"""Flow ``grain-pipeline``: annotate-cc12m → pretrain-grain → evaluate-grain, as subflows.

    prefect deployment run grain-pipeline/grain-pipeline -p input=/data/cc12m -p workdir=/runs/demo

Folders under ``workdir``: ``annotated/`` (annotation shards + manifest), ``train/`` (checkpoints,
metrics, ``final.pt``), ``eval/`` (results.json and table). Each stage takes its own run file
(``annotate_config``, ``train_config``, ``eval_config``; default: the tiny profiles) and its own
overrides (``overrides={"annotate": {...}, "train": {...}, "eval": {...}}``). The pipeline only
wires one stage's output folder into the next stage's input.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger

from flows.annotate import annotate_cc12m
from flows.evaluate import evaluate_grain
from flows.pretrain import pretrain_grain

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


@flow(name="grain-pipeline", log_prints=True)
def grain_pipeline(input: str, workdir: str, annotate_config: str | None = None, train_config: str | None = None,
                   eval_config: str | None = None, overrides: dict | None = None) -> dict:
    """Annotate ``input`` (img2dataset folder or URL list), pretrain on the result, evaluate the checkpoint."""
    ov = split_overrides(overrides)
    workdir = os.path.abspath(workdir)
    annotated = annotate_cc12m(config=annotate_config, overrides=ov["annotate"], input=input,
                               output=os.path.join(workdir, "annotated"))
    trained = pretrain_grain(config=train_config, overrides=ov["train"], data=annotated["output"],
                             output=os.path.join(workdir, "train"))
    evaluated = evaluate_grain(config=eval_config, overrides=ov["eval"], checkpoint=trained["checkpoint"],
                               output=os.path.join(workdir, "eval"))
    get_run_logger().info("pipeline done: annotated %s, checkpoint %s\n%s", annotated["status_counts"],
                          trained["checkpoint"], evaluated["table"])
    return {"workdir": workdir, "annotated": annotated["output"], "status_counts": annotated["status_counts"],
            "checkpoint": trained["checkpoint"], "steps": trained.get("steps"), "eval_table": evaluated["table"]}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the grain-pipeline flow once, in this process.")
    ap.add_argument("--input", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    print(grain_pipeline(input=a.input, workdir=a.workdir)["eval_table"])
