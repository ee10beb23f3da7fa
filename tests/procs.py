"""Process helpers shared by the crash tests."""

from __future__ import annotations

import signal

import psutil


def kill_all(procs, timeout: float = 30) -> None:
    """SIGKILL every process in ``procs`` (those already gone are skipped) and wait until they are reaped."""
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout)
