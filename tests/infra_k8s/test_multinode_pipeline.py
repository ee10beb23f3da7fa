"""The pipeline on a real two-node Ray cluster, data and checkpoints on S3, a node lost mid-training.

Two raylets on this machine (tests/infra_k8s/multinode.py), 2 logical CPUs each, and moto's S3 server:
1. ``grain annotate --profile tiny`` reads a webdataset shard from ``s3://…/input`` and writes annotated
   shards to ``s3://…/annotated`` through the cluster (``--ray-address``).
2. ``grain train --profile tiny`` reads those shards with 2 workers at 2 CPUs each (one torch thread):
   with 2 CPUs per node, one worker must run on each node (checked through the nodes' process titles).
3. Once a checkpoint is on S3, node 1 is killed (every process of it: a lost machine) and a replacement
   node joins; Ray Train's FailureConfig restarts the worker group, which resumes from the last
   checkpoint (step > 0), and the run finishes at its final step with ``final.pt`` on S3.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

from grain.common import storage
from tests.infra_k8s.conftest import REPO
from tests.infra_k8s.multinode import local_ray_cluster, process_titles

N_IMAGES = 8
BATCH, EPOCHS = 2, 20  # 8 rows / (2 workers × 2) = 2 steps per epoch → 40 steps, a checkpoint every 10: node 1
# is killed as soon as Ray Train has registered the first checkpoint (its snapshot file is on S3), ~30 steps before the end
RUN_NAME = "mn"


def _input_tar() -> bytes:
    """A webdataset shard (``<key>.jpg`` + ``<key>.txt``) of scikit-image photos."""
    from annotators.badinputs import encode, good_photos

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (_, img, caption) in enumerate(good_photos(N_IMAGES, max_side=128)):
            for name, data in ((f"{i:08d}.jpg", encode(img, "JPEG")), (f"{i:08d}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _train_workers(cluster) -> list[int]:
    """Ray Train worker processes per node (actors retitle their process ``ray::RayTrainWorker…``)."""
    return [sum("RayTrainWorker" in t for t in process_titles(cluster.marker(i))) for i in (0, 1)]


def _checkpoints(uri: str) -> list[str]:
    fs, path = storage.open_fs(uri)
    fs.invalidate_cache()
    return sorted(fs.glob(path + "/checkpoint_*/state.pt"))


def _registered(uri: str) -> bool:
    """Ray Train has registered a checkpoint: its checkpoint manager's snapshot is written after each."""
    fs, path = storage.open_fs(uri)
    fs.invalidate_cache()
    return fs.exists(path + "/checkpoint_manager_snapshot.json")


@pytest.mark.slow  # two raylets, a vLLM engine, two training attempts: ~4-6 min on 2 loaded cores
def test_annotate_and_train_on_two_nodes_survive_a_lost_node(s3_bucket, tiny_models):
    src, annotated, out = (storage.join(s3_bucket, p) for p in ("input", "annotated", "train"))
    storage.atomic_write_bytes(storage.join(src, "00000.tar"), _input_tar(), commit=False)
    # The controller waits for the replacement node instead of failing the restart after 60 s.
    extra = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
             # A lost node is declared dead after 8 missed 1 s health checks (Ray's default: 5 × 3 s + timeouts).
             "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
             "RAY_health_check_failure_threshold": "8"}
    # 2 CPUs per node, not 1: Ray Data's StreamingRepartition tasks ask for a whole CPU, and with the
    # describer (0.5) on one 1-CPU node and the grounder (0.5) on the other no node had one left: the
    # annotation job waited forever (Ray Data log: "backpressured:tasks(ResourceBudget)").
    with local_ray_cluster(n_nodes=2, cpus_per_node=2, extra_env=extra) as cluster:
        env = {**cluster.env, "PYTHONPATH": REPO}
        t0 = time.monotonic()
        ann = subprocess.run([sys.executable, "-m", "annotators.cli", "--input", src, "--output", annotated,
                              "--profile", "tiny", "--ray-address", cluster.address, "--no-progress", "--json"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert ann.returncode == 0, ann.stdout[-2000:] + ann.stderr[-4000:]
        start = 0 if ann.stdout.startswith("{") else ann.stdout.rindex("\n{\n") + 1  # the --json summary ends stdout
        summary = json.loads(ann.stdout[start:])
        assert summary["shards_written"] == 1 and summary["rows"] == N_IMAGES, summary
        assert summary["counts"].get("ok") == N_IMAGES, summary["counts"]
        shards = storage.list_committed(annotated, suffix=".parquet")
        assert len(shards) == 1 and shards[0].startswith("s3://"), shards
        t_annotate = time.monotonic() - t0

        log_path = os.path.join(cluster.temp_dir, "train.log")
        cmd = [sys.executable, "-m", "trainers.cli", "--data", annotated, "--output", out, "--profile", "tiny",
               "--ray-address", cluster.address, "--run-name", RUN_NAME, "--batch-size", str(BATCH),
               "--epochs", str(EPOCHS), "--set", "cpus_per_worker=2", "--set", "torch_threads=1", "--set", "checkpoint_every=10",
               "--set", "max_failures=3", "--set", "data.decode_threads=1"]
        with open(log_path, "w") as log:
            train = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ckpt_root = storage.join(out, "ray", RUN_NAME)
            seen = [0, 0]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and train.poll() is None:
                seen = [max(a, b) for a, b in zip(seen, _train_workers(cluster))]
                # A registered checkpoint (a node killed while its newest checkpoint is still being
                # reported restarts the run from the previous one, or from scratch if there is none).
                if all(seen) and _registered(ckpt_root):
                    break
                time.sleep(0.25)
            assert train.poll() is None, "training ended before a node could be killed:\n" + open(log_path).read()[-4000:]
            assert _checkpoints(ckpt_root), "no checkpoint on S3 after 300 s:\n" + open(log_path).read()[-4000:]
            assert seen == [1, 1], f"expected one training worker per node, saw {seen}"

            killed = cluster.kill_node(1)
            assert killed > 0
            cluster.start_node(1)  # the replacement machine: same resources, fresh ports
            replaced = 0
            t_kill = time.monotonic()
            while train.poll() is None and time.monotonic() - t_kill < 400:
                cluster.ensure_running(1)  # a node start can time out on a loaded machine: start it again
                replaced = max(replaced, _train_workers(cluster)[1])
                time.sleep(1)
            rc = train.wait(timeout=5)
        finally:
            if train.poll() is None:
                train.kill()
                train.wait()
        text = open(log_path).read()
        assert rc == 0, text[-6000:]
        resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]
        assert resumed and resumed[-1] > 0, "the restarted workers did not resume from a checkpoint:\n" + text[-6000:]
        assert replaced == 1, "the restarted worker group did not use the replacement node"

    result = json.loads([ln for ln in text.splitlines() if ln.startswith('{"output"')][-1])  # trainers.cli's summary
    total = EPOCHS * N_IMAGES // (2 * BATCH)
    assert result["steps"] == total and resumed[-1] < total, (result, resumed)
    assert storage.exists(storage.join(out, "final.pt"))
    from trainers.metrics import read_metrics

    local = os.path.join(cluster.temp_dir, "metrics.jsonl")
    with open(local, "wb") as fh:
        fh.write(storage.read_bytes(storage.join(out, "metrics.jsonl")))
    steps = [r["step"] for r in read_metrics(local)]
    assert steps == list(range(1, total + 1)), steps  # every step once in the record, none lost to the restart
    print(f"[multinode] annotate {t_annotate:.0f} s; resumed at step {resumed[-1]} of {total}")
