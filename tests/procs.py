"""Process helpers shared by the crash tests."""

from __future__ import annotations

import random
import signal
import socket

import psutil


def kill_all(procs, timeout: float = 30) -> None:
    """SIGKILL every process in ``procs`` (those already gone are skipped) and wait until they are reaped."""
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def free_port_base(span: int) -> int:
    """A port base with ``span`` free loopback ports after it (a stack's Ray uses GCS port … +309)."""
    for _ in range(50):
        base = random.randrange(20000, 30000 - span)
        if all(_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
