"""Flow ``pretrain-grain``: GRAIN pretraining (Ray Train) on annotated shards → checkpoint + curves.

    prefect deployment run pretrain-grain/pretrain-grain -p data=/data/cc12m-annot -p output=/runs/tiny

Parameters: ``config`` (training run file; default the tiny profile), ``overrides`` (config keys →
values, e.g. ``{"optim": {"lr": 5e-4}, "max_steps": 20}``), and ``data``/``output`` shortcuts for
``data.path``/``output``. The UI gets: a progress bar (steps done of the planned steps), the loss
curves (PNG written by the trainer, served by the stack's artifact server), a table of the first and
last metrics, a link to the Ray dashboard, and the exported model folder (``<output>/export``, `grain
export`) with its model card.
"""

from __future__ import annotations

import json
import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import common, stages
from flows.logbridge import StageLogBridge
from grain.common import storage
from grain.common.runconfig import flatten_overrides


def _progress(output: str) -> float:
    """Percent of planned steps done, from the trainer's run.json (plan) and metrics.jsonl (steps)."""
    try:
        stop_at = json.loads(storage.read_bytes(storage.join(output, "run.json")))["schedule"]["stop_at"]
        last = 0
        for line in storage.read_bytes(storage.join(output, "metrics.jsonl")).decode().splitlines():
            if line.strip():
                last = max(last, int(json.loads(line).get("step", 0)))
        return 100.0 * last / max(1, stop_at)
    except (OSError, ValueError, KeyError, TypeError, storage.StorageError):
        return 0.0


def training_coverage(run_info: dict) -> dict:
    """How much of the annotated data a finished run trained on, from its ``run.json``.

    Each epoch trains ``steps_per_epoch × global_batch`` distinct rows (trainers/plan.py: the tail that
    does not fill a batch on every worker is dropped); rows that are not ``ok`` are skipped. Returns
    ``{rows_total, rows_ok, rows_skipped, rows_trained, fraction}`` (fraction of all annotated rows).
    """
    data, sched = run_info["data"], run_info["schedule"]
    per_epoch = int(sched["steps_per_epoch"]) * int(sched["global_batch"])
    seen = (run_info.get("result") or {}).get("samples_seen")
    trained = min(int(seen), per_epoch) if seen is not None else per_epoch
    total = int(data["total_rows"])
    return {"rows_total": total, "rows_ok": int(data["ok_rows"]), "rows_skipped": dict(data.get("skipped_rows") or {}),
            "rows_trained": trained, "fraction": trained / total if total else 0.0}


def coverage_line(cov: dict) -> str:
    """``trained on 112 of 119 annotated rows (94.1 %); ...``: the demo and the run log print it."""
    dropped = cov["rows_ok"] - cov["rows_trained"]
    return (f"trained on {cov['rows_trained']} of {cov['rows_total']} annotated rows ({100 * cov['fraction']:.1f} %); "
            f"not trainable (error rows): {cov['rows_skipped'] or 'none'}; {dropped} ok rows left out "
            "(the tail of the epoch that does not fill a batch on every worker, or max_steps)")


@task(retries=1, retry_delay_seconds=10, log_prints=True)
def train(config: str | None, overrides: dict) -> dict:
    """Run the training stage (a retry resumes from the latest Ray checkpoint); return its result dict."""
    cfg = stages.training_config(config, overrides)
    print(f"training {cfg.model} on {cfg.data.path} → {cfg.output} ({cfg.workers} workers, batch {cfg.batch_size})")
    with common.ProgressWatcher(lambda: _progress(cfg.output), description="Pretraining: steps done"), \
            StageLogBridge(get_run_logger()):
        result = stages.training_entry()(cfg)
    result = json.loads(json.dumps(result, default=str))  # plain JSON for Prefect's result store
    try:
        result["coverage"] = training_coverage(json.loads(storage.read_bytes(result["run_json"])))
        print(coverage_line(result["coverage"]))
    except (OSError, ValueError, KeyError, TypeError, storage.StorageError) as e:
        print(f"training coverage unknown: cannot read {result.get('run_json')}: {e}")
    return result


