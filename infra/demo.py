"""`grain demo`: the whole pipeline on real images, through the local stack's deployment.

    grain demo [--limit 120] [--epochs 2] [--eval-limit 200] [--workdir DIR] [--max-steps N] [--no-wait]

1. brings the local stack up if needed (``grain stack up``),
2. makes sure the tiny models, the evaluation sets and a demo-corpus slice exist,
3. triggers ``grain-pipeline/grain-pipeline`` through the Prefect API (what
   ``prefect deployment run grain-pipeline/grain-pipeline`` does) and waits for it,
4. prints where to look (UI, the flow run URLs, output folders), the annotation counts, the share of
   rows the trainer used (the demo fails below 90 %), the evaluation table, and how to stop the stack.

Rows without descriptions or boxes are valid (docs/method.md §1.5) and train with L_ic only, so the demo
trains on every decodable image but the tail of each epoch that does not fill a batch on every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from grain.common.cache import grain_cache
from infra.cpu_meter import CpuMeter
from infra.stack_config import StackConfig


def trigger(name: str, parameters: dict, api_url: str, timeout: float | None = None) -> dict:
    """Run deployment ``FLOW/DEPLOYMENT`` via the API and wait (``timeout`` s, None = forever).

    Returns ``{"id", "state", "url"}``; raises naming the deployment when it cannot be found.
    """
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if "/" not in name:
        raise ValueError(f"deployment {name!r}: Prefect needs FLOW/DEPLOYMENT, e.g. {name}/{name}")
    with temporary_settings({PREFECT_API_URL: api_url}):
        run = run_deployment(name=name, parameters=parameters, timeout=timeout, poll_interval=5)
    ui = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
    return {"id": str(run.id), "state": run.state.type.value if run.state else None,
            "state_name": run.state.name if run.state else None, "url": f"{ui}/runs/flow-run/{run.id}"}


def prepare_inputs(limit: int, corpus_dir: str) -> dict:
    """Tiny models, evaluation sets and the corpus slice (each cached; rebuilt only when missing)."""
    from grain.testing.tiny_models import ensure_tiny_models
    from evaluation.datasets import ensure_dataset
    from flows.stages import EVAL_DEFAULTS
    from infra.demo_corpus import ensure_corpus

    print("[demo] tiny models ...", flush=True)
    ensure_tiny_models()
    print("[demo] evaluation sets ...", flush=True)
    for name in EVAL_DEFAULTS["datasets"]:
        ensure_dataset(name)
    print(f"[demo] demo corpus ({limit} images) → {corpus_dir} ...", flush=True)
    info = ensure_corpus(corpus_dir, limit=limit, shard_size=max(16, min(128, limit // 4 or 1)))
    return info


def demo_device() -> tuple[str, dict]:
    """The device the demo's tiny models run on, and the stage overrides that put them there.

    ``("cpu", {})`` without CUDA; with it, the describer (vLLM) and the grounder share GPU 0 (fractions
    of it, a small vLLM memory share: the models are tiny) and training runs one worker per GPU (≤ 2).
    """
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return "cpu", {}
    label = f"cuda ({n} × {torch.cuda.get_device_name(0)})"
    return label, {
        "annotate": {"run": {"describer_gpus": 0.5, "grounder_gpus": 0.25, "grounder_cpu_affinity": None},
                     "models": {"gpu_memory_utilization": 0.3}},
        "train": {"use_gpu": True, "workers": min(2, n)},
        "eval": {"device": "cuda"},
    }


def child_runs(api_url: str, flow_run_id: str) -> list[dict]:
    """The subflow runs of ``flow_run_id`` (name, flow, state, seconds, UI url), oldest first."""
    import urllib.request

    body = json.dumps({"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "sort": "START_TIME_ASC"}).encode()
    req = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - the stack's loopback API
        runs = json.load(r)
    flows = {}
    for run in runs:
        if run["flow_id"] not in flows:
            with urllib.request.urlopen(f"{api_url}/flows/{run['flow_id']}", timeout=30) as r:  # noqa: S310
                flows[run["flow_id"]] = json.load(r)["name"]
    ui = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
    return [{"flow": flows[r["flow_id"]], "name": r["name"], "state": (r.get("state") or {}).get("name"),
             "seconds": round(float(r.get("total_run_time") or 0)), "url": f"{ui}/runs/flow-run/{r['id']}"} for r in runs]


def report(workdir: str, api_url: str, run: dict, cfg: StackConfig, min_fraction: float) -> bool:
    """Print where to look and what happened; return False when the demo trained on too few rows."""
    from flows.pretrain import coverage_line, training_coverage

    print("\nFlow runs (Prefect UI; each has Logs and Artifacts tabs):")
    print(f"  grain-pipeline   {run['url']}   {run['state_name']}  (artifact: pipeline-summary)")
    try:
        for c in child_runs(api_url, run["id"]):
            print(f"  {c['flow']:16s} {c['url']}   {c['state']}, {c['seconds']} s")
    except OSError as e:
        print(f"  (subflow runs unavailable: {e})")
    print("\n".join([
        "",
        f"Prefect UI       {cfg.ui_url}   (Runs → grain-pipeline → Subflow Runs / Artifacts)",
        f"Ray dashboard    {cfg.dashboard_url}   (log in with the token in {cfg.ray_token_file})",
        f"annotated shards {os.path.join(workdir, 'annotated')}   (Parquet + manifest.json)",
        f"training run     {os.path.join(workdir, 'train')}   (final.pt, metrics.jsonl, loss_curves.png, run.json)",
        f"evaluation       {os.path.join(workdir, 'eval')}   (results.json, results.md)",
        f"stack logs       {cfg.logs}",
    ]))
    ok = True
    try:
        with open(os.path.join(workdir, "annotated", "manifest.json")) as fh:
            shards = json.load(fh).get("shards", {})
        counts: dict = {}
        for info in shards.values():
            for k, v in (info.get("counts") or {}).items():
                counts[k] = counts.get(k, 0) + int(v)
        print(f"\n[demo] annotation: {sum(counts.values())} rows in {len(shards)} shards, by status {counts}")
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(workdir, "train", "run.json")) as fh:
            cov = training_coverage(json.load(fh))
        print(f"[demo] training: {coverage_line(cov)}")
        if cov["fraction"] < min_fraction:
            print(f"[demo] the demo should train on ≥ {100 * min_fraction:.0f} % of its rows", file=sys.stderr)
            ok = False
    except (OSError, ValueError, KeyError) as e:
        print(f"[demo] training coverage unknown ({e})")
        ok = False
    table = os.path.join(workdir, "eval", "results.md")
    if os.path.exists(table):
        print("\n" + open(table, encoding="utf-8").read().strip())
    return ok


def main(argv: list[str] | None = None) -> int:
    cache = grain_cache()
    p = argparse.ArgumentParser(prog="grain demo", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=120, help="images of the demo corpus to use (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="output root (default: $GRAIN_STACK_HOME/demo-<time>)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs over the slice (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="stop training after N steps (default: all epochs)")
    p.add_argument("--eval-limit", type=int, default=200, help="images per evaluation set (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run (default: %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="trigger the run and return")
    args = p.parse_args(argv)
    if args.limit < 8:
        p.error("--limit must be ≥ 8 (two workers need a batch each)")
    if args.epochs < 1:
        p.error("--epochs must be ≥ 1")

    from infra import stack

    t_start = time.time()
    cfg = StackConfig.from_env()
    st = stack.status(cfg)
    if not st["up"]:
        print("[demo] starting the local stack (grain stack up) ...", flush=True)
        stack.up(cfg)
    corpus = os.path.join(cache, f"demo-corpus-{args.limit}")
    info = prepare_inputs(args.limit, corpus)
    workdir = os.path.abspath(args.workdir or os.path.join(cfg.home, "demo-" + time.strftime("%Y%m%d-%H%M%S")))
    train = {"epochs": args.epochs}
    if args.max_steps:
        train["max_steps"] = args.max_steps
    device, placed = demo_device()
    train.update(placed.get("train", {}))
    overrides = {"train": train, "eval": {"limit": args.eval_limit, **placed.get("eval", {})}}
    if "annotate" in placed:
        overrides["annotate"] = placed["annotate"]
    params = {"input": corpus, "workdir": workdir, "overrides": overrides}
    print(f"[demo] device: {device} (describer, grounder, trainer, evaluation)", flush=True)
    print(f"[demo] corpus: {info.get('samples')} images in {info.get('shards')} shards; triggering "
          "grain-pipeline/grain-pipeline (annotate → pretrain → evaluate) ...", flush=True)
    t0 = time.time()
    sessions = [svc.get("pid") for svc in stack.load_state(cfg).get("services", {}).values()]
    with CpuMeter(sessions) as meter:
        run = trigger("grain-pipeline/grain-pipeline", params, cfg.api_url, timeout=0 if args.no_wait else args.timeout)
    if args.no_wait:
        print(f"[demo] flow run: {run['url']}  (stop the stack afterwards: grain stack down)")
        return 0
    run_s, cpu_s = time.time() - t0, meter.cpu_seconds
    ok = run["state"] == "COMPLETED"
    enough = report(workdir, cfg.api_url, run, cfg, min_fraction=0.9) if ok else False
    print(f"\n[demo] device used: {device}")
    print(f"[demo] pipeline run {run['state_name']} in {run_s:.0f} s ({cpu_s:.0f} CPU s in the stack, i.e. "
          f"≥ {cpu_s / max(1, os.cpu_count() or 1):.0f} s on {os.cpu_count()} idle cores); demo total {time.time() - t_start:.0f} s")
    print("[demo] the stack keeps running for the UI; stop it with:  grain stack down")
    if not ok:
        print(f"[demo] the run ended {run['state_name']}: see {run['url']} and {cfg.logs}/worker.log", file=sys.stderr)
        return 1
    return 0 if enough else 1


if __name__ == "__main__":
    raise SystemExit(main())
