"""End to end on a stack of its own: one grain-pipeline deployment run (annotate → pretrain → evaluate)
whose Prefect worker (and the worker's flow-run process) is SIGKILLed mid-annotation ends **Crashed**
through the stack's zombie automation (missing heartbeats); triggering the same deployment again resumes
the annotation — the shards committed before the kill are kept, every row once — and completes, with
every stage's artifacts and log lines; `grain stack up` is idempotent and `grain stack down` leaves no
process behind (psutil: nothing in the services' sessions, nothing naming the stack's folders).

It records every listening socket of the stack's processes (Prefect server and worker, flow runs, Ray
head, dashboard, workers, vLLM engines) at rest and during both runs: all must be on loopback."""

import glob
import json
import os
import threading
import time
import urllib.request
from contextlib import contextmanager

import psutil
import pytest

from tests.procs import free_port_base, kill_all

pytestmark = pytest.mark.slow
ZOMBIE_AFTER_S = 50  # heartbeats come every 30 s (Prefect's minimum): a beat may be 20 s late before a false zombie
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _stack_processes(cfg, pids) -> dict[int, psutil.Process]:
    """The stack's services, all their descendants (flow runs, Ray drivers), and Ray's daemons and workers."""
    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.update({q.pid: q for q in [p, *p.children(recursive=True)]})
        except psutil.Error:
            pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if cfg.ray_tmp in " ".join(p.info["cmdline"] or []) or os.getsid(p.pid) in pids:
                out[p.pid] = p
        except (psutil.Error, OSError):
            pass
    return out


def _listening(cfg, pids) -> dict[tuple, str]:
    procs = _stack_processes(cfg, pids)
    found = {}
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            try:
                name = procs[c.pid].name()
            except psutil.Error:
                name = "?"
            found[(c.laddr.ip, c.laddr.port)] = name
    return found


@contextmanager
def _socket_watch(cfg, pids, period: float = 1.0):
    """Sample the stack's listening sockets until the block ends; yields the dict they accumulate in."""
    seen: dict = {}
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            seen.update(_listening(cfg, pids))
            stop.wait(period)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(timeout=30)
        seen.update(_listening(cfg, pids))


def _assert_loopback(seen: dict, what: str):
    assert seen, f"{what}: no listening socket seen at all (the sampler is broken)"
    exposed = {k: v for k, v in seen.items() if k[0] not in LOOPBACK}
    assert not exposed, f"{what}: listening beyond loopback: {exposed}"


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("stack"))
    base = free_port_base(330)
    env = {"GRAIN_STACK_HOME": home, "GRAIN_PREFECT_PORT": str(base + 320), "GRAIN_RAY_PORT": str(base),
           "GRAIN_RAY_DASHBOARD_PORT": str(base + 321), "GRAIN_ARTIFACT_PORT": str(base + 322),
           "GRAIN_RAY_NUM_CPUS": "2", "GRAIN_RAY_TMP": f"/tmp/gr-e2e-{base}", "GRAIN_WORK_POOL": f"grain-e2e-{base}",
           "GRAIN_HEARTBEAT_S": "30", "GRAIN_ZOMBIE_AFTER_S": str(ZOMBIE_AFTER_S),
           # the worker (and its flow runs) inherit this: the kill test passes run.inject as a flow parameter
           "GRAIN_ALLOW_TEST_HOOKS": "1"}
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


def _flow_run(api_url: str, run_id: str) -> dict:
    with urllib.request.urlopen(f"{api_url}/flow_runs/{run_id}", timeout=30) as r:
        return json.load(r)


