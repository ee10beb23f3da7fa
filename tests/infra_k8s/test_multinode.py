"""Beyond one machine, on one machine: tasks on two Ray nodes commit shards to object storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from grain import storage
from tests.infra_k8s.conftest import REPO

# Runs as the cluster's driver, in its own interpreter: the test session may hold another Ray session.
DRIVER = r"""
import json, os, sys
import ray
from grain import storage

prefix = sys.argv[1]
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=1)
def write_shard(i):
    # credentials and endpoint come from the node's environment, as on a real cluster
    uri = storage.join(prefix, f"{i:05d}.bin")
    storage.atomic_write_bytes(uri, f"shard {i}".encode())
    return {"uri": uri, "node": ray.get_runtime_context().get_node_id()}

refs = [write_shard.options(resources={f"node_{i}": 1}).remote(i) for i in range(2)]
print(json.dumps({"results": ray.get(refs), "nodes": sum(1 for n in ray.nodes() if n["Alive"])}))
"""


@pytest.mark.slow  # two raylets
def test_two_nodes_commit_to_object_storage(s3_bucket):
    from tests.infra_k8s.multinode import local_ray_cluster

    prefix = s3_bucket + "/multinode"
    with local_ray_cluster(n_nodes=2) as cluster:
        env = {**cluster.env, "RAY_ADDRESS": cluster.address, "PYTHONPATH": REPO}
        out = subprocess.run([sys.executable, "-c", DRIVER, prefix], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2  # head + 1 worker, each its own raylet
    nodes = {r["node"] for r in report["results"]}
    assert len(nodes) == 2, "each shard must have been written on its own node"
    assert storage.list_committed(prefix) == sorted(r["uri"] for r in report["results"])
    assert storage.read_bytes(prefix + "/00001.bin") == b"shard 1"


def test_node_processes_are_found_by_their_exact_marker():
    """The harness kills a node's processes by environment marker: only exact matches, children included."""
    from tests.infra_k8s.multinode import MARKER, pids_with_marker, process_titles

    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, MARKER: "t-0"}, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ, MARKER: "t-01"})
    try:
        deadline = time.monotonic() + 10
        while len(pids_with_marker("t-0")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = pids_with_marker("t-0")
        assert parent.pid in pids and len(pids) == 2  # the parent and its child; "t-01" is another node
        assert other.pid not in pids and pids_with_marker("t-01") == [other.pid]
        assert any("time.sleep(30)" in t for t in process_titles("t-0"))
    finally:
        for pid in pids_with_marker("t-0") + pids_with_marker("t-01"):
            os.kill(pid, 9)
        parent.wait()
        other.wait()
