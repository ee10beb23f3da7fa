"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet
started with ``ray start`` (the way VMs join a cluster, infra/README.md §1).

Nodes share this machine's disk, so a test that must not rely on a shared file system writes through
object storage (``s3_server``) instead. Every node gets its own ports (packed after a free base port,
so parallel sessions never collide) and a custom resource ``node_<i>`` for pinning work to it.

Authentication: Ray 2.60 turns token auth on for ``ray start --head``; a node or driver without the
token is refused (``InvalidAuthToken``). Every process of this cluster gets ``RAY_AUTH_MODE=token`` and a
fresh random ``RAY_AUTH_TOKEN`` through ``cluster.env`` (never ``~/.ray/auth_token``, which other
clusters on the machine share), so only drivers started with ``cluster.env`` can join.

Addresses: ``--node-ip-address 127.0.0.1`` is passed, but Ray 2.60 still records the machine's
external address as the node IP (seen in the raylet/GCS command lines); drivers join through
``127.0.0.1:<gcs port>``, which works. The GCS port is random per cluster.

Processes: each node is one ``ray start --block`` in its own process group; its raylet's workers
start their own groups (Ray calls setsid), so killing a group is not enough. Every process of a node
inherits the environment marker ``GRAIN_TEST_RAY_NODE=<cluster id>-<i>``; ``kill_node(i)`` and
``stop()`` kill exactly the processes carrying that marker (found through /proc/<pid>/environ). It
never calls ``ray stop`` (which would kill every Ray process on the machine).

    with local_ray_cluster(n_nodes=2) as cluster:     # cluster.address == "127.0.0.1:<port>"
        subprocess.run([sys.executable, "driver.py"], env=cluster.env)
        cluster.kill_node(1); cluster.start_node(1)     # lose a machine, then replace it
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from tests.storage.s3_server import free_port

HOST = "127.0.0.1"
PORTS_PER_NODE = 6
MARKER = "GRAIN_TEST_RAY_NODE"


def _ray_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return exe if os.path.exists(exe) else "ray"


def _node_ports(base: int) -> list[str]:
    """Every port a node opens, explicit: Ray's defaults (e.g. 10001, 52365) collide across sessions."""
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [arg for i, n in enumerate(names) for arg in (n, str(base + i))]


def _free_base(span: int) -> int:
    """A base port whose next ``span`` ports are free now (best effort; a race only fails the start)."""
    for _ in range(50):
        base = free_port()
        if base + span >= 65535:
            continue
        socks = []
        try:
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


def pids_with_marker(value: str) -> list[int]:
    """PIDs of this user's processes whose environment holds ``GRAIN_TEST_RAY_NODE=<value>`` exactly."""
    needle = f"{MARKER}={value}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    pids.append(int(name))
        except OSError:  # gone, or another user's process
            continue
    return pids


