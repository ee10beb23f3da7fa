"""Flow ``annotate-cc12m``: (download a URL list with img2dataset →) annotate shards → report.

    prefect deployment run annotate-cc12m/annotate-cc12m -p input=/data/cc12m -p output=/data/cc12m-annot

Parameters: ``config`` (annotation run file, default the tiny profile), ``overrides`` (config keys →
values, e.g. ``{"run": {"batch_size": 16}}``), and for convenience ``input``/``output`` (the same as
overriding ``input``/``output``). ``input`` is an img2dataset output folder (or shard files), or a
URL list as CC12M ships it (``.tsv``/``.csv``/``.parquet`` with url + caption), which is first
filtered (annotators/url_guard.py: no loopback/private/metadata addresses) and downloaded with
img2dataset into ``<output>-download``. The UI gets: a progress bar, a per-shard
stats table (from the run manifest), a few box-overlay images, and a link to the Ray dashboard.
"""

from __future__ import annotations

import json
import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import common, stages, visuals
from flows.logbridge import StageLogBridge
from grain.common import storage
from grain.common.runconfig import flatten_overrides
from annotators.img2dataset_env import REFUSED_SHARD, is_url_list  # noqa: F401 - is_url_list: part of this module's API


@task(retries=2, retry_delay_seconds=30, log_prints=True)
def download_url_list(url_list: str, output: str, url_col: str = "url", caption_col: str = "caption") -> str:
    """URL guard, then img2dataset (own venv, subprocess) → webdataset shards in ``output``; retried on failure.

    URLs to loopback/private/link-local/multicast/reserved addresses are refused before the download
    (annotators/url_guard.py) and become ``download_error`` rows; only the worker's environment
    (``GRAIN_URL_ALLOW_PRIVATE=1``) can admit private ranges, never a flow parameter."""
    from annotators.img2dataset_env import download_url_list as download

    tars = download(url_list, output, url_col=url_col, caption_col=caption_col,
                    log_path=os.path.join(output, "img2dataset.log"))
    stats = {}
    for t in tars:
        with open(t[: -len(".tar")] + "_stats.json") as fh:
            s = json.load(fh)
        for k, v in (s.get("status_dict") or {}).items():
            stats[k] = stats.get(k, 0) + v
    refused = os.path.join(output, REFUSED_SHARD)
    if os.path.exists(refused):
        import pyarrow.parquet as pq

        stats["url_refused"] = pq.read_metadata(refused).num_rows
    print(f"img2dataset: {len(tars)} shards in {output}; per-URL status {stats}")
    return output


def _manifest(output: str) -> dict:
    """The annotation run's manifest.json (local path or object-store URI); {} while none is written."""
    try:
        return json.loads(storage.read_bytes(storage.join(output, "manifest.json")))
    except (OSError, ValueError, storage.StorageError):
        return {}


def _count_inputs(inputs: list) -> int:
    """Input shards (tar/parquet files) under the input paths, for the progress bar's denominator."""
    n = 0
    for p in inputs:
        try:
            fs, path = storage.open_fs(p)
            if fs.isdir(path):
                n += sum(str(f).endswith(".tar") for f in fs.ls(path, detail=False)) or 1
                continue
        except (OSError, storage.StorageError):
            pass
        n += 1
    return max(n, 1)


def list_parquet(output: str) -> list[str]:
    """Sorted committed ``*.parquet`` shards directly under ``output`` (local path or URI), through
    ``grain.common.storage.list_shards`` (its commit rule: fixture shards without any marker count too);
    [] while ``output`` does not exist."""
    try:
        return storage.list_shards(output)[0]
    except FileNotFoundError:
        return []


