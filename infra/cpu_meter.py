"""CPU time used by the local stack while something runs: how long it would take on an idle machine.

On a shared, loaded machine wall time says little; CPU seconds do. Every stack service runs in its
own session (``infra/procs.spawn``: ``start_new_session``), and whatever it starts keeps that session
id unless it calls ``setsid`` itself (Ray workers, vLLM engine processes and flow runs do not, even
when re-parented to init). A background thread samples those processes' own user+system time every
``interval`` seconds and keeps the last value seen per process (pid + start time). Children's
accumulated times are not added (a reaped child would count twice); what a process does in its last
``interval`` seconds, and processes shorter than that, are missed, so the figure is a lower bound.

    with CpuMeter(session_ids) as m:
        ...
    print(m.cpu_seconds)
"""

from __future__ import annotations

import os
import threading

import psutil


class CpuMeter:
    def __init__(self, session_ids, interval: float = 1.0):
        self.sids = {int(s) for s in session_ids if s}
        self.interval = interval
        self._last: dict[tuple[int, float], float] = {}
        self._base: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="grain-cpu-meter")

    def _members(self):
        for p in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            try:
                if os.getsid(p.pid) not in self.sids:
                    continue
            except OSError:
                continue
            t = p.info["cpu_times"]
            if t is not None:
                yield (p.pid, p.info["create_time"]), t.user + t.system

    def sample(self) -> None:
        for key, cpu in self._members():
            self._last[key] = max(cpu, self._last.get(key, 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds used by the sessions' processes since ``__enter__`` (a lower bound, see above)."""
        return sum(v - self._base.get(k, 0.0) for k, v in self._last.items())

    def __enter__(self) -> "CpuMeter":
        self._base = dict(self._members())  # time used before the measured work does not count
        self._last = dict(self._base)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()