@task(log_prints=True)
def report_training(result: dict) -> dict:
    """Loss-curve image (markdown artifact) + table of first/last metrics."""
    out = result["output"]
    first, last = result.get("first_metrics") or {}, result.get("final_metrics") or {}
    keys = sorted(k for k in set(first) | set(last) if isinstance(last.get(k, first.get(k)), (int, float)))
    create_table_artifact(key="training-metrics", description=f"First and last training metrics ({out})",
                          table=[{"metric": k, "first": first.get(k), "last": last.get(k)} for k in keys]
                          or [{"metric": "-", "first": None, "last": None}])
    png = result.get("loss_curves_png")
    lines = [f"# Training: {os.path.basename(out)}", "", f"- steps: {result.get('steps')}  ",
             f"- checkpoint: `{result.get('final_checkpoint')}`  ", f"- wall time: {float(result.get('wall_s', 0)):.0f} s  "]
    if result.get("coverage"):
        lines.append(f"- data: {coverage_line(result['coverage'])}")
    lines.append("")
    if png and storage.exists(png):
        folder, link = common.artifact_folder(out, "training")
        with open(os.path.join(folder, "loss_curves.png"), "wb") as fh:
            fh.write(storage.read_bytes(png))
        lines.append(f"![loss curves]({link('loss_curves.png')})")
    else:
        lines.append("_No loss-curve image was written._")
    create_markdown_artifact(key="training-curves", markdown="\n".join(lines), description="Loss curves")
    return {"checkpoint": result.get("final_checkpoint"), "steps": result.get("steps"), "coverage": result.get("coverage"),
            "curves_markdown": lines[-1]}


OPEN_CLIP_LINE = "model, preprocess, tokenizer = grain.hub.load({folder!r})"


@task(log_prints=True)
def export_model(result: dict) -> dict:
    """`grain export` of the final checkpoint into ``<output>/export``; a markdown artifact links the folder
    and shows its model card. An object-store output is left unexported (the export writes local files)."""
    ckpt = result.get("final_checkpoint")
    if not ckpt or not storage.is_local(ckpt):
        print(f"not exported: {ckpt} is not a local file (run `grain export` on a local copy)")
        return {"export": None}
    folder = os.path.join(os.path.dirname(ckpt), "export")
    paths = stages.export_model(ckpt, folder)
    with open(paths["README.md"], encoding="utf-8") as f:
        card = f.read()
    line = OPEN_CLIP_LINE.format(folder=folder)
    create_markdown_artifact(key="model-export", description="Exported model folder (open_clip / Hugging Face Hub)",
                             markdown="\n".join([f"# Exported model: `{folder}`", "", f"- model card: `{paths['README.md']}`",
                                                 f"- load: `import grain.hub; {line}`", "", "---", "", card]))
    print(f"exported {folder}; load it with: import grain.hub; {line}")
    return {"export": folder, "model_card": paths["README.md"], "load_line": line}


@flow(name="pretrain-grain", log_prints=True)
def pretrain_grain(config: str | None = None, overrides: dict | None = None, data: str | None = None,
                   output: str | None = None) -> dict:
    """Pretrain GRAIN (or the CLIP baseline with ``overrides={"model": {"kind": "clip"}}``)."""
    overrides = flatten_overrides(overrides)
    if data:
        overrides["data.path"] = data
    if output:
        overrides["output"] = output
    common.link_ray_dashboard()
    result = train(config, overrides)
    summary = report_training(result)
    exported = export_model(result)
    get_run_logger().info("checkpoint %s after %s steps", summary["checkpoint"], summary["steps"])
    return {**result, **summary, **exported, **common.run_info()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the pretrain-grain flow once, in this process.")
    ap.add_argument("--config")
    ap.add_argument("--data", required=True)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    print(pretrain_grain(config=a.config, data=a.data, output=a.output))
