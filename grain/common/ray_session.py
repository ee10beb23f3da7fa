"""The Ray a stage runs on: an initialised one, a cluster (``run.ray_address``, ``ray_address``), or a
local one started here for this run (the annotation job's ``ensure_ray``, the trainer's ``init_loopback_ray``).
The one module of ``grain`` that imports Ray (inside its functions; contract ``grain-pure`` names it).

A local Ray started here is private to the run: it binds 127.0.0.1 only, keeps its session files in a
short temp dir under ``$GRAIN_CACHE/ray`` (default ``~/.cache/grain/ray``; not ``/tmp/ray``, which every
other Ray on the machine shares), and starts the dashboard only when asked (``run.ray_dashboard``,
``grain annotate --dashboard``; then on 127.0.0.1 too).
"""

from __future__ import annotations

import logging
import os
import tempfile

from grain.common.cache import grain_cache

log = logging.getLogger(__name__)
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Environment the model actors need (offline hub, KV cache size, caches, S3 endpoint).
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "GRAIN_CACHE", "TOKENIZERS_PARALLELISM",
               "GRAIN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
# Ray puts Unix sockets under <temp dir>/session_<date>_<pid>/sockets/...; AF_UNIX paths are limited to
# 107 bytes, so the root must stay short.
MAX_TEMP_DIR_CHARS = 40


def local_temp_dir() -> str:
    """A short, existing temp-dir root for a local Ray: ``$GRAIN_CACHE/ray`` (default ``~/.cache/grain/ray``),
    or a fresh ``/tmp/grain-ray-*`` when that path is too long for Ray's socket names."""
    root = os.path.join(grain_cache(), "ray")
    if len(root) > MAX_TEMP_DIR_CHARS:
        short = tempfile.mkdtemp(prefix="grain-ray-", dir="/tmp")
        log.warning("Ray temp dir %s is too long for Ray's socket paths (> %d chars): using %s",
                    root, MAX_TEMP_DIR_CHARS, short)
        return short
    os.makedirs(root, exist_ok=True)
    return root


def actor_env() -> dict:
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def ensure_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> bool:
    """Use the Ray already initialised in this process, else join ``address`` or start a private local
    Ray (see module docstring). Returns True when this call started/joined it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": actor_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return True
    ctx = init_loopback_ray(num_cpus=num_cpus, _temp_dir=local_temp_dir(), log_to_driver=False,
                            runtime_env=runtime_env, include_dashboard=bool(dashboard))
    if dashboard:
        print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
    return True


def init_loopback_ray(**init_kwargs):
    """``ray.init(address="local", **init_kwargs)`` with every listening socket on 127.0.0.1: GCS, raylet,
    object manager, workers, and the dashboard agent (its HTTP and gRPC servers bind the node's IP, or
    all interfaces when that IP is not loopback) and the dashboard when included. Returns Ray's context.
    The test suite's session cluster starts this way too (tests/conftest.py)."""
    import ray
    from ray._private import ray_constants

    if init_kwargs.get("include_dashboard"):
        init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    # ray.init turns a loopback _node_ip_address into the machine's external address unless Ray runs in
    # its single-machine mode (ray_constants.ENABLE_RAY_CLUSTER false, as on macOS/Windows; env var
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): switch that on for this start so every component gets 127.0.0.1.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(address="local", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