def process_titles(value: str) -> list[str]:
    """Command lines (Ray workers rename themselves, e.g. ``ray::RayTrainWorker...``) of a node's processes."""
    out = []
    for pid in pids_with_marker(value):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                out.append(fh.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            continue
    return out


class LocalRayCluster:
    """Nodes ``0..n-1`` (0 is the head), ``cpus_per_node`` CPUs and resource ``node_<i>`` each."""

    def __init__(self, cpus_per_node: int = 1, start_timeout_s: float = 180, extra_env: dict | None = None):
        self.cpus_per_node = cpus_per_node
        self.start_timeout_s = start_timeout_s
        self.id = secrets.token_hex(6)
        self.temp_dir = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Ray socket paths are length-limited
        self.gcs_port = self.client_port = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.starts: dict[int, int] = {}  # ray start attempts per node (ensure_running)
        self.logs: dict[int, str] = {}
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # On a loaded 2-core machine the per-node agents start slowly; Ray's default (30 s) then
            # kills the raylet ("Timed out waiting for file .../dashboard_agent_listen_port").
            "RAY_agent_register_timeout_ms": "180000",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.env.update(extra_env or {})  # e.g. Ray config (RAY_health_check_*) every node and worker sees

    @property
    def address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    def marker(self, i: int) -> str:
        return f"{self.id}-{i}"

    def start_node(self, i: int) -> None:
        """Start node ``i`` (``ray start --block``); returns at once (see ``wait_for_nodes``)."""
        if i in self.procs and self.procs[i].poll() is None:
            raise RuntimeError(f"node {i} of the test cluster is already running")
        base = _free_base(PORTS_PER_NODE + 2)
        common = ["--node-ip-address", HOST, "--num-cpus", str(self.cpus_per_node),
                  "--resources", json.dumps({f"node_{i}": 1}), *_node_ports(base + 2)]
        if i == 0:
            self.gcs_port, self.client_port = base, base + 1
            args = ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                    "--ray-client-server-port", str(self.client_port), "--temp-dir", self.temp_dir]
        else:
            if self.gcs_port is None:
                raise RuntimeError("start node 0 (the head) first")
            args = ["--address", self.address]
        log = os.path.join(self.temp_dir, f"ray-start-node{i}-{time.time_ns()}.log")
        self.logs[i] = log
        with open(log, "wb") as fh:
            self.procs[i] = subprocess.Popen([_ray_exe(), "start", "--block", *args, *common],
                                             env={**self.env, MARKER: self.marker(i)}, stdout=fh, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    def alive_nodes(self) -> int:
        code = ("import ray, json; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps(sum(1 for x in ray.nodes() if x['Alive'])))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120)
        if out.returncode != 0:
            return 0
        return json.loads(out.stdout.strip().splitlines()[-1])

    def ensure_running(self, i: int, max_starts: int = 3) -> bool:
        """Restart node ``i`` if its ``ray start`` exited; True if it did. ``ray start`` gives a node a
        fixed 30 s to register with the GCS (ray/_private/node.py ``raylet_start_wait_time_s``), which a
        loaded 2-core machine sometimes misses: retry up to ``max_starts`` starts in all."""
        p = self.procs[i]
        if p.poll() is None:
            return False
        self.starts[i] = self.starts.get(i, 1)
        if self.starts[i] >= max_starts:
            raise RuntimeError(f"node {i} of the Ray test cluster exited ({p.returncode}) "
                               f"{self.starts[i]} times: {self.tail(i)}")
        self.kill_node(i)  # leftovers of the failed start
        self.start_node(i)
        self.starts[i] += 1
        return True

    def wait_for_nodes(self, n: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        alive = 0
        while time.monotonic() < deadline:
            for i in list(self.procs):
                if self.ensure_running(i) and i == 0 and len(self.procs) > 1:
                    # the others were pointed at the old GCS port (never here: the head is waited for alone)
                    raise RuntimeError("the head of the Ray test cluster restarted after other nodes joined it")
            alive = self.alive_nodes()
            if alive >= n:
                return
            time.sleep(2)
        raise RuntimeError(f"Ray test cluster at {self.address}: {alive}/{n} nodes alive after "
                           f"{self.start_timeout_s}s; head log: {self.tail(0)}")

    def tail(self, i: int, chars: int = 2000) -> str:
        try:
            with open(self.logs[i], "rb") as fh:
                return fh.read().decode(errors="replace")[-chars:]
        except (KeyError, OSError):
            return "<no log>"

    def kill_node(self, i: int) -> int:
        """SIGKILL every process of node ``i`` (raylet, agents, its workers): a lost machine.
        Returns how many processes were killed."""
        pids = pids_with_marker(self.marker(i))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p = self.procs.get(i)
        if p is not None:
            p.wait(timeout=30)
        return len(pids)

    def stop(self) -> None:
        """Stop every node at once: SIGKILL every process of each node (found by its marker), workers
        first. A graceful ``SIGTERM`` waited up to 20 s a node for nothing a throwaway test cluster needs."""
        for i in sorted(self.procs, reverse=True):
            for _ in range(3):  # a process may fork between the scan and the kill
                if not self.kill_node(i):
                    break
                time.sleep(0.2)


@contextmanager
def local_ray_cluster(n_nodes: int = 2, cpus_per_node: int = 1, timeout_s: float = 180, extra_env: dict | None = None):
    """Start ``n_nodes`` Ray nodes (see ``LocalRayCluster``); yield the cluster; stop everything started here."""
    if n_nodes < 1:
        raise ValueError(f"local_ray_cluster: n_nodes must be >= 1, got {n_nodes}")
    cluster = LocalRayCluster(cpus_per_node=cpus_per_node, start_timeout_s=timeout_s, extra_env=extra_env)
    try:
        cluster.start_node(0)
        cluster.wait_for_nodes(1)  # the others join through the head's GCS
        for i in range(1, n_nodes):
            cluster.start_node(i)
        cluster.wait_for_nodes(n_nodes)
        yield cluster
    finally:
        cluster.stop()
