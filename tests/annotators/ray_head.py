"""A throwaway `ray start --head` for tests: 127.0.0.1 only, free ports, own short temp dir, stopped by PID
(never `ray stop`, which would kill every Ray on the machine).

Loopback only: `ray start` swaps `--node-ip-address 127.0.0.1` for the machine's external address (its
dashboard agent then serves on that address and on all interfaces) unless Ray runs in its single-machine
mode, ``LOOPBACK_ENV``. Drivers of this head need the same variable, or they look for their raylet on the
external address: callers pass ``LOOPBACK_ENV`` to them. Once up, every listening socket of the head's
process tree is checked to be on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import psutil


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's single-machine mode: node IP stays 127.0.0.1
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def exposed_sockets(pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of each listening socket of ``pid``'s tree that is not on loopback."""
    tree = {pid: psutil.Process(pid)}
    tree.update({q.pid: q for q in tree[pid].children(recursive=True)})
    out = []
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in tree and c.laddr.ip not in LOOPBACK:
            with contextlib.suppress(psutil.Error):
                out.append((c.laddr.ip, c.laddr.port, tree[c.pid].name()))
    return sorted(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, env: dict | None = None, timeout: float = 120):
    """Yield the address ``127.0.0.1:PORT`` of a fresh head node; kill its whole process tree after."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={tmp}", f"--num-cpus={num_cpus}", "--block",
           f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}"]
    env = {**os.environ, **LOOPBACK_ENV, **(env or {})}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        probe = f"import ray; ray.init(address='{addr}', log_to_driver=False); ray.shutdown()"
        while True:
            r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=timeout)
            if r.returncode == 0:
                break
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError(f"ray start --head on {addr} did not come up: {r.stderr[-1500:]}")
            time.sleep(2)
        exposed = exposed_sockets(p.pid)
        if exposed:
            raise RuntimeError(f"ray start --head on {addr} listens beyond loopback: {exposed}")
        yield addr
    finally:
        procs = [psutil.Process(p.pid)] if p.poll() is None else []
        with contextlib.suppress(psutil.Error):
            procs = psutil.Process(p.pid).children(recursive=True) + procs
        for q in procs:
            with contextlib.suppress(psutil.Error):
                q.terminate()
        _, alive = psutil.wait_procs(procs, timeout=15)
        for q in alive:
            with contextlib.suppress(psutil.Error):
                q.kill()
