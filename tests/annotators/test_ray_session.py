"""The private local Ray that `grain annotate` starts (grain/common/ray_session.py): 127.0.0.1 only, its
own temp dir under $GRAIN_CACHE, no dashboard unless asked. Slow: starts a real Ray in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.slow

_PROBE = """
import json, psutil, ray
from grain.common.ray_session import ensure_ray
assert ensure_ray(num_cpus=1, dashboard=False) is True
node = ray._private.worker._global_node
ours = {p.pid for p in psutil.Process().children(recursive=True)}
listen = sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours})
info = {"ip": ray.nodes()[0]["NodeManagerAddress"], "temp": node.get_temp_dir_path(), "listen": listen,
        "webui": node.address_info.get("webui_url"), "started_again": ensure_ray()}
ray.shutdown()
print(json.dumps(info))
"""


def test_local_ray_is_private():
    cache = tempfile.mkdtemp(prefix="gc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "GRAIN_CACHE": cache, "RAY_ADDRESS": "", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["ip"] == "127.0.0.1"
    assert info["listen"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in info["listen"]), info["listen"]
    assert info["temp"] == os.path.join(cache, "ray")
    assert not info["webui"]  # no dashboard unless asked
    assert info["started_again"] is False  # an initialised Ray is reused, not restarted


_TRAINER_PROBE = """
import json, time, psutil, ray
from trainers.config import TrainConfig
from trainers.run import _ray_init
_ray_init(TrainConfig())
node = ray._private.worker._global_node
deadline = time.time() + 60  # the dashboard agent may still be starting on a loaded machine
while True:
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    agents = {pid for pid, p in procs.items() if any("dashboard/agent.py" in a or "DashboardAgent" in a for a in p.cmdline())}
    listen = [(c.laddr.ip, c.pid) for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in procs]
    if {pid for _, pid in listen} & agents or time.time() > deadline:
        break
    time.sleep(0.5)
info = {"ip": ray.nodes()[0]["NodeManagerAddress"], "temp": node.get_temp_dir_path(),
        "listen": sorted({ip for ip, _ in listen}), "agent_listening": bool({pid for _, pid in listen} & agents)}
ray.shutdown()
print(json.dumps(info))
"""


def test_trainer_local_ray_is_private():
    """`grain train` without a cluster address starts its local Ray the same way: loopback only (the
    dashboard agent's sockets included), its own temp dir under $GRAIN_CACHE."""
    cache = tempfile.mkdtemp(prefix="gc-", dir="/tmp")
    env = {**os.environ, "GRAIN_CACHE": cache, "RAY_ADDRESS": "", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", _TRAINER_PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["agent_listening"], info  # else nothing was checked
    assert info["ip"] == "127.0.0.1"
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in info["listen"]), info["listen"]
    assert info["temp"] == os.path.join(cache, "ray")


def test_session_cluster_listens_on_loopback_only(ray_local):
    """The suite's shared cluster (tests/conftest.py ``ray_local``) keeps every listening socket on
    loopback, its dashboard agent's included: that agent binds the node's IP for HTTP and all
    interfaces for gRPC whenever the node's IP is not loopback, which is what a plain
    ``ray.init(address="local")`` gives it."""
    import time

    import psutil

    me = psutil.Process()
    deadline = time.time() + 60  # the agent may still be starting on a loaded machine
    while True:
        procs = {p.pid: p for p in me.children(recursive=True)}
        agents = set()
        for pid, p in procs.items():
            try:
                if any("DashboardAgent" in a or a.endswith("dashboard/agent.py") for a in p.cmdline()):
                    agents.add(pid)
            except psutil.Error:
                continue
        listen = {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
                  if c.status == psutil.CONN_LISTEN and c.pid in procs}
        if {pid for *_, pid in listen} & agents or time.time() > deadline:
            break
        time.sleep(0.5)
    assert {pid for *_, pid in listen} & agents, f"no dashboard agent listening among {len(procs)} processes: nothing checked"
    exposed = sorted((ip, port) for ip, port, _ in listen if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"))
    assert not exposed, f"the session cluster listens beyond loopback: {exposed}"
