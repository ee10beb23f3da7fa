"""What a benchmark's results file records about its own run: command, commit, date, hardware.

A figure in the docs points at a results file; the file must say how to get the figure again and on
what machine, so figures from different machines are never averaged together.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time


def _git(*args: str) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """``lscpu``'s "Model name" (falls back to ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def provenance(module: str, argv: list | None = None) -> dict:
    """{command, commit, tree_dirty, script_blob, date, hardware} of a run of ``python -m module argv...``
    (``argv`` defaults to ``sys.argv[1:]``). ``GRAIN_COMMIT`` overrides git (a copied tree without ``.git``);
    ``tree_dirty`` is true when tracked files differ from that commit; ``script_blob`` is the git blob id
    of the module's file as it ran (``git hash-object``), so a run from an uncommitted edit can still be
    matched to the commit that holds that exact file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join(["python", "-m", module, *map(str, argv)]),
        "commit": os.environ.get("GRAIN_COMMIT") or _git("rev-parse", "HEAD"),
        "tree_dirty": None if status is None else bool(status),
        "script_blob": _git("hash-object", module.replace(".", "/") + ".py"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "hardware": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine()},
    }


def write_results(path: str, results: dict) -> None:
    """A benchmark's JSON (``--json PATH``), written atomically: a run stopped mid-write leaves the old file."""
    import json

    from grain.common.storage import atomic_open

    with atomic_open(path, commit=False) as f:
        f.write(json.dumps(results, indent=1).encode())
