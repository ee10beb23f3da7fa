"""Process helpers for the local stack: start detached services, probe ports, stop process trees.

Each service runs in its own session (``start_new_session``), so its process group holds the
service and whatever it forks (Ray's raylet/GCS/dashboard, the flow runs a worker starts). Stopping
a service terminates its recorded PID, every descendant and every process left in its group, then
kills what survives the grace period. Nothing is ever matched by name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import psutil


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL we built
            return 200 <= r.status < 300
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: str | None = None) -> None:
    """Poll ``predicate`` until true; raise naming ``what`` (and the log) on timeout or early exit."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting; see {log}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {log}")


def spawn(cmd: list[str], env: dict[str, str], log_path: str, cwd: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` detached in its own session, stdout+stderr appended to ``log_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def alive(pid: int | None, create_time: float | None = None) -> bool:
    """True when ``pid`` runs and (if given) was created at ``create_time`` (guards PID reuse)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _members(pid: int, marker: str | None) -> list[psutil.Process]:
    """The process, its descendants, the rest of its process group, and processes naming ``marker``."""
    found: dict[int, psutil.Process] = {}
    if pid > 0:
        try:
            root = psutil.Process(pid)
            found[root.pid] = root
            for c in root.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            pass
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid in found or p.pid == os.getpid():
            continue
        try:
            if pid > 0 and os.getpgid(p.pid) == pid:
                found[p.pid] = p
            elif marker and any(marker in a for a in (p.info["cmdline"] or [])):
                found[p.pid] = p
        except (OSError, psutil.Error):
            continue
    return list(found.values())


def stop_tree(pid: int | None, marker: str | None = None, grace: float = 10.0) -> int:
    """SIGTERM the service ``pid`` and everything that belongs to it, SIGKILL survivors; return count."""
    if not pid and not marker:
        return 0
    procs = _members(pid, marker) if pid else _members(-1, marker)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(procs, timeout=grace)
    for p in survivors:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=5)
    return len(procs)


def remaining(pids: list[int], marker: str | None = None) -> list[psutil.Process]:
    """Processes still alive among ``pids``' groups/trees or naming ``marker`` (for status and tests)."""
    out: dict[int, psutil.Process] = {}
    for pid in pids:
        for p in _members(pid, marker):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out[p.pid] = p
    return list(out.values())