def shard_box_stats(parquet_uri: str) -> dict:
    """Per annotated shard: rows with ≥1 box, boxes stored, descriptions (reads only those columns)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_fs(parquet_uri)
    t = pq.read_table(path, filesystem=fs, columns=["boxes", "descriptions"])
    nboxes = pc.fill_null(pc.list_value_length(t["boxes"]), 0)
    ndesc = pc.fill_null(pc.list_value_length(t["descriptions"]), 0)
    return {"with_boxes": int(pc.sum(pc.greater(nboxes, 0)).as_py() or 0), "boxes": int(pc.sum(nboxes).as_py() or 0),
            "descriptions": int(pc.sum(ndesc).as_py() or 0)}


@task(retries=1, retry_delay_seconds=10, log_prints=True)
def annotate(config: str | None, overrides: dict) -> dict:
    """Run the annotation stage (resumable: finished shards are skipped on a retry); return its summary."""
    cfg = stages.annotation_config(config, overrides)
    if not cfg.output:
        raise ValueError("annotate-cc12m: no output folder (set the `output` parameter or overrides.output)")
    if not cfg.input:
        raise ValueError("annotate-cc12m: no input (set the `input` parameter or overrides.input)")
    total = _count_inputs(cfg.input)
    print(f"annotating {cfg.input} → {cfg.output} ({total} input shards, MLLM {cfg.models.mllm}, detector {cfg.models.detector})")
    with common.ProgressWatcher(lambda: 100.0 * len(_manifest(cfg.output).get("shards", {})) / total,
                                description=f"Annotation: shards done of {total}"), StageLogBridge(get_run_logger()):
        result = stages.annotation_entry()(cfg)
    summary = {"output": cfg.output, "result": result if isinstance(result, (dict, list, str, int)) else str(result)}
    if isinstance(result, dict):
        print(f"annotation finished: {result.get('rows')} rows, {result.get('shards_written')} shards written, "
              f"{result.get('shards_skipped')} already done, in {result.get('seconds')} s "
              f"({result.get('images_per_s')} img/s); status counts {result.get('counts')}")
    else:
        print(f"annotation finished: {str(result)[:1000]}")
    return summary


@task(log_prints=True)
def report_annotation(output: str, n_overlays: int = 4) -> dict:
    """Table artifact of per-shard stats (manifest) + markdown artifact with box overlays; totals."""
    shards = _manifest(output).get("shards", {})
    parquet = list_parquet(output)
    by_shard = {os.path.basename(p)[: -len(".parquet")]: p for p in parquet}
    rows, totals, boxes = [], {}, {"with_boxes": 0, "boxes": 0, "descriptions": 0}
    for name, info in sorted(shards.items()):
        counts = info.get("counts") or info.get("status_counts") or {}
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + int(v)
        stats = shard_box_stats(by_shard[name]) if name in by_shard else {}
        for k in boxes:
            boxes[k] += stats.get(k, 0)
        rows.append({"shard": name, "input": os.path.basename(str(info.get("input", ""))),
                     "rows": info.get("rows", sum(counts.values())), "ok": counts.get("ok", 0),
                     "errors": sum(v for k, v in counts.items() if k != "ok"),
                     "detail": ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k != "ok"),
                     "rows with boxes": stats.get("with_boxes", ""), "boxes": stats.get("boxes", ""),
                     "descriptions": stats.get("descriptions", ""),
                     "done after s": round(float(info.get("seconds_since_start", info.get("seconds", 0)) or 0), 1)})
    create_table_artifact(key="annotation-stats", table=rows or [{"shard": "-", "rows": 0}],
                          description=f"Annotation stats per shard ({output})")
    folder, link = common.artifact_folder(output, "overlays")
    md = visuals.overlay_markdown(visuals.pick_rows(parquet, n_overlays), folder, link)
    create_markdown_artifact(key="annotation-samples", markdown=md, description="Box overlays of a few annotated rows")
    print(f"annotation totals by status: {totals}; {boxes['with_boxes']} rows with boxes, {boxes['boxes']} boxes, "
          f"{boxes['descriptions']} descriptions; overlays in {folder}")
    return {"output": output, "shards": len(shards), "status_counts": totals, "overlays": folder, **boxes,
            "overlay_markdown": md}


@flow(name="annotate-cc12m", log_prints=True)
def annotate_cc12m(config: str | None = None, overrides: dict | None = None, input: str | None = None,
                   output: str | None = None, url_col: str = "url", caption_col: str = "caption") -> dict:
    """Annotate image-text shards (img2dataset folder or a CC12M-style URL list) with descriptions + boxes."""
    logger = get_run_logger()
    overrides = flatten_overrides(overrides)
    if output:
        overrides["output"] = output
    if input:
        if is_url_list(input):
            target = overrides.get("output") or stages.annotation_config(config, overrides).output
            if not target:
                raise ValueError("annotate-cc12m: a URL list needs an output folder (the `output` parameter)")
            input = download_url_list(input, f"{str(target).rstrip('/')}-download", url_col, caption_col)
        elif not os.path.exists(input) and "://" not in input:
            raise FileNotFoundError(f"annotate-cc12m: input {input!r} does not exist")
        overrides["input"] = [input]
    common.link_ray_dashboard()
    summary = annotate(config, overrides)
    report = report_annotation(summary["output"])
    logger.info("annotated %s shards into %s: %s", report["shards"], report["output"], report["status_counts"])
    return {**summary, **report, **common.run_info()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the annotate-cc12m flow once, in this process.")
    ap.add_argument("--config")
    ap.add_argument("--input")
    ap.add_argument("--output")
    a = ap.parse_args()
    print(annotate_cc12m(config=a.config, input=a.input, output=a.output))
