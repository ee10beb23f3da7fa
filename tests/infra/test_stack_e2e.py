"""End to end on a stack of its own: `grain stack up` (twice: idempotent), the grain-pipeline deployment
triggered through the Prefect API, outputs + artifacts + run logs checked, `grain stack down` leaves no
process behind (psutil: nothing in the services' sessions, nothing naming the stack's folders)."""

import json
import os
import random
import socket
import urllib.request

import psutil
import pytest

pytestmark = pytest.mark.slow


def _free_base(span: int) -> int:
    """A port base with ``span`` free ports after it (Ray uses GCS port … +309)."""
    for _ in range(50):
        base = random.randrange(20000, 30000 - span)
        ok = True
        for p in range(base, base + span):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", p)) == 0:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("stack"))
    base = _free_base(330)
    env = {"GRAIN_STACK_HOME": home, "GRAIN_PREFECT_PORT": str(base + 320), "GRAIN_RAY_PORT": str(base),
           "GRAIN_RAY_DASHBOARD_PORT": str(base + 321), "GRAIN_ARTIFACT_PORT": str(base + 322),
           "GRAIN_RAY_NUM_CPUS": "2", "GRAIN_RAY_TMP": f"/tmp/gr-e2e-{base}", "GRAIN_WORK_POOL": f"grain-e2e-{base}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from infra import stack
    from infra.stack_config import StackConfig

    cfg = StackConfig.from_env()
    try:
        yield cfg
    finally:
        stack.down(cfg)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _artifacts(api_url: str, flow_run_id: str) -> dict:
    body = json.dumps({"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).encode()
    req = urllib.request.Request(f"{api_url}/artifacts/filter", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return {a["key"] or a["type"]: a for a in json.load(r)}


def _post(api_url: str, path: str, body: dict) -> list:
    req = urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _logs(api_url: str, flow_run_id: str) -> str:
    out, offset = [], 0
    while True:
        page = _post(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                                              "offset": offset, "limit": 200})
        out += [x["message"] for x in page]
        if len(page) < 200:
            return "\n".join(out)
        offset += 200


def test_stack_runs_the_pipeline_deployment_and_stops_cleanly(stack_env, tmp_path, tiny_models):
    """One grain-pipeline deployment run (annotate → pretrain → evaluate as subflows) on 16 images:
    artifacts of every stage, the stages' own output lines in the subflow run logs (API), clean stop."""
    from infra import demo_corpus, stack
    from infra.demo import child_runs, trigger

    cfg = stack_env
    st = stack.up(cfg, timeout=300)
    assert st["up"], st
    pids = [s["pid"] for s in st["services"].values()]
    again = stack.up(cfg)
    assert again["started"] == [] and [s["pid"] for s in again["services"].values()] == pids  # idempotent

    corpus = str(tmp_path / "corpus")
    demo_corpus.build_corpus(corpus, limit=16, shard_size=8, show_progress=False)
    workdir = str(tmp_path / "run")
    overrides = {"train": {"batch_size": 4, "epochs": 1},  # 16 rows, 2 workers: 2 steps
                 "eval": {"limit": 20, "templates": ["a photo of a {}."], "alphas": [1.0, 0.0]}}
    run = trigger("grain-pipeline/grain-pipeline", {"input": corpus, "workdir": workdir, "overrides": overrides},
                  cfg.api_url, timeout=900)
    assert run["state"] == "COMPLETED", run
    annot = os.path.join(workdir, "annotated")
    assert sorted(f for f in os.listdir(annot) if f.endswith(".parquet")) == ["00000.parquet", "00001.parquet"]
    assert os.path.getsize(os.path.join(workdir, "train", "final.pt")) > 0
    assert os.path.exists(os.path.join(workdir, "eval", "results.json"))

    subs = {c["flow"]: c for c in child_runs(cfg.api_url, run["id"])}
    assert set(subs) == {"annotate-cc12m", "pretrain-grain", "evaluate-grain"}, subs
    ids = {k: c["url"].rsplit("/", 1)[1] for k, c in subs.items()}
    arts = {k: _artifacts(cfg.api_url, i) for k, i in ids.items()}
    assert {"annotation-stats", "annotation-samples", "ray-dashboard"} <= set(arts["annotate-cc12m"])
    assert {"training-curves", "training-metrics"} <= set(arts["pretrain-grain"])
    assert {"evaluation-results", "evaluation-table"} <= set(arts["evaluate-grain"])
    from flows.pretrain import coverage_line, training_coverage

    with open(os.path.join(workdir, "train", "run.json")) as fh:
        cov = training_coverage(json.load(fh))
    assert cov["rows_total"] >= 15 and cov["rows_trained"] >= 8, cov  # the corpus may skip an unreadable image
    summary = _artifacts(cfg.api_url, run["id"])["pipeline-summary"]["data"]
    assert coverage_line(cov) in summary and subs["annotate-cc12m"]["url"] in summary
    md = arts["annotate-cc12m"]["annotation-samples"]["data"]
    url = md.split("](", 1)[1].split(")", 1)[0]
    assert url.startswith(cfg.artifact_url)
    with urllib.request.urlopen(url, timeout=10) as r:  # the overlay PNG is served on 127.0.0.1
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"

    # The stages' own lines reach the flow run logs (Ray worker prints included), via the API.
    assert f"annotation finished: {cov['rows_total']} rows" in _logs(cfg.api_url, ids["annotate-cc12m"])
    train_log = _logs(cfg.api_url, ids["pretrain-grain"])
    steps = cov["rows_trained"] // 8
    assert "(RayTrainWorker" in train_log and f"[grain train] step {steps}/{steps}" in train_log, train_log[-3000:]
    assert coverage_line(cov) in train_log
    assert "Zero-shot classification" in _logs(cfg.api_url, ids["evaluate-grain"])

    procs_before = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    stack.down(cfg)
    stack.down(cfg)  # down when down is fine
    gone, alive = psutil.wait_procs(procs_before, timeout=10)
    assert not alive
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            sid = os.getsid(p.pid)
        except (psutil.Error, OSError):
            continue
        if p.pid != os.getpid() and (cfg.home in cmd or cfg.ray_tmp in cmd or sid in pids):
            leftovers.append((p.pid, cmd[:200]))
    assert not leftovers
    assert not stack.status(cfg)["up"]
