"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet
started with ``ray start`` (the way VMs join a cluster, infra/README.md §1), on 127.0.0.1 only.

Nodes share this machine's disk, so a test that must not rely on a shared file system writes through
object storage (``s3_server``) instead. Every node gets its own ports (packed after a free base port,
so parallel sessions never collide) and a custom resource ``node_<i>`` for pinning work to it.
Stopping kills exactly the process groups this harness started; it never calls ``ray stop`` (which
would kill every Ray process on the machine).

    with local_ray_cluster(n_nodes=2) as address:   # "127.0.0.1:<port>"
        subprocess.run([sys.executable, "driver.py"], env={**os.environ, "RAY_ADDRESS": address})
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from tests.storage.s3_server import free_port

HOST = "127.0.0.1"
PORTS_PER_NODE = 8


def _ray_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return exe if os.path.exists(exe) else "ray"


def _node_ports(base: int) -> list[str]:
    """Every port a node opens, explicit: Ray's defaults (e.g. 10001, 52365) collide across sessions."""
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [arg for i, n in enumerate(names) for arg in (n, str(base + i))]


def _free_base(span: int) -> int:
    """A base port whose next ``span`` ports are free now (best effort; retried by the caller)."""
    import socket

    for _ in range(50):
        base = free_port()
        if base + span >= 65535:
            continue
        try:
            socks = []
            for p in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind((HOST, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for the Ray test cluster")


def _wait_for_nodes(address: str, n: int, timeout_s: float) -> None:
    code = ("import ray, json; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps(sum(1 for x in ray.nodes() if x['Alive'])))" % address)
    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
        if out.returncode == 0:
            alive = json.loads(out.stdout.strip().splitlines()[-1])
            if alive >= n:
                return
        time.sleep(1)
    raise RuntimeError(f"Ray test cluster at {address}: {alive}/{n} nodes alive after {timeout_s}s")


@contextmanager
def local_ray_cluster(n_nodes: int = 2, cpus_per_node: int = 1, timeout_s: float = 180):
    """Start ``n_nodes`` Ray nodes (node 0 is the head; each has ``cpus_per_node`` CPUs and the custom
    resource ``node_<i>``); yield the GCS address; stop everything started here."""
    if n_nodes < 1:
        raise ValueError(f"local_ray_cluster: n_nodes must be >= 1, got {n_nodes}")
    base = _free_base(PORTS_PER_NODE * n_nodes + 2)
    gcs_port, client_port = base, base + 1
    address = f"{HOST}:{gcs_port}"
    temp_dir = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Ray socket paths are length-limited
    # On a loaded 2-core machine the per-node agents start slowly; Ray's default (30 s) then
    # kills the raylet ("Timed out waiting for file .../dashboard_agent_listen_port").
    env = {**os.environ, "RAY_agent_register_timeout_ms": "180000", "RAY_USAGE_STATS_ENABLED": "0"}
    procs: list[subprocess.Popen] = []

    def start(i: int, args: list[str]) -> None:
        common = ["--node-ip-address", HOST, "--num-cpus", str(cpus_per_node),
                  "--resources", json.dumps({f"node_{i}": 1}), *_node_ports(base + 2 + PORTS_PER_NODE * i)]
        procs.append(subprocess.Popen([_ray_exe(), "start", "--block", *args, *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))  # own group: we stop exactly these

    try:
        start(0, ["--head", "--port", str(gcs_port), "--include-dashboard", "false",
                  "--ray-client-server-port", str(client_port), "--temp-dir", temp_dir])
        for i in range(1, n_nodes):
            start(i, ["--address", address])
        _wait_for_nodes(address, n_nodes, timeout_s)
        yield address
    finally:
        for p in reversed(procs):  # workers first, then the head
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
