"""Beyond one machine, on one machine: tasks on two Ray nodes commit shards to object storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
