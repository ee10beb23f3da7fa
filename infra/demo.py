"""`grain demo`: the whole pipeline on real images, through the local stack's deployment.

    grain demo [--limit 120] [--workdir DIR] [--max-steps N] [--no-wait]

1. brings the local stack up if needed (``grain stack up``),
2. makes sure the tiny models, the evaluation sets and a demo-corpus slice exist,
3. triggers ``grain-pipeline/grain-pipeline`` through the Prefect API (what
   ``prefect deployment run grain-pipeline/grain-pipeline`` does) and waits for it,
4. prints where to look (UI, output folders, the evaluation table) and how to stop the stack.

Tiny random-weight models write few descriptions and fewer boxes; such rows are valid (METHOD.md §1)
and train with L_ic only, so the demo trains on every decodable image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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
    from annotators.tiny_models import ensure_tiny_models
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


def main(argv: list[str] | None = None) -> int:
    cache = os.environ.get("GRAIN_CACHE", os.path.expanduser("~/.cache/grain"))
    p = argparse.ArgumentParser(prog="grain demo", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=120, help="images of the demo corpus to use (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="output root (default: $GRAIN_STACK_HOME/demo-<time>)")
    p.add_argument("--max-steps", type=int, default=None, help="stop training after N steps (default: 1 epoch)")
    p.add_argument("--eval-limit", type=int, default=200, help="images per evaluation set (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run (default: %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="trigger the run and return")
    args = p.parse_args(argv)
    if args.limit < 8:
        p.error("--limit must be ≥ 8 (two workers need a batch each)")

    from infra import stack

    cfg = StackConfig.from_env()
    st = stack.status(cfg)
    if not st["up"]:
        print("[demo] starting the local stack (grain stack up) ...", flush=True)
        stack.up(cfg)
    corpus = os.path.join(cache, f"demo-corpus-{args.limit}")
    info = prepare_inputs(args.limit, corpus)
    workdir = os.path.abspath(args.workdir or os.path.join(cfg.home, "demo-" + time.strftime("%Y%m%d-%H%M%S")))
    train = {"epochs": 1}
    if args.max_steps:
        train["max_steps"] = args.max_steps
    params = {"input": corpus, "workdir": workdir,
              "overrides": {"train": train, "eval": {"limit": args.eval_limit}}}
    print(f"[demo] corpus: {info.get('samples')} images in {info.get('shards')} shards; triggering "
          "grain-pipeline/grain-pipeline ...", flush=True)
    t0 = time.time()
    run = trigger("grain-pipeline/grain-pipeline", params, cfg.api_url, timeout=0 if args.no_wait else args.timeout)
    print(f"[demo] flow run: {run['url']}  state: {run['state_name']} ({time.time() - t0:.0f} s)")
    if args.no_wait:
        return 0
    ok = run["state"] == "COMPLETED"
    table = os.path.join(workdir, "eval", "results.md")
    print("\n".join([
        "",
        f"Prefect UI:      {cfg.ui_url}   (this run: {run['url']}; artifacts tab: stats, overlays, curves, results)",
        f"Ray dashboard:   {cfg.dashboard_url}   (token: `ray get-auth-token`)",
        f"annotated shards {os.path.join(workdir, 'annotated')}",
        f"training run     {os.path.join(workdir, 'train')}   (final.pt, metrics.jsonl, loss_curves.png)",
        f"evaluation       {os.path.join(workdir, 'eval')}",
        f"stack logs       {cfg.logs}",
        "stop the stack:  grain stack down",
    ]))
    if ok and os.path.exists(table):
        print("\n" + open(table, encoding="utf-8").read())
    manifest = os.path.join(workdir, "train", "run.json")
    if os.path.exists(manifest):
        with open(manifest) as fh:
            data = json.load(fh).get("data", {})
        print(f"[demo] training data: {json.dumps(data)[:500]}")
    if not ok:
        print(f"[demo] the run ended {run['state_name']}: see {run['url']} and {cfg.logs}/worker.log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
