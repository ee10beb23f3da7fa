"""The vLLM engine process SIGKILLed in the middle of a real annotate run: the job finishes, nothing lost.

One annotate run (`python -m annotators.cli`, tiny LLaVA on vLLM + tiny OWLv2, its own private Ray) over
16 real images in 4 shards. As soon as the first shard is committed, the test kills the describer's
vLLM engine-core process from outside (`kill -9`, as the OOM killer or a GPU fault would). The describer
actor then gets vLLM's EngineDeadError on its next call, exits, Ray restarts it (a second engine
process appears) and retries the batch: the run exits 0 with every row `ok`, each exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from annotators.stages import engine_processes
from grain.common.schema import read_table

pytestmark = pytest.mark.slow


def test_killed_vllm_engine_is_restarted_and_its_batch_retried(tiny_models, tmp_path):
    from infra.demo_corpus import build_corpus

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    info = build_corpus(inp, limit=16, shard_size=4, show_progress=False)
    cmd = [sys.executable, "-m", "annotators.cli", "--input", inp, "--output", out, "--profile", "tiny", "--json",
           "--no-progress", "--set", "run.batch_size=2", "--set", "run.decode_batch_size=2", "--set", "run.max_restarts=2",
           # ≥ 2 s per MLLM batch (a test hook) makes the describer the slowest stage, so its engine still has
           # ≥ 12 s of batches to serve when the first shard commits. With 0.5 s, on a loaded CI machine, the
           # grounder lagged behind: the describer had finished and its engine was gone before any commit.
           "--set", "run.inject.describe_delay_s=2.0"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "GRAIN_ALLOW_TEST_HOOKS": "1"}
    log, outf = open(tmp_path / "run.log", "w"), open(tmp_path / "stdout.txt", "w")  # files: a pipe could fill
    proc = subprocess.Popen(cmd, env=env, stdout=outf, stderr=log, start_new_session=True)
    t0 = time.time()
    engines_seen: dict[int, float] = {}  # pid → seconds after start when first seen
    commits: dict[str, float] = {}  # committed shard → seconds after start when first seen
    killed = None
    try:
        deadline = time.time() + 500
        while proc.poll() is None and time.time() < deadline:
            for e in engine_processes(proc.pid):
                engines_seen.setdefault(e.pid, round(time.time() - t0, 1))
            for done in glob.glob(os.path.join(out, "*.parquet.done")):
                commits.setdefault(os.path.basename(done), round(time.time() - t0, 1))
            if killed is None and commits:
                live = engine_processes(proc.pid)
                if live:
                    killed = live[0].pid
                    done_at_kill = len(glob.glob(os.path.join(out, "*.parquet.done")))
                    live[0].send_signal(signal.SIGKILL)
            time.sleep(0.2)
        proc.wait(timeout=max(10, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        outf.close()
    stdout = open(tmp_path / "stdout.txt").read()
    errlog = open(tmp_path / "run.log").read()[-4000:]
    timeline = f"engines first seen at {engines_seen} s, shards committed at {commits} s, exit {proc.returncode}"
    assert killed is not None, f"no vLLM engine process found to kill ({timeline}): {errlog}"
    assert done_at_kill < info["shards"], f"the run finished before the kill; nothing was tested ({timeline})"
    assert proc.returncode == 0, errlog
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["shards_written"] == info["shards"]
    assert len(engines_seen) >= 2 and killed in engines_seen, engines_seen  # a fresh engine replaced the dead one

    rows = [r for p in sorted(glob.glob(os.path.join(out, "*.parquet"))) for r in read_table(p).to_pylist()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == info["samples"]  # every row once: the retried batch is not doubled
    bad = [(r["key"], r["status"], r["error"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad  # the batch the engine died on was retried, not written off as model errors
    assert all(r["mllm_caption"] for r in rows)
