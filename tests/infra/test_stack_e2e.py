"""End to end on a stack of its own: `grain stack up`, deployments triggered through the Prefect API,
outputs + artifacts checked, `grain stack down` leaves no process behind (psutil)."""

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


def test_stack_runs_deployments_and_stops_cleanly(stack_env, tmp_path, tiny_models):
    from infra import demo_corpus, stack
    from infra.demo import trigger

    cfg = stack_env
    st = stack.up(cfg, timeout=300)
    assert st["up"], st
    pids = [s["pid"] for s in st["services"].values()]
    again = stack.up(cfg)
    assert again["started"] == [] and [s["pid"] for s in again["services"].values()] == pids  # idempotent

    corpus = str(tmp_path / "corpus")
    demo_corpus.build_corpus(corpus, limit=16, shard_size=8, show_progress=False)
    annot, train = str(tmp_path / "annotated"), str(tmp_path / "train")
    run = trigger("annotate-cc12m/annotate-cc12m", {"input": corpus, "output": annot}, cfg.api_url, timeout=600)
    assert run["state"] == "COMPLETED", run
    assert sorted(f for f in os.listdir(annot) if f.endswith(".parquet")) == ["00000.parquet", "00001.parquet"]
    arts = _artifacts(cfg.api_url, run["id"])
    assert {"annotation-stats", "annotation-samples", "ray-dashboard"} <= set(arts), sorted(arts)
    md = arts["annotation-samples"]["data"]
    url = md.split("](", 1)[1].split(")", 1)[0]
    assert url.startswith(cfg.artifact_url)
    with urllib.request.urlopen(url, timeout=10) as r:  # the overlay PNG is served on 127.0.0.1
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"

    run = trigger("pretrain-grain/pretrain-grain",
                  {"data": annot, "output": train, "overrides": {"batch_size": 4, "max_steps": 2}},
                  cfg.api_url, timeout=600)
    assert run["state"] == "COMPLETED", run
    assert os.path.getsize(os.path.join(train, "final.pt")) > 0
    arts = _artifacts(cfg.api_url, run["id"])
    assert {"training-curves", "training-metrics"} <= set(arts), sorted(arts)

    procs_before = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    stack.down(cfg)
    stack.down(cfg)  # down when down is fine
    gone, alive = psutil.wait_procs(procs_before, timeout=10)
    assert not alive
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if (cfg.home in cmd or cfg.ray_tmp in cmd) and p.pid != os.getpid():
            leftovers.append((p.pid, cmd[:200]))
    assert not leftovers
    assert not stack.status(cfg)["up"]
