"""Shared Prefect wiring: where artifact files go, the Ray dashboard link, progress.

Artifacts hold markdown, not image bytes: PNGs are written under ``$GRAIN_ARTIFACT_DIR/<flow run id>/``
(the local stack serves that folder on 127.0.0.1, ``$GRAIN_ARTIFACT_URL``) and referenced by URL.
Without a stack (tests, plain ``python -m flows...``) they go to ``<stage output>/_artifacts`` (a
local temp folder when the output is an object-store URI) and the markdown links the file path instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def ray_address() -> str | None:
    """The Ray cluster the flows should join: the local stack's (``RAY_ADDRESS``) or None (stage default)."""
    return os.environ.get("RAY_ADDRESS") or None


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "local")
    except Exception:  # noqa: BLE001 - outside a run there is no id
        return "local"


def run_info() -> dict:
    """``{"flow_run_id", "url"}`` of the current flow run (url None without a UI, e.g. an ephemeral API)."""
    rid = _run_id()
    url = None
    try:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
        url = f"{ui.rstrip('/')}/runs/flow-run/{rid}" if ui and rid != "local" else None
    except Exception:  # noqa: BLE001 - a link is a nicety
        pass
    return {"flow_run_id": rid, "url": url}


def artifact_folder(fallback_root: str, kind: str) -> tuple[str, Callable[[str], str]]:
    """(folder to write PNGs of this run into, function file name → link for markdown)."""
    base = os.environ.get("GRAIN_ARTIFACT_DIR")
    rel = os.path.join(_run_id(), kind)
    if base:
        folder = os.path.join(base, rel)
        url = os.environ.get("GRAIN_ARTIFACT_URL", "").rstrip("/")
        os.makedirs(folder, exist_ok=True)
        return folder, (lambda name: f"{url}/{rel}/{name}" if url else os.path.join(folder, name))
    if "://" in fallback_root:  # an object-store output: keep the pictures on this machine
        import tempfile

        fallback_root = os.path.join(tempfile.gettempdir(), "grain-artifacts")
    folder = os.path.join(fallback_root, "_artifacts", rel)
    os.makedirs(folder, exist_ok=True)
    return folder, (lambda name: os.path.join(folder, name))


def link_ray_dashboard() -> str | None:
    """A link artifact to the Ray dashboard of the local stack, when one is configured."""
    url = os.environ.get("GRAIN_RAY_DASHBOARD_URL")
    if not url:
        return None
    from prefect.artifacts import create_link_artifact

    create_link_artifact(link=url, link_text="Ray dashboard (jobs, actors, worker logs)", key="ray-dashboard",
                         description="The Ray cluster this flow run used. It asks for the Ray token: the file named "
                                     "by RAY_AUTH_TOKEN_PATH on the machine that runs the stack (`grain stack status`).")
    return url


class ProgressWatcher:
    """Updates a Prefect progress artifact from ``measure()`` (a 0–100 float) every ``interval`` s.

    Used around a long stage call: the stage itself knows nothing about Prefect, the watcher polls
    what the stage leaves on disk (finished shards in its manifest, metrics lines).
    """

    def __init__(self, measure: Callable[[], float], description: str, interval: float = 5.0):
        from prefect.artifacts import create_progress_artifact

        self.measure, self.interval = measure, interval
        self.artifact_id = create_progress_artifact(progress=0.0, description=description)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="grain-progress")

    def _update(self) -> None:
        from prefect.artifacts import update_progress_artifact

        try:
            value = max(0.0, min(100.0, float(self.measure())))
            update_progress_artifact(artifact_id=self.artifact_id, progress=value)
        except Exception:  # noqa: BLE001 - progress is best effort; the stage result decides success
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def __enter__(self) -> "ProgressWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._update()
