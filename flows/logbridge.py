"""Bring a stage's own output into the Prefect run log (what the UI's Logs tab and the API show).

The stages know nothing of Prefect: they ``print``, use ``logging`` and draw tqdm bars, and Ray
forwards its workers' prints (e.g. the trainer's per-step loss lines from ``RayTrainWorker``) to the
driver's ``sys.stdout``/``sys.stderr`` from a background thread. Prefect's ``log_prints`` only
catches ``print`` calls made in the task's own thread and context, so without this bridge those
lines end up in the worker's stdout (``worker.log``) but not in the flow run's log.

    with StageLogBridge(get_run_logger()):
        run_training(cfg)

While active it (1) tees ``sys.stdout``/``sys.stderr`` (every thread) to the run logger line by line,
throttling in-place progress bars (``\\r`` updates) to one line per ``progress_interval`` seconds
plus their final state, dropping ANSI colours and a few known noise lines, and (2) forwards the
``logging`` records of the stage packages (INFO and up) to the run logger. The original streams
still get everything, so ``worker.log`` is unchanged.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

STAGE_LOGGERS = ("annotators", "trainers", "evaluation", "grain")
# Lines that repeat what the stage prints in a readable form (Ray Train's per-report dump of the
# whole metrics dict) or that are pure terminal decoration.
NOISE = (re.compile(r"Reporting training result \d+: TrainingReport\("),)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_LINE = 4000  # characters per forwarded line: a runaway line must not flood the API


def clean_line(text: str) -> str | None:
    """ANSI codes and surrounding whitespace removed; None for empty or noise lines."""
    text = _ANSI.sub("", text).strip()
    if not text or any(p.search(text) for p in NOISE):
        return None
    return text[:MAX_LINE]


class _Guard(threading.local):
    active = False


_guard = _Guard()  # per thread: a logger handler that writes to a teed stream must not loop back


class LineTee:
    """File-like: writes go to ``original`` and, as complete lines, to ``emit(line)``."""

    def __init__(self, original, emit, progress_interval: float = 30.0, clock=time.monotonic):
        self.original, self._emit, self.interval, self._clock = original, emit, progress_interval, clock
        self._buf = ""
        self._last_progress_t = float("-inf")
        self._last_progress = None
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        n = self.original.write(s)
        if _guard.active or not isinstance(s, str):
            return n if n is not None else len(s)
        out = []
        with self._lock:
            self._buf += s
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                final = line.rsplit("\r", 1)[-1]  # the last state of an in-place progress line
                if final != self._last_progress:
                    out.append(final)
                self._last_progress = None
            if "\r" in self._buf:
                current = self._buf.rsplit("\r", 1)[-1]
                self._buf = current
                now = self._clock()
                if current.strip() and now - self._last_progress_t >= self.interval:
                    self._last_progress_t, self._last_progress = now, current
                    out.append(current)
        for line in out:
            self._forward(line)
        return n if n is not None else len(s)

    def _forward(self, line: str) -> None:
        text = clean_line(line)
        if text is None:
            return
        _guard.active = True
        try:
            self._emit(text)
        except Exception:  # noqa: BLE001 - logging must never break the stage
            pass
        finally:
            _guard.active = False

    def flush(self) -> None:
        self.original.flush()

    def close_pending(self) -> None:
        """Forward a last unterminated line (e.g. a progress bar that never printed its newline)."""
        with self._lock:
            rest, self._buf = self._buf.rsplit("\r", 1)[-1], ""
            if rest == self._last_progress:
                rest = ""
        if rest:
            self._forward(rest)

    def __getattr__(self, name):  # encoding, fileno, isatty, ...: those of the real stream
        return getattr(self.original, name)


class _ForwardHandler(logging.Handler):
    def __init__(self, logger):
        super().__init__(logging.INFO)
        self.target = logger

    def emit(self, record: logging.LogRecord) -> None:
        if _guard.active:
            return
        _guard.active = True
        try:
            text = clean_line(record.getMessage())
            if text is not None:
                self.target.log(record.levelno, "%s: %s", record.name, text)
        except Exception:  # noqa: BLE001 - see LineTee._forward
            pass
        finally:
            _guard.active = False


_ACTIVE: list["StageLogBridge"] = []  # innermost last


def _emit_to_active(owner: "StageLogBridge", text: str) -> None:
    """Forward through ``owner`` while it is active, else through the innermost active bridge.

    A library that created a ``StreamHandler`` while a bridge was active (Ray's own logger does, at
    its first ``ray.init``) keeps writing to that bridge's tee after it exited: those lines belong to
    whichever stage runs now, or to nobody."""
    target = owner if owner in _ACTIVE else (_ACTIVE[-1] if _ACTIVE else None)
    if target is not None:
        target.emit(text)


class StageLogBridge:
    """Context manager: stage stdout/stderr/logging → ``logger`` (a Prefect run logger or any Logger)."""

    def __init__(self, logger, progress_interval: float = 30.0, loggers: tuple[str, ...] = STAGE_LOGGERS,
                 dedup_s: float = 5.0, clock=time.monotonic):
        self.logger, self.interval, self.names = logger, progress_interval, loggers
        self.dedup_s, self._clock = dedup_s, clock
        self._last: tuple[str, float] = ("", float("-inf"))
        self._lock = threading.Lock()
        self._saved: dict = {}

    def emit(self, text: str) -> None:
        """Log one cleaned line; the same line again within ``dedup_s`` s is dropped (Ray's log
        forwarding sometimes delivers a worker's line twice)."""
        now = self._clock()
        with self._lock:
            if text == self._last[0] and now - self._last[1] < self.dedup_s:
                return
            self._last = (text, now)
        self.logger.info("%s", text)

    def __enter__(self) -> "StageLogBridge":
        self._saved = {"stdout": sys.stdout, "stderr": sys.stderr}
        self.tees = {}
        for name, stream in self._saved.items():
            base = stream.original if isinstance(stream, LineTee) else stream  # never forward twice
            self.tees[name] = LineTee(base, lambda t: _emit_to_active(self, t), self.interval)
        sys.stdout, sys.stderr = self.tees["stdout"], self.tees["stderr"]
        _ACTIVE.append(self)
        self._handler = _ForwardHandler(self.logger)
        self._levels = {}
        for n in self.names:
            lg = logging.getLogger(n)
            self._levels[n] = lg.level
            if lg.getEffectiveLevel() > logging.INFO:
                lg.setLevel(logging.INFO)
            lg.addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for tee in self.tees.values():
            tee.close_pending()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        sys.stdout, sys.stderr = self._saved["stdout"], self._saved["stderr"]
        for n, level in self._levels.items():
            lg = logging.getLogger(n)
            lg.removeHandler(self._handler)
            lg.setLevel(level)