def _wait_state(api_url: str, run_id: str, pred, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _flow_run(api_url, run_id)
        if pred(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: flow run {run_id} after {timeout:.0f} s: {run.get('state')}")
        time.sleep(2)


def _up_twice(stack, cfg) -> tuple[dict, list[int], dict]:
    """`grain stack up`, then again (idempotent) → (status, service pids, listening sockets at rest)."""
    st = stack.up(cfg, timeout=300)
    assert st["up"], st
    pids = [s["pid"] for s in st["services"].values()]
    again = stack.up(cfg)
    assert again["started"] == [] and [s["pid"] for s in again["services"].values()] == pids  # idempotent
    before = _listening(cfg, pids)
    _assert_loopback(before, "stack at rest")
    return st, pids, before


def _pipeline_params(tmp_path) -> tuple[dict, dict, str, str]:
    """A demo corpus of ~12 shards → (corpus info, deployment parameters, workdir, annotation output)."""
    from infra import demo_corpus

    corpus = str(tmp_path / "corpus")
    info = demo_corpus.build_corpus(corpus, limit=24, shard_size=2, show_progress=False)  # ~12 shards
    workdir = str(tmp_path / "run")
    out = os.path.join(workdir, "annotated")
    # One describer actor, 2 rows per batch and ≥ 0.5 s per batch: the shards after the first need ≥ 5 s
    # more, so the kill below lands mid-run even on a fast machine (CI once committed 9 shards in 4 s).
    overrides = {"annotate": {"run": {"batch_size": 2, "decode_batch_size": 2, "describer_actors": 1,
                                      "inject": {"describe_delay_s": 0.5}}},
                 "train": {"batch_size": 4, "epochs": 1},  # ≤ 24 rows, 2 workers: ≤ 3 steps
                 "eval": {"limit": 20, "templates": ["a photo of a {}."], "alphas": [1.0, 0.0]}}
    return info, {"input": corpus, "workdir": workdir, "overrides": overrides}, workdir, out


def _kill_worker_mid_annotation(cfg, st, pids, before, params, out, n_shards) -> tuple[dict, dict]:
    """Trigger the deployment, SIGKILL the worker once a shard is committed → (the killed run,
    {committed shard name: its mtime})."""
    from infra.demo import trigger

    worker = psutil.Process(st["services"]["worker"]["pid"])
    with _socket_watch(cfg, pids) as during:
        run = trigger("grain-pipeline/grain-pipeline", params, cfg.api_url, timeout=0)  # do not wait
        deadline = time.monotonic() + 400
        polls = 0
        while not glob.glob(os.path.join(out, "*.parquet.done")):
            if polls % 10 == 0:
                state = _flow_run(cfg.api_url, run["id"])["state"]
                assert state["type"] in ("SCHEDULED", "PENDING", "RUNNING"), state
                assert time.monotonic() < deadline, f"no shard committed in 400 s: {state}"
            polls += 1
            time.sleep(0.1)
        # The worker's machine dies: SIGKILL the worker and everything it started (the flow-run process,
        # its Ray driver) at once. No process is left to report a final state.
        kill_all([worker, *worker.children(recursive=True)], timeout=30)
    _assert_loopback(during, "annotate subflow (Prefect worker + flow run + Ray + vLLM)")
    assert len(during) > len(before)  # the run's own servers (Ray driver, workers, engine) were seen

    committed = {os.path.basename(p)[: -len(".done")]: os.path.getmtime(p[: -len(".done")])
                 for p in glob.glob(os.path.join(out, "*.parquet.done"))}
    assert 0 < len(committed) < n_shards, committed
    assert _flow_run(cfg.api_url, run["id"])["state"]["type"] == "RUNNING"  # what Prefect believes now
    return run, committed


def _rerun_after_restart(stack, cfg, params, killed_run) -> tuple[dict, list[int]]:
    """Bring the worker back and trigger the same deployment again at once: the annotation resumes, the
    rest runs. (The dead run is left to the zombie automation meanwhile: checked once this one is done.)
    → (the completed run, the service pids now)."""
    from infra.demo import trigger
    from infra.zombies import ZOMBIE_MESSAGE

    again = stack.up(cfg, timeout=300)
    assert again["started"] == ["worker"], again["started"]
    pids = [s["pid"] for s in again["services"].values()]
    with _socket_watch(cfg, pids) as during:
        run = trigger("grain-pipeline/grain-pipeline", params, cfg.api_url, timeout=900)
    assert run["state"] == "COMPLETED", run
    crashed = _wait_state(cfg.api_url, killed_run["id"], lambda r: r["state"]["type"] != "RUNNING",
                          ZOMBIE_AFTER_S + 150, "zombie detection")
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]
    assert crashed["state"]["message"] == ZOMBIE_MESSAGE.format(s=ZOMBIE_AFTER_S)
    _assert_loopback(during, "grain-pipeline run")
    return run, pids


def _assert_outputs(out, workdir, n_shards, info, committed) -> None:
    """Every shard committed, every row once, the pre-kill shards untouched; final.pt and eval results."""
    from grain.common.schema import read_table

    shards = sorted(glob.glob(os.path.join(out, "*.parquet")))
    assert len(shards) == n_shards and all(os.path.exists(p + ".done") for p in shards)
    keys = [k for p in shards for k in read_table(p).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == info["samples"], len(keys)  # every row once (an unrenderable image is not in the corpus)
    for name, mtime in committed.items():  # shards committed before the kill were not redone
        assert os.path.getmtime(os.path.join(out, name)) == mtime, name
    assert os.path.getsize(os.path.join(workdir, "train", "final.pt")) > 0
    assert os.path.exists(os.path.join(workdir, "eval", "results.json"))


def _assert_stage_runs(cfg, run, out, workdir, n_shards, info, committed) -> None:
    """The three subflows' artifacts, the pipeline summary, the overlay PNG, and the stages' own log lines."""
    from grain.common.schema import read_table
    from infra.demo import child_runs

    subs = {c["flow"]: c for c in child_runs(cfg.api_url, run["id"])}
    assert set(subs) == {"annotate-cc12m", "pretrain-grain", "evaluate-grain"}, subs
    ids = {k: c["url"].rsplit("/", 1)[1] for k, c in subs.items()}
    annotate_log = _logs(cfg.api_url, ids["annotate-cc12m"])
    assert f"{n_shards - len(committed)} shards written, {len(committed)} already done" in annotate_log, annotate_log[-3000:]
    arts = {k: _artifacts(cfg.api_url, i) for k, i in ids.items()}
    assert {"annotation-stats", "annotation-samples", "ray-dashboard"} <= set(arts["annotate-cc12m"])
    assert {"training-curves", "training-metrics"} <= set(arts["pretrain-grain"])
    assert {"evaluation-results", "evaluation-table"} <= set(arts["evaluate-grain"])
    from flows.pretrain import coverage_line, training_coverage

    with open(os.path.join(workdir, "train", "run.json")) as fh:
        cov = training_coverage(json.load(fh))
    assert 16 <= cov["rows_total"] <= info["samples"] and cov["rows_trained"] >= 16, cov
    summary = _artifacts(cfg.api_url, run["id"])["pipeline-summary"]["data"]
    assert coverage_line(cov) in summary and subs["annotate-cc12m"]["url"] in summary
    md = arts["annotate-cc12m"]["annotation-samples"]["data"]
    url = md.split("](", 1)[1].split(")", 1)[0]
    assert url.startswith(cfg.artifact_url)
    with urllib.request.urlopen(url, timeout=10) as r:  # the overlay PNG is served on 127.0.0.1
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"

    # The stages' own lines reach the flow run logs (Ray worker prints included), via the API.
    written = sum(read_table(os.path.join(out, n)).num_rows for n in os.listdir(out) if n.endswith(".parquet") and n not in committed)
    assert f"annotation finished: {written} rows, {n_shards - len(committed)} shards written" in annotate_log, annotate_log[-3000:]
    train_log = _logs(cfg.api_url, ids["pretrain-grain"])
    steps = cov["rows_trained"] // 8
    assert "(RayTrainWorker" in train_log and f"[grain train] step {steps}/{steps}" in train_log, train_log[-3000:]
    assert coverage_line(cov) in train_log
    assert "Zero-shot classification" in _logs(cfg.api_url, ids["evaluate-grain"])


def _assert_down_leaves_nothing(stack, cfg, pids) -> None:
    """`grain stack down` (twice: down when down is fine): no process in the services' sessions or naming the stack's folders."""
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


def test_stack_pipeline_survives_a_killed_worker_and_stops_cleanly(stack_env, tmp_path, tiny_models):
    """`grain stack up` (twice: idempotent); a grain-pipeline deployment run (annotate → pretrain → evaluate
    as subflows) whose worker is SIGKILLed mid-annotation ends Crashed (zombie automation); `grain stack up`
    restarts the worker and the same deployment, run again at once, resumes the annotation (committed shards kept,
    every row once) and completes: artifacts of every stage, the stages' own lines in the subflow run logs
    (API), every listening socket on loopback; `grain stack down` leaves no process behind."""
    from infra import stack

    cfg = stack_env
    st, pids, before = _up_twice(stack, cfg)
    info, params, workdir, out = _pipeline_params(tmp_path)
    n_shards = info["shards"]
    killed_run, committed = _kill_worker_mid_annotation(cfg, st, pids, before, params, out, n_shards)
    run, pids = _rerun_after_restart(stack, cfg, params, killed_run)
    _assert_outputs(out, workdir, n_shards, info, committed)
    _assert_stage_runs(cfg, run, out, workdir, n_shards, info, committed)
    _assert_down_leaves_nothing(stack, cfg, pids)
